"""/status: the queue, the workers and what a new request would wait."""

from __future__ import annotations

import typing as tp

import discord
from discord import app_commands
from discord.ext import commands

from generation.config import model_label

from .. import embeds

if tp.TYPE_CHECKING:
    from ..core import BotCore


class Status(commands.Cog):
    def __init__(self, bot: BotCore) -> None:
        self.bot = bot

    @app_commands.command(name="status", description="How busy LoopJam is, and how long a new loop would take.")
    async def status(self, interaction: discord.Interaction) -> None:
        status = await self.bot.service.status()
        embed = discord.Embed(title="LoopJam status", colour=embeds.COLOUR)
        embed.add_field(name="Waiting", value=str(status.depth))
        embed.add_field(name="Generating", value=str(status.running))
        embed.add_field(name="Workers", value=str(status.workers_alive))
        eta = status.eta_by_position[status.depth] if len(status.eta_by_position) > status.depth else None
        embed.add_field(name="A new loop now", value=embeds.describe_eta(eta).lstrip(", ") or "no timing yet")
        embed.add_field(name="Models", value=", ".join(model_label(m) for m in status.models) or "loading…", inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)

