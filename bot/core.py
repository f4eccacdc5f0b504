"""What every cog relies on: the bot with its settings, queue service, database and job tracker.

`LoopJamBot` (bot/client.py) adds the cogs on top; cogs type their bot as `BotCore`, so no cog
imports the module that imports it.
"""

from __future__ import annotations

import asyncio
import typing as tp

import discord
from discord import app_commands
from discord.ext import commands

from generation.config import Settings, model_label
from generation.storage import Database, redact

from .background import one_line
from .errors import LoopJamTree, UserFacingError
from .text import NO_PINGS
from .tracker import JobTracker

if tp.TYPE_CHECKING:
    from generation.jobs.service import QueueService


def intents() -> discord.Intents:
    """Guilds only: slash commands need no privileged intent (no members, no message content)."""
    chosen = discord.Intents.none()
    chosen.guilds = True
    return chosen


class BotCore(commands.Bot):
    def __init__(self, settings: Settings, service: QueueService, database: Database, *, sync_guild: int | None = None) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            tree_cls=LoopJamTree,
            allowed_mentions=NO_PINGS,
            help_command=None,
        )
        self.settings = settings
        self.service = service
        self.database = database
        self.sync_guild = sync_guild or settings.discord.sync_guild
        self.tracker = JobTracker()

    def allowed_model(self, name: str) -> str:
        """The model of `[model] allowed` that users call `name` (as configured, or by its label); refuses others."""
        allowed = self.settings.model.allowed
        chosen = name if name in allowed else next((m for m in allowed if model_label(m) == name), None)
        if chosen is None:
            raise UserFacingError(f"Unknown model. Choose one of: {', '.join(model_label(m) for m in allowed)}.")
        return chosen

    def model_choices(self, current: str) -> list[app_commands.Choice[str]]:
        """Autocomplete for a model option: the labels of the configured models containing what was typed
        (`allowed_model` takes a label back)."""
        labels = dict.fromkeys(model_label(m) for m in self.settings.model.allowed)
        return [app_commands.Choice(name=label[:100], value=label) for label in labels if current.lower() in label.lower()][:25]

    async def in_db(self, work: tp.Callable[..., tp.Any], *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """Run `work(session, *args, **kwargs)` in one database unit of work, off the event loop."""
        return await asyncio.to_thread(_unit_of_work, self.database.session, work, args, kwargs)

    async def read_db(self, work: tp.Callable[..., tp.Any], *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """`in_db` for work that only reads: it never waits for the queue's writes."""
        return await asyncio.to_thread(_unit_of_work, self.database.reading, work, args, kwargs)

    def describe_error(self, error: BaseException) -> str:
        """A background task's error as one log line, the database's password hidden."""
        return redact(one_line(error), self.database.url)

    async def channel_for(self, channel_id: int) -> discord.abc.Messageable:
        channel = self.get_channel(channel_id) or await self.fetch_channel(channel_id)
        return tp.cast(discord.abc.Messageable, channel)  # loops are asked for in text channels and threads


def _unit_of_work(session: tp.Callable[[], tp.ContextManager[tp.Any]], work: tp.Callable[..., tp.Any],
                  args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]) -> tp.Any:
    with session() as opened:
        return work(opened, *args, **kwargs)
