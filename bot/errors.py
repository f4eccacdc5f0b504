"""The one place where errors become messages for users (in the spirit of Red-DiscordBot).

Every slash command and button error reaches `LoopJamTree.on_error` or `report_error`: expected
problems (limits, permissions, bad input) get a plain sentence; anything unexpected is logged with
a short error id, and the user sees only that id.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

import discord
from discord import app_commands

from generation.jobs.api import QueueUnavailable
from generation.storage import is_unavailable

from .shutdown import refused_while_stopping

log = logging.getLogger(__name__)


class UserFacingError(app_commands.AppCommandError):
    """An error whose message is written for the user who caused it."""


class RateLimited(UserFacingError):
    """A limit that lifts by itself: the message says why, and the user sees when as a live Discord timestamp."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def describe(error: Exception) -> tuple[str, str | None]:
    """(message for the user, error id when it was unexpected)."""
    original = getattr(error, "original", None) or getattr(error, "__cause__", None) or error
    if isinstance(error, RateLimited):
        when = discord.utils.format_dt(discord.utils.utcnow() + timedelta(seconds=error.retry_after), "R")
        return f"{error}; you can ask for another {when}.", None
    if isinstance(error, UserFacingError):
        return str(error), None
    if isinstance(original, QueueUnavailable):  # its database is away: a sentence for the user, nothing to look up
        return str(original), None
    if is_unavailable(original):  # the same outage met by the bot's own reads (a jam, a loop by its id)
        return str(QueueUnavailable()), None
    if isinstance(error, app_commands.MissingPermissions):
        missing = ", ".join(p.replace("_", " ") for p in error.missing_permissions)
        return f"You need the {missing} permission for this.", None
    if isinstance(error, app_commands.BotMissingPermissions):
        missing = ", ".join(p.replace("_", " ") for p in error.missing_permissions)
        return f"I need the {missing} permission in this channel.", None
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in a server.", None
    if isinstance(error, app_commands.TransformerError):
        return f"That value is not valid here: {discord.utils.escape_mentions(str(error.value))[:100]}", None
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here.", None
    if isinstance(original, discord.HTTPException):
        error_id = secrets.token_hex(4)
        log.warning("Discord API error %s (%s): %s", error_id, original.status, original.text)
        return f"Discord refused a request ({original.status}). Please try again shortly. (error {error_id})", error_id
    error_id = secrets.token_hex(4)
    log.error("unexpected error %s", error_id, exc_info=original)
    return f"Something went wrong on our side. The admins can look it up as error {error_id}.", error_id


async def report_error(interaction: discord.Interaction, error: Exception) -> None:
    """Tell the user what went wrong, ephemerally, whether or not the interaction was answered."""
    message, _ = describe(error)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
        else:
            await interaction.response.send_message(message, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
    except discord.HTTPException:
        log.warning("could not tell the user about an error (interaction %s)", interaction.id)


class LoopJamTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return not await refused_while_stopping(interaction)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)
