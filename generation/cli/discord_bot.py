"""`loopjam run` and `loopjam commands`: the only commands that load the bot (and discord.py)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from .common import fail, open_database, settings


def run(
    sync_guild: Annotated[int | None, typer.Option(help="Sync commands to this guild only (instant; for development).")] = None,
) -> None:
    """Start the Discord bot (and, in embedded mode, its GPU worker)."""
    conf = settings(database=True)
    if conf.token is None:
        from bot.runner import NO_TOKEN

        raise fail(NO_TOKEN)
    from bot.runner import run as run_bot

    with open_database() as database:  # an unreachable or newer database: one line, before anything starts
        database.upgrade()
    logging.getLogger().setLevel(logging.INFO)
    run_bot(conf, sync_guild=sync_guild)


def commands() -> None:
    """Print the slash commands as JSON, exactly as they would be synced to Discord."""
    from bot.runner import command_schema_json

    typer.echo(command_schema_json(settings()))
