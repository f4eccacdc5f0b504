"""`loopjam db ...` and `loopjam history`.

Embedded (SQLite), a command that reads the history brings the schema up to date itself, as
`loopjam run` does, so a fresh data directory just works. PostgreSQL is shared and its operators
migrate it: there the command says to run `loopjam db upgrade` instead.

The database URL may hold a password: only `Database.display_url` is ever printed, and driver
errors are passed through `redact` before they are.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from ..prompts import printable
from ..storage import Database, Generation, list_history
from ..storage.migrate import head_revision
from ..storage.repository import DEFAULT_HISTORY_LIMIT
from .common import fail, open_database

db_app = typer.Typer(help="Create, migrate or inspect the history database.", no_args_is_help=True)

PROMPT_COLUMN_CHARS = 60
NO_LOOPS_YET = "No loops yet: the loops made with /loop and /loopify in Discord are listed here."


def _describe_revision(revision: str | None) -> str:
    if revision is None:
        return "none (empty database: run `loopjam db upgrade`)"
    return f"{revision} (head)" if revision == head_revision() else f"{revision} (head is {head_revision()})"


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Revision to upgrade to.")] = "head",
) -> None:
    """Create the tables or bring them up to date."""
    with open_database() as database:
        database.upgrade(revision)
        typer.echo(f"database: {database.display_url}")
        typer.echo(f"revision: {_describe_revision(database.current_revision())}")


@db_app.command("current")
def db_current() -> None:
    """Show which database is configured and its schema revision."""
    with open_database() as database:
        typer.echo(f"database: {database.display_url}")
        typer.echo(f"revision: {_describe_revision(database.current_revision())}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Revision to go back to; `base` drops every table.")],
) -> None:
    """Undo migrations down to REVISION (data in dropped tables is lost)."""
    with open_database() as database:
        database.downgrade(revision)
        typer.echo(f"database: {database.display_url}")
        typer.echo(f"revision: {_describe_revision(database.current_revision())}")


def history(
    user: Annotated[int | None, typer.Option("--user", help="Only this Discord user id.")] = None,
    guild: Annotated[int | None, typer.Option("--guild", help="Only this guild id.")] = None,
    search: Annotated[str | None, typer.Option("--search", help="Text in the prompt (any case).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first.")] = DEFAULT_HISTORY_LIMIT,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many first.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array as the last line.")] = False,
) -> None:
    """List past generations, newest first."""
    with open_database() as database:
        _bring_up_to_date(database)
        with database.reading() as session:
            generations = list_history(session, user_id=user, guild_id=guild, search=search, limit=limit, offset=offset)
    if as_json:
        typer.echo(json.dumps([_record(generation) for generation in generations], default=_json_value))
    elif generations:
        _print_table(generations)
    elif any(value is not None for value in (user, guild, search)) or offset:
        typer.echo("No loops match these filters.")
    else:
        typer.echo(NO_LOOPS_YET)


def _bring_up_to_date(database: Database) -> None:
    """Upgrade an embedded SQLite history; exit 2 asking for `loopjam db upgrade` on any other server."""
    if database.is_up_to_date():
        return
    if database.url.get_backend_name() == "sqlite":
        database.upgrade()
        return
    raise fail("The database schema is not up to date: run `loopjam db upgrade` first.")


def _record(generation: Generation) -> dict[str, Any]:
    """Every column of the row, by name."""
    return {column.key: getattr(generation, column.key) for column in Generation.__table__.columns}


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _print_table(generations: list[Generation]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("id", "created (UTC)", "user", "bpm", "bars", "kind", "status", "verdict", "prompt")
    for generation in generations:
        prompt = printable(generation.prompt)
        if len(prompt) > PROMPT_COLUMN_CHARS:
            prompt = prompt[: PROMPT_COLUMN_CHARS - 1] + "…"
        prompt = escape(prompt)  # a prompt is shown as typed, never read as Rich markup
        table.add_row(
            generation.short_id,
            f"{generation.created_at:%Y-%m-%d %H:%M}",
            str(generation.user_id),
            f"{generation.bpm:g}",
            str(generation.bars),
            generation.kind.value,
            f"{generation.status.value}, not posted" if generation.delivery_error else generation.status.value,
            generation.verdict or "",
            prompt,
        )
    Console().print(table)
