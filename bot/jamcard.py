"""A jam's session card: the message in the channel that shows its tempo, key, length and layers.

The card is posted by `/jam start` and edited (never posted again) whenever its layers change, a
mix is posted or the jam ends. What it shows is read in the unit of work that made the change
(`card_of`), so the edit never shows an older state than the one the user was told about.
"""

from __future__ import annotations

import logging
import typing as tp
from dataclasses import dataclass

import discord

from generation.shape import LoopShape, format_bpm
from generation.storage import MAX_LAYERS, JamSession, latest_mix

from . import embeds
from .background import one_line
from .text import quote
from .views import JamMixButton

if tp.TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .core import BotCore

log = logging.getLogger(__name__)

ENDINGS = {"stopped": "This jam was stopped.", "idle": "This jam ended after a long time without changes."}


@dataclass(frozen=True)
class LayerLine:
    """One layer as the card and the "Replace which layer?" menu show it."""

    number: int
    loop_id: str
    prompt: str
    added_by: int


@dataclass(frozen=True)
class JamCard:
    """A jam as its card shows it, read while its unit of work was open."""

    jam_id: int
    guild_id: int
    channel_id: int
    card_message_id: int | None
    started_by: int
    shape: LoopShape
    key: str | None
    layers: tuple[LayerLine, ...]
    end_reason: str | None
    last_mix_url: str | None

    @property
    def running(self) -> bool:
        return self.end_reason is None

    @property
    def name(self) -> str:
        return f"Jam #{self.jam_id}"

    def describe(self) -> str:
        """ "Jam #3 (92 BPM · 4 bars · 4/4 · A minor)": how messages name it."""
        return f"{self.name} ({embeds.shape_text(self.shape, self.key)})"


def card_of(session: Session, jam: JamSession) -> JamCard:
    """The card of `jam` as it stands in `session` (a unit of work of `BotCore.in_db`)."""
    mix = latest_mix(session, jam.id)
    mix_url = None
    if mix is not None and mix.posted_channel_id is not None:
        mix_url = f"https://discord.com/channels/{jam.guild_id}/{mix.posted_channel_id}/{mix.posted_message_id}"
    return JamCard(jam_id=jam.id, guild_id=jam.guild_id, channel_id=jam.channel_id, card_message_id=jam.card_message_id,
                   started_by=jam.started_by, shape=jam.shape, key=jam.key, layers=layer_lines(jam),
                   end_reason=jam.end_reason, last_mix_url=mix_url)


def layer_lines(jam: JamSession) -> tuple[LayerLine, ...]:
    """The jam's layers as its card lists them, numbered from 1."""
    return tuple(LayerLine(number, layer.generation.short_id, layer.generation.prompt, layer.added_by)
                 for number, layer in enumerate(jam.layers, start=1))


def card_embed(card: JamCard) -> discord.Embed:
    title = card.name if card.running else f"{card.name} (ended)"
    if card.running:
        about = ("/loop and /loopify here take the jam's tempo, key and length. Add loops with their "
                 "Add to jam button or /jam add, then press Mix.")
    else:
        about = ENDINGS.get(card.end_reason or "", "This jam has ended.")
    embed = discord.Embed(title=title, description=f"Started by <@{card.started_by}>. {about}", colour=embeds.COLOUR)
    embed.add_field(name="Tempo", value=f"{format_bpm(card.shape.bpm)} BPM")
    embed.add_field(name="Key", value=card.key or "each layer keeps its own")
    embed.add_field(name="Bars", value=str(card.shape.bars))
    embed.add_field(name="Meter", value=embeds.meter_text(card.shape))
    lines = [f"{layer.number}. “{quote(layer.prompt, 60)}” · `{layer.loop_id}` · by <@{layer.added_by}>" for layer in card.layers]
    embed.add_field(name=f"Layers ({len(card.layers)}/{MAX_LAYERS})", value="\n".join(lines) or "None yet.", inline=False)
    if card.last_mix_url:
        embed.add_field(name="Last mix", value=f"[Listen to it]({card.last_mix_url})", inline=False)
    embed.set_footer(text=f"{card.name} · /history jam:{card.jam_id}")
    return embed


def card_view(card: JamCard) -> discord.ui.View:
    """The Mix button while the jam runs; no button once it ended."""
    view = discord.ui.View(timeout=None)
    if card.running:
        view.add_item(JamMixButton(card.jam_id))
    return view


async def show_card(bot: BotCore, card: JamCard) -> None:
    """Edit the jam's card to show `card`. A card Discord refuses to edit (deleted, no access) costs one log line:
    the change it shows is made and answered already."""
    if card.card_message_id is None:
        return
    try:
        channel = tp.cast(discord.TextChannel, await bot.channel_for(card.channel_id))  # or a thread: both have messages
        await channel.get_partial_message(card.card_message_id).edit(embed=card_embed(card), view=card_view(card))
    except discord.HTTPException as error:
        log.info("could not update the card of jam %d: %s", card.jam_id, one_line(error))
