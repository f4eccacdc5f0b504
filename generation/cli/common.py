"""What every `loopjam` command shares: the options given before the command, settings, errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..config import Settings, SettingsError, load_settings
from ..shape import LoopShape
from ..storage.database import InvalidDatabaseUrl, database_url

if TYPE_CHECKING:
    from ..music import Key
    from ..prompts import InvalidRequest
    from ..storage import Database


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


def source_failure(path: Path, error: InvalidRequest) -> typer.Exit:
    """`fail` for an audio file the loop engine refuses: soundfile's own words when it cannot read it."""
    from ..prompts import UnreadableSource  # numpy and soundfile: only commands that read audio load them

    if isinstance(error, UnreadableSource):
        cause = error.__cause__ or error
        return fail(f"Cannot read {path}: {(str(cause).splitlines() or [type(cause).__name__])[0]}")
    return fail(str(error))


FORMAT_HELP = "wav, wav24, flac or ogg; mp3 only if you must."


def checked_shape(bpm: float, bars: int, beats_per_bar: int) -> LoopShape:
    """The loop's shape, or exit 2 with the one line saying what is wrong with it."""
    shape = LoopShape(bpm, bars, beats_per_bar)
    if (problem := shape.problem()) is not None:
        raise fail(problem)
    return shape


def warn_if_explicit(fmt: str) -> None:
    """Say on stderr what an explicitly chosen lossy format (mp3) costs a loop."""
    from ..audio_io import EXPLICIT_FORMATS, MP3_WARNING

    if fmt in EXPLICIT_FORMATS:
        typer.echo(f"Warning: {MP3_WARNING}", err=True)


def check_format(fmt: str) -> None:
    """Exit 2 unless `fmt` is an audio format this machine writes (`audio_io.FORMATS`, or mp3 where libsndfile can)."""
    from ..audio_io import EXPLICIT_FORMATS, FORMATS, format_available

    if fmt not in FORMATS and fmt not in EXPLICIT_FORMATS:
        raise fail(f"Unknown format {fmt!r}: use one of {', '.join([*FORMATS, *EXPLICIT_FORMATS])}.")
    if not format_available(fmt):
        raise fail(f"This libsndfile cannot write {fmt}; use one of {', '.join(FORMATS)}.")


@contextmanager
def open_database() -> Iterator[Database]:
    """The configured database; its errors become one clear line (exit code 2)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from ..jobs.outage import first_line
    from ..storage import Database, redact

    database = Database.from_settings(settings(database=True).storage)
    try:
        yield database
    except SQLAlchemyError as error:
        raise fail(f"Database {database.display_url}: {redact(first_line(error), database.url)}") from None
    except CommandError as error:
        raise fail(str(error)) from None
    finally:
        database.dispose()


KEY_HELP = 'Move the loop into this key: "A minor", "F# major", "Bb minor", "Am", "C" (drums are never moved).'


def target_key(text: str | None) -> Key | None:
    """The key a `--key` option names, or exit 2 with one line listing the forms."""
    if text is None:
        return None
    from ..music import UnknownKey, parse_key

    try:
        return parse_key(text)
    except UnknownKey as error:
        raise fail(str(error)) from None
