"""What every `loopjam` command shares: the options given before the command, settings, errors."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import Settings, SettingsError, load_settings
from ..storage.database import InvalidDatabaseUrl, database_url


class CliState:
    """The options given before the command (`loopjam --config FILE history`), set by the app's callback."""

    config_file: Path | None = None


def fail(message: str) -> typer.Exit:
    """Print one clear line on stderr; the caller raises the returned exit (code 2)."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(2)


def settings(*, database: bool = False) -> Settings:
    """The settings, or exit 2 with one line naming the invalid one.

    `database`: the command opens the history database, so its URL must be usable too.
    """
    try:
        conf = load_settings(CliState.config_file)
    except SettingsError as error:
        raise fail(str(error)) from None
    if database:
        try:
            database_url(conf.storage)
        except InvalidDatabaseUrl as error:
            raise fail(f"Invalid setting storage.database_url: {error}") from None
    return conf
