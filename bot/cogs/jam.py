"""/jam: a channel's jam session (one tempo, bar length, meter and key for its loops), its layers and its mix.

One jam runs per channel. Anyone in the channel may add layers (`/jam add`, or the "Add to jam"
button under a loop made in the jam); a member may remove their own layer, while removing another
member's layer or stopping the jam needs the jam's starter or Manage Server. `/jam mix` and the
card's Mix button queue the mix like any loop (the worker renders it). The key is optional: without
one, every layer keeps its own key. A jam nobody changes or mixes for `[jam] idle_hours` ends by itself.
"""

from __future__ import annotations

import logging
import typing as tp
from dataclasses import dataclass
from datetime import datetime, timedelta

import discord
from discord import app_commands
from discord.ext import commands

from generation.config import BPM_MAX, BPM_MIN, Settings
from generation.guild_rules import GuildRules
from generation.jobs.admission import mix_prompt
from generation.jobs.api import JobKind, JobRequest
from generation.shape import LoopShape
from generation.storage import (
    MAX_LAYERS,
    JamSession,
    LayerOutcome,
    NewJam,
    add_layer,
    end_jam,
    get_guild_generation,
    get_guild_settings,
    idle_jams,
    remove_layer,
    running_jam,
    set_jam_card,
    start_jam,
    utcnow,
)

from .. import embeds
from ..background import Periodic
from ..errors import UserFacingError
from ..jamcard import JamCard, LayerLine, card_embed, card_of, card_view, layer_lines, show_card
from ..keys import key_choices, parsed_key
from ..text import NO_PINGS, quote
from ..views import JamReplaceSelect
from .loops import BARS_CHOICES, BEATS_BY_METER, METER_CHOICES, Loops, no_such_loop

if tp.TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..core import BotCore

log = logging.getLogger(__name__)

EXPIRY_INTERVAL_S = 600.0
NO_JAM = "No jam is running in this channel. Start one with /jam start."


@dataclass(frozen=True)
class Member:
    """Who acts on a jam, as its permission checks need them."""

    user_id: int
    manages_server: bool

    @classmethod
    def of(cls, interaction: discord.Interaction) -> Member:
        return cls(interaction.user.id, interaction.permissions.manage_guild)

    def may_run(self, started_by: int) -> bool:
        """Stop the jam, or remove anyone's layer."""
        return self.manages_server or self.user_id == started_by


@dataclass(frozen=True)
class Here:
    """The server and channel an interaction came from: where its jam runs."""

    guild_id: int
    channel_id: int

    @classmethod
    def of(cls, interaction: discord.Interaction) -> Here:
        if interaction.guild_id is None or interaction.channel_id is None:
            raise UserFacingError("Jams run in server channels, not in direct messages.")
        return cls(interaction.guild_id, interaction.channel_id)


@dataclass(frozen=True)
class Added:
    """What came of adding a loop to a jam, with the jam as it is now."""

    outcome: LayerOutcome
    card: JamCard
    loop: LayerLine
    """The loop added (its number: where it is now, or would have been)."""
    loop_shape: LoopShape
    replaced: LayerLine | None = None

    def message(self) -> str:
        loop, name, at = f"“{quote(self.loop.prompt, 80)}” (`{self.loop.loop_id}`)", self.card.name, self.loop.number
        if self.outcome is LayerOutcome.ADDED:
            return f"Added {loop} to {name} as layer {at} of {MAX_LAYERS}."
        if self.outcome is LayerOutcome.REPLACED and self.replaced is not None:
            return (f"Replaced layer {self.replaced.number}, “{quote(self.replaced.prompt, 80)}”, with {loop}; "
                    f"it is layer {at} of {name} now.")
        if self.outcome is LayerOutcome.ALREADY_IN:
            return f"{loop} is already layer {at} of {name}."
        if self.outcome is LayerOutcome.NOT_FINISHED:
            return f"{loop} isn't finished yet: add it once it has been posted."
        if self.outcome is LayerOutcome.OTHER_SHAPE:
            return (f"{loop} is {embeds.shape_text(self.loop_shape)}, but {name} is {embeds.shape_text(self.card.shape)}: "
                    "only loops of the jam's tempo, bars and meter can join it.")
        if self.outcome is LayerOutcome.MIX:
            return f"{loop} is a mix; a jam's layers are loops."
        return f"That layer has left {name} meanwhile, so nothing was replaced. Add the loop again to choose another."

    def replace_menu(self) -> discord.ui.View:
        """"Replace which layer?" over the jam's layers, for the loop that did not fit in."""
        options = [discord.SelectOption(label=f"{layer.number}. {layer.prompt}"[:100], value=layer.loop_id,
                                        description=f"id {layer.loop_id}") for layer in self.card.layers]
        view = discord.ui.View(timeout=None)
        view.add_item(JamReplaceSelect(self.card.jam_id, self.loop.loop_id, options))
        return view


class Jam(commands.Cog):
    group = app_commands.Group(name="jam", description="A jam session in this channel: shared tempo and key, layers, a mix.",
                               guild_only=True)

    def __init__(self, bot: BotCore, loops: Loops) -> None:
        self.bot = bot
        self.loops = loops
        self.expiry = Periodic("jam expiry", self.end_idle_jams, EXPIRY_INTERVAL_S, describe=bot.describe_error)

    def start(self) -> None:
        self.expiry.start()

    async def stop(self) -> None:
        await self.expiry.stop()

    async def cog_unload(self) -> None:
        await self.stop()

    # --- /jam start -----------------------------------------------------------------------------

    @group.command(name="start", description="Start a jam here: every loop of this channel shares its tempo, key and length.")
    @app_commands.describe(
        bpm=f"Tempo in beats per minute, {BPM_MIN:g} to {BPM_MAX:g}",
        key="The key every layer is moved to, e.g. “A minor”, “F#m”, “Bb” (default: each keeps its own)",
        bars="Length in bars (default 4)",
        meter="Time signature (default 4/4)",
    )
    @app_commands.choices(bars=BARS_CHOICES, meter=METER_CHOICES)  # type: ignore[misc]  # int and str choices together
    async def start_session(
        self,
        interaction: discord.Interaction,
        bpm: app_commands.Range[float, BPM_MIN, BPM_MAX],
        key: app_commands.Range[str, 1, 20] | None = None,
        bars: int = 4,
        meter: str = "4/4",
    ) -> None:
        self.loops.check_channel(interaction)
        here = Here.of(interaction)
        new = NewJam(guild_id=here.guild_id, channel_id=here.channel_id, started_by=interaction.user.id,
                     shape=LoopShape(bpm, bars, BEATS_BY_METER[meter]), key=parsed_key(key) if key else None)
        card: JamCard = await self.bot.in_db(_start, new, self.bot.settings)
        sent = await interaction.response.send_message(embed=card_embed(card), view=card_view(card), allowed_mentions=NO_PINGS)
        message_id = sent.message_id or (await interaction.original_response()).id
        await self.bot.in_db(set_jam_card, card.jam_id, message_id)

    @start_session.autocomplete("key")
    async def start_keys(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return key_choices(current)

    # --- layers ---------------------------------------------------------------------------------

    @group.command(name="add", description="Add a loop from the history to this channel's jam.")
    @app_commands.describe(id="The loop's id, as shown under it and in /history")
    async def add(self, interaction: discord.Interaction, id: app_commands.Range[str, 1, 32]) -> None:
        await self.add_loop(interaction, id.strip())

    async def on_jam_add(self, interaction: discord.Interaction, loop_id: str) -> None:
        await self.add_loop(interaction, loop_id)

    async def on_jam_replace(self, interaction: discord.Interaction, jam_id: int, loop_id: str, replaced_id: str) -> None:
        added: Added = await self.bot.in_db(_add, Here.of(interaction), loop_id, interaction.user.id, jam_id, replaced_id)
        await interaction.response.edit_message(content=added.message(), view=None, allowed_mentions=NO_PINGS)
        if added.outcome is LayerOutcome.REPLACED:
            await show_card(self.bot, added.card)

    async def add_loop(self, interaction: discord.Interaction, loop_id: str) -> None:
        """Add the loop to the channel's running jam; when the jam is full, ask which layer it replaces."""
        added: Added = await self.bot.in_db(_add, Here.of(interaction), loop_id, interaction.user.id, None, None)
        if added.outcome is LayerOutcome.FULL:
            await interaction.response.send_message(
                f"{added.card.name} has {MAX_LAYERS} layers, the most a jam takes. Replace which layer with "
                f"“{quote(added.loop.prompt, 80)}”? (It comes last.)", view=added.replace_menu(), ephemeral=True,
                allowed_mentions=NO_PINGS)
            return
        await interaction.response.send_message(added.message(), ephemeral=True, allowed_mentions=NO_PINGS)
        if added.outcome is LayerOutcome.ADDED:
            await show_card(self.bot, added.card)

    @group.command(name="remove", description="Take a layer out of this channel's jam.")
    @app_commands.describe(layer="The layer's number on the jam's card")
    async def remove(self, interaction: discord.Interaction, layer: app_commands.Range[int, 1, MAX_LAYERS]) -> None:
        removed, card = await self.bot.in_db(_remove, Here.of(interaction), layer, Member.of(interaction))
        await interaction.response.send_message(
            f"Removed layer {removed.number}, “{quote(removed.prompt, 80)}” (`{removed.loop_id}`), from {card.name}.",
            ephemeral=True, allowed_mentions=NO_PINGS)
        await show_card(self.bot, card)

    # --- mix, stop, show ------------------------------------------------------------------------

    @group.command(name="mix", description="Mix this channel's jam: its layers as one loop, with stems.")
    async def mix(self, interaction: discord.Interaction) -> None:
        await self.submit_mix(interaction, None)

    async def on_jam_mix(self, interaction: discord.Interaction, jam_id: int) -> None:
        await self.submit_mix(interaction, jam_id)

    async def submit_mix(self, interaction: discord.Interaction, jam_id: int | None) -> None:
        """Queue the mix of the channel's running jam (of jam `jam_id`, from its card's button) as loops are queued.

        Whether it has layers is the queue's check, made where it takes the layers it mixes.
        """
        here = Here.of(interaction)
        card: JamCard | None = await self.bot.read_db(_running_card, here.channel_id)
        if card is None or (jam_id is not None and card.jam_id != jam_id):
            ended = f"Jam #{jam_id} has ended. " if jam_id is not None else ""
            raise UserFacingError(ended + NO_JAM)
        request = JobRequest(
            user_id=interaction.user.id, prompt=mix_prompt(len(card.layers)), shape=card.shape, guild_id=here.guild_id,
            channel_id=here.channel_id, role_ids=self.loops.role_ids(interaction), kind=JobKind.MIX, jam_id=card.jam_id,
        )
        await self.loops.enqueue(interaction, request)

    @group.command(name="stop", description="End this channel's jam (its starter or Manage Server).")
    async def stop_session(self, interaction: discord.Interaction) -> None:
        card: JamCard = await self.bot.in_db(_stop, Here.of(interaction), Member.of(interaction))
        await interaction.response.send_message(
            f"{card.name} has ended. Its loops and mixes stay in /history (jam:{card.jam_id}).", ephemeral=True)
        await show_card(self.bot, card)

    @group.command(name="show", description="Show this channel's jam: its tempo, key, length and layers.")
    async def show(self, interaction: discord.Interaction) -> None:
        card: JamCard | None = await self.bot.read_db(_running_card, Here.of(interaction).channel_id)
        if card is None:
            raise UserFacingError(NO_JAM)
        await interaction.response.send_message(embed=card_embed(card), ephemeral=True, allowed_mentions=NO_PINGS)

    # --- idle expiry ----------------------------------------------------------------------------

    async def end_idle_jams(self) -> None:
        """End the jams idle for longer than `[jam] idle_hours` and show it on their cards."""
        await self.bot.wait_until_ready()
        idle_since = utcnow() - timedelta(hours=self.bot.settings.jam.idle_hours)
        cards: list[JamCard] = await self.bot.in_db(_end_idle, idle_since)
        for card in cards:
            await show_card(self.bot, card)
        if cards:
            log.info("ended %d idle jam(s): %s", len(cards), ", ".join(str(card.jam_id) for card in cards))


# --- units of work (run in a thread by `BotCore.in_db` / `read_db`) ------------------------------


def _running(session: Session, here: Here) -> JamSession:
    jam = running_jam(session, here.channel_id)
    if jam is None:
        raise UserFacingError(NO_JAM)
    return jam


def _running_card(session: Session, channel_id: int) -> JamCard | None:
    jam = running_jam(session, channel_id)
    return card_of(session, jam) if jam is not None else None


def _start(session: Session, new: NewJam, settings: Settings) -> JamCard:
    # The server's rules for loops hold for the jam's: a jam whose loops would all be refused is not started.
    rules = GuildRules.of(settings, get_guild_settings(session, new.guild_id))
    if not rules.allows_channel(new.channel_id):
        raise UserFacingError(f"Loops are made in {rules.channels_text()} on this server, so jams are too.")
    if new.shape.bars > rules.max_bars:
        raise UserFacingError(f"This server allows loops of at most {rules.max_bars} bars, so a jam's are too.")
    jam = start_jam(session, new)
    if jam is None:
        running = running_jam(session, new.channel_id)
        already = f"{card_of(session, running).describe()}, started by <@{running.started_by}>," if running else "A jam"
        raise UserFacingError(f"{already} is running in this channel already. Add to it, or end it with /jam stop first.")
    session.flush()  # its id
    return card_of(session, jam)


def _add(session: Session, here: Here, loop_id: str, user_id: int, jam_id: int | None, replacing: str | None) -> Added:
    """Add the loop to the running jam (jam `jam_id` when a menu of it asks), in place of the layer whose loop is
    `replacing` when given."""
    jam = _running(session, here)
    if jam_id is not None and jam.id != jam_id:
        raise UserFacingError(f"Jam #{jam_id} has ended. {NO_JAM}")
    loop = get_guild_generation(session, loop_id, here.guild_id)
    if loop is None:
        raise no_such_loop(loop_id)
    replaced = next((layer for layer in layer_lines(jam) if layer.loop_id == replacing), None)
    if replacing is not None and replaced is None:
        outcome = LayerOutcome.NO_SUCH_LAYER
    else:
        outcome = add_layer(session, jam, loop, user_id, replacing=replaced.number if replaced else None)
    card = card_of(session, jam)
    at = next((layer.number for layer in card.layers if layer.loop_id == loop.short_id), len(card.layers) + 1)
    return Added(outcome, card, LayerLine(at, loop.short_id, loop.prompt, user_id), loop.shape, replaced)


def _remove(session: Session, here: Here, number: int, member: Member) -> tuple[LayerLine, JamCard]:
    jam = _running(session, here)
    card = card_of(session, jam)
    if not 1 <= number <= len(card.layers):
        raise UserFacingError(f"{card.name} has no layer {number}; it has {len(card.layers)}.")
    layer = card.layers[number - 1]
    if layer.added_by != member.user_id and not member.may_run(jam.started_by):
        raise UserFacingError(f"Layer {number} was added by <@{layer.added_by}>: only they, <@{jam.started_by}> who "
                              f"started {card.name}, or someone with Manage Server can remove it.")
    remove_layer(session, jam, number)
    return layer, card_of(session, jam)


def _stop(session: Session, here: Here, member: Member) -> JamCard:
    jam = _running(session, here)
    if not member.may_run(jam.started_by):
        raise UserFacingError(f"Only <@{jam.started_by}>, who started Jam #{jam.id}, or someone with Manage Server can stop it.")
    end_jam(session, jam, "stopped")
    return card_of(session, jam)


def _end_idle(session: Session, idle_since: datetime) -> list[JamCard]:
    cards = []
    for jam in idle_jams(session, idle_since):
        end_jam(session, jam, "idle")
        cards.append(card_of(session, jam))
    return cards
