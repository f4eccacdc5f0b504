"""Showing user text safely: no pings, no markdown surprises."""

from __future__ import annotations

import discord

NO_PINGS = discord.AllowedMentions.none()
"""For every message that echoes user text: `@everyone` in a prompt pings nobody."""


def requester_only(user: discord.abc.Snowflake) -> discord.AllowedMentions:
    """Pings the requester and nobody else (a late result mentions them once)."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[user], replied_user=False)


def shortened(text: str, limit: int) -> str:
    """At most `limit` characters, the last an ellipsis when some were cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str, limit: int = 200) -> str:
    """User text made inert for an embed: markdown and mentions escaped, and shortened."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(shortened(text, limit)))
