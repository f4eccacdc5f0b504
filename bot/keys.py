"""Keys as users type them in options (/jam start, /history): parsed to their names, and autocompleted."""

from __future__ import annotations

from discord import app_commands

from generation.music.keys import ALL_KEYS, UnknownKey, parse_key

from .errors import UserFacingError


def parsed_key(text: str) -> str:
    """A key as users type it ("Am", "F# major") by its name ("A minor"); a friendly error for anything else."""
    try:
        return parse_key(text).name
    except UnknownKey as error:
        raise UserFacingError(str(error)) from None


def key_choices(current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete for a key option: the 24 keys whose name contains what was typed."""
    return [app_commands.Choice(name=key.name, value=key.name) for key in ALL_KEYS if current.strip().lower() in key.name.lower()][:25]
