"""Starting the bot: settings, database, queue service, and discord.py pointed at the right API."""

from __future__ import annotations

import asyncio
import json
import logging
import typing as tp

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from generation.config import Settings
from generation.jobs.api import QueueUnavailable

log = logging.getLogger(__name__)

NO_TOKEN = "No Discord token: set DISCORD_TOKEN in the environment (or [discord] token in config.toml)."
BAD_TOKEN = "Discord refused the bot token: copy it again from the Developer Portal (Bot > Reset Token) into DISCORD_TOKEN."


def point_discord_py_at(settings: Settings) -> None:
    """discord.py has no setting for another API host: its class attributes are the only way."""
    Route.BASE = settings.discord.api_base_url.rstrip("/")
    if settings.discord.gateway_url:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord.gateway_url)


def build_bot(settings: Settings, *, sync_guild: int | None = None) -> tp.Any:
    """The bot with its database (upgraded to the newest schema) and its queue service."""
    from generation.jobs import QueueService
    from generation.storage import Database

    from .client import LoopJamBot

    database = Database.from_settings(settings.storage)
    database.upgrade()
    return LoopJamBot(settings, QueueService(settings, database), database, sync_guild=sync_guild)


def run(settings: Settings, *, sync_guild: int | None = None) -> None:
    """Run the bot until SIGTERM / SIGINT stops it gracefully (`bot.shutdown`); returns, so the exit code is 0."""
    from .shutdown import serve

    token = settings.token
    if token is None:
        raise SystemExit(NO_TOKEN)
    point_discord_py_at(settings)
    bot = build_bot(settings, sync_guild=sync_guild)
    # Logging is configured by the CLI (discord.py's `start`, unlike `run`, adds no handler); it never logs the token.
    try:
        asyncio.run(serve(bot, token.get_secret_value(), bot.database))
    except discord.LoginFailure:
        raise SystemExit(f"Error: {BAD_TOKEN}") from None
    except aiohttp.ClientConnectionError as error:
        raise SystemExit(f"Error: Cannot reach Discord: {error}") from None
    except QueueUnavailable as error:  # e.g. Redis down at start (distributed mode)
        raise SystemExit(f"Error: {error}") from None


def command_schema_json(settings: Settings) -> str:
    """The application commands exactly as they would be synced, as JSON."""
    from .client import LoopJamBot

    async def collect() -> list[dict[str, tp.Any]]:
        bot = LoopJamBot(settings, service=None, database=None)  # type: ignore[arg-type]
        await bot.load_cogs()
        return bot.command_schema()

    return json.dumps(asyncio.run(collect()), indent=2, sort_keys=True)
