"""Showing user text safely: no pings, no markdown surprises, no hidden or reordering characters."""

from __future__ import annotations

import discord

from generation.prompts import printable

NO_PINGS = discord.AllowedMentions.none()
"""For every message that echoes user text: `@everyone` in a prompt pings nobody."""


def requester_only(user: discord.abc.Snowflake) -> discord.AllowedMentions:
    """Pings the requester and nobody else (a late result mentions them once)."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[user], replied_user=False)


def shortened(text: str, limit: int) -> str:
    """At most `limit` characters, the last an ellipsis when some were cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str, limit: int = 200) -> str:
    """User text made inert for an embed: control and format characters (right-to-left overrides,
    zero-width ones) removed, markdown and mentions escaped, and shortened."""
    shown = shortened(printable(text), limit)
    # After `printable`: escaping a mention puts a zero-width space in it.
    return discord.utils.escape_mentions(discord.utils.escape_markdown(shown))


def file_size(size: int) -> str:
    """A file size as people read it: "63 KB", "24.5 MB"."""
    return f"{size / 1024:.0f} KB" if size < 1024 * 1024 else f"{size / (1024 * 1024):.1f} MB"
