"""/history and /replay."""

from __future__ import annotations

import typing as tp

import discord
from discord import app_commands
from discord.ext import commands

from generation.config import BPM_MAX, BPM_MIN
from generation.jobs.api import JobKind, JobRequest
from generation.shape import format_bpm
from generation.storage import GenerationKind, list_history

from .. import embeds
from ..keys import key_choices, parsed_key
from ..text import NO_PINGS, quote
from ..views import HistoryPages
from .loops import Loops

if tp.TYPE_CHECKING:
    from ..core import BotCore

PAGE_SIZE = 8


class History(commands.Cog):
    def __init__(self, bot: BotCore, loops: Loops) -> None:
        self.bot = bot
        self.loops = loops

    @app_commands.command(name="history", description="Browse the loops made here.")
    @app_commands.guild_only()
    @app_commands.describe(
        scope="Your loops or the whole server's (default: yours)", search="Only prompts containing this",
        jam="Only loops and mixes of this jam (its number, as on its card)", bpm="Only loops of this tempo",
        key="Only loops in this key (the key they were moved to, else the one found), e.g. “A minor”",
    )
    @app_commands.choices(scope=[app_commands.Choice(name="mine", value="mine"), app_commands.Choice(name="server", value="server")])
    async def history(
        self, interaction: discord.Interaction, scope: str = "mine", search: app_commands.Range[str, 1, 100] | None = None,
        jam: app_commands.Range[int, 1] | None = None, bpm: app_commands.Range[float, BPM_MIN, BPM_MAX] | None = None,
        key: app_commands.Range[str, 1, 20] | None = None,
    ) -> None:
        user_id = interaction.user.id if scope == "mine" else None
        guild_id = interaction.guild_id
        key_name = parsed_key(key) if key else None
        filters = [words for words in (f"“{quote(search, 50)}”" if search else None, f"Jam #{jam}" if jam else None,
                                       f"{format_bpm(bpm)} BPM" if bpm else None, key_name) if words]

        async def page(number: int) -> tuple[discord.Embed, bool]:
            rows = await self.bot.read_db(
                lambda session: list_history(session, user_id=user_id, guild_id=guild_id, search=search, jam_id=jam, bpm=bpm,
                                             key=key_name, limit=PAGE_SIZE + 1, offset=number * PAGE_SIZE)
            )
            return history_embed(rows[:PAGE_SIZE], number, scope, filters, interaction.guild_id), len(rows) > PAGE_SIZE

        embed, has_next = await page(0)
        view = HistoryPages(interaction.user.id, page, has_next)
        await interaction.response.send_message(embed=embed, view=view, ephemeral=scope == "mine", allowed_mentions=NO_PINGS)

    @history.autocomplete("key")
    async def keys(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return key_choices(current)

    @app_commands.command(name="replay", description="Make a loop from the history again (same seed unless you give one).")
    @app_commands.guild_only()
    @app_commands.describe(id="The loop's id, as shown under it and in /history", seed="Another seed (default: the same)")
    async def replay(self, interaction: discord.Interaction, id: app_commands.Range[str, 1, 32],
                     seed: app_commands.Range[int, 0, 2**53 - 1] | None = None) -> None:
        row = await self.loops.find_loop(interaction, id.strip())
        request = JobRequest(
            user_id=interaction.user.id, prompt=row.prompt, shape=row.shape,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id,
            role_ids=self.loops.role_ids(interaction),
            model=row.model, temperature=row.temperature, top_k=row.top_k, top_p=row.top_p, cfg_coef=row.cfg_coef,
            seed=row.seed if seed is None else seed, exact_seed=seed is None,
            kind=JobKind.REPLAY, parent_loop_id=row.short_id,
        )
        await self.loops.enqueue(interaction, request)


def history_embed(rows: list[tp.Any], page: int, scope: str, filters: list[str], guild_id: int | None) -> discord.Embed:
    """A page of the history; `filters` are the searches as the title names them ("“dub”", "Jam #3", "A minor")."""
    title = "Your loops" if scope == "mine" else "Loops on this server"
    if filters:
        title += " · " + " · ".join(filters)
    embed = discord.Embed(title=title, colour=embeds.COLOUR)
    if not rows:
        embed.description = "Nothing here yet. Make one with /loop." if page == 0 else "No more loops."
    for row in rows:
        when = discord.utils.format_dt(row.created_at, "R")
        by = f" · by <@{row.user_id}>" if scope == "server" else ""
        link = ""
        if row.posted_message_id and row.posted_channel_id and guild_id:
            link = f" · [listen](https://discord.com/channels/{guild_id}/{row.posted_channel_id}/{row.posted_message_id})"
        status = f"{row.status.value}, not posted" if row.delivery_error else row.status.value
        key = f" · {row.target_key if row.key_shift_semitones else row.source_key}" if row.source_key else ""
        kind = " · mix" if row.kind is GenerationKind.MIX else ""
        name = f"`{row.short_id}`{kind} · {row.bpm:g} BPM · {row.bars} bars{key} · {status}"
        embed.add_field(name=name, value=f"{quote(row.prompt, 120)}\n{when}{by}{link}", inline=False)
    embed.set_footer(text=f"page {page + 1}")
    return embed

