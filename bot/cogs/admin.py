"""/settings: a server's own limits, channels, model and longest loop (Manage Server only)."""

from __future__ import annotations

import typing as tp

import discord
from discord import app_commands
from discord.ext import commands

from generation.config import ALLOWED_BARS, model_label
from generation.guild_rules import GuildRules
from generation.storage import get_guild_settings, upsert_guild_settings

from .. import embeds
from ..errors import UserFacingError

if tp.TYPE_CHECKING:
    from ..core import BotCore


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Settings(commands.GroupCog, group_name="settings", group_description="LoopJam's settings for this server"):
    def __init__(self, bot: BotCore) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Servers can hand /settings to other roles in Discord; LoopJam still asks for Manage Server."""
        if not interaction.permissions.manage_guild:
            raise app_commands.MissingPermissions(["manage_guild"])
        return True

    async def _change(self, interaction: discord.Interaction, **changes: tp.Any) -> None:
        guild_id = interaction.guild_id
        if guild_id is None:  # the group is guild-only; Discord never sends it from a DM
            raise UserFacingError("Settings belong to a server.")
        row = await self.bot.in_db(lambda session: upsert_guild_settings(session, guild_id, **changes))
        await interaction.response.send_message("Saved.", embed=self.describe(row), ephemeral=True)

    async def _toggle_id(self, interaction: discord.Interaction, field: str, item_id: int, *, add: bool) -> None:
        """Add an id to, or remove it from, one of the guild's id lists (channels, roles)."""
        row = await self.bot.read_db(get_guild_settings, interaction.guild_id)
        ids = set(getattr(row, field) if row is not None else [])
        ids = ids | {item_id} if add else ids - {item_id}
        await self._change(interaction, **{field: sorted(ids)})

    def describe(self, row: tp.Any) -> discord.Embed:
        rules = GuildRules.of(self.bot.settings, row)
        embed = discord.Embed(title="LoopJam settings for this server", colour=embeds.COLOUR)

        def value(name: str) -> str:
            return f"{getattr(rules, name):g} ({'server' if name in rules.own else 'default'})"

        embed.add_field(name="Loops per user", value=f"{value('rate_limit_jobs')} every {value('rate_limit_window_s')} s")
        embed.add_field(name="Queued per user", value=value("max_queued_per_user"))
        embed.add_field(name="Longest loop", value=value("max_bars") + " bars")
        embed.add_field(name="Default model", value=model_label(rules.default_model))
        embed.add_field(name="Channels", value=", ".join(f"<#{c}>" for c in rules.allowed_channel_ids) or "all", inline=False)
        roles = ", ".join(f"<@&{r}>" for r in sorted(rules.exempt_role_ids))
        embed.add_field(name="Roles without limits", value=roles or "none", inline=False)
        return embed

    @app_commands.command(name="show", description="Show this server's settings.")
    async def show(self, interaction: discord.Interaction) -> None:
        row = await self.bot.read_db(get_guild_settings, interaction.guild_id)
        await interaction.response.send_message(embed=self.describe(row), ephemeral=True)

    @app_commands.command(name="limits", description="Loops per user per time window, and queued loops per user.")
    @app_commands.describe(jobs="Loops a user may ask for in the window", window_minutes="The window, in minutes",
                           queued="Loops a user may have waiting at once")
    async def limits(self, interaction: discord.Interaction, jobs: app_commands.Range[int, 1, 100] | None = None,
                     window_minutes: app_commands.Range[float, 1, 1440] | None = None,
                     queued: app_commands.Range[int, 1, 20] | None = None) -> None:
        changes: dict[str, tp.Any] = {}
        if jobs is not None:
            changes["rate_limit_jobs"] = jobs
        if window_minutes is not None:
            changes["rate_limit_window_s"] = window_minutes * 60
        if queued is not None:
            changes["max_queued_per_user"] = queued
        if not changes:
            raise UserFacingError("Give at least one of jobs, window_minutes or queued.")
        await self._change(interaction, **changes)

    @app_commands.command(name="channel", description="Allow or stop loops in a channel (none allowed = every channel).")
    @app_commands.choices(action=[app_commands.Choice(name="allow", value="allow"), app_commands.Choice(name="remove", value="remove")])
    async def channel(self, interaction: discord.Interaction, action: str, channel: discord.TextChannel) -> None:
        await self._toggle_id(interaction, "allowed_channel_ids", channel.id, add=action == "allow")

    @app_commands.command(name="exempt-role", description="Let a role skip the per-user limits, or stop it.")
    @app_commands.choices(action=[app_commands.Choice(name="add", value="add"), app_commands.Choice(name="remove", value="remove")])
    async def exempt_role(self, interaction: discord.Interaction, action: str, role: discord.Role) -> None:
        await self._toggle_id(interaction, "exempt_role_ids", role.id, add=action == "add")

    @app_commands.command(name="model", description="The model /loop uses when none is chosen.")
    async def model(self, interaction: discord.Interaction, name: str) -> None:
        await self._change(interaction, default_model=self.bot.allowed_model(name))

    @model.autocomplete("name")
    async def model_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return self.bot.model_choices(current)

    @app_commands.command(name="max-bars", description="The longest loop members may ask for.")
    @app_commands.choices(bars=[app_commands.Choice(name=str(n), value=n) for n in ALLOWED_BARS])
    async def max_bars(self, interaction: discord.Interaction, bars: int) -> None:
        await self._change(interaction, max_bars=bars)

