"""An interaction rebuilt from a stored token after a graceful restart (see `bot.replies`)."""

from __future__ import annotations

import typing as tp
from datetime import datetime

import discord

from generation.storage import StoredReply


class ResumedInteraction:
    """What the tracker uses of a `discord.Interaction` (its reply and follow-ups), rebuilt from a stored token."""

    def __init__(self, client: discord.Client, reply: StoredReply) -> None:
        self.application_id: int = reply.application_id
        self.token: str = reply.token
        self.created_at: datetime = reply.created_at
        # The same webhook as `Interaction.followup`: the application's id and the interaction's token.
        self.followup = discord.Webhook.partial(reply.application_id, reply.token, client=client)

    async def edit_original_response(self, **fields: tp.Any) -> discord.WebhookMessage:
        """PATCH /webhooks/{application id}/{token}/messages/@original, as `Interaction.edit_original_response`."""
        # The API takes "@original" where a message id goes; discord.py's stubs say int.
        return await self.followup.edit_message("@original", **fields)  # type: ignore[call-overload]

    def __repr__(self) -> str:
        return f"<ResumedInteraction application={self.application_id}>"  # never the token
