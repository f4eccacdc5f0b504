"""Jam sessions in the history: starting, finding, layering and ending them, one function per operation.

Like `repository`'s, every function takes the `Session` of the caller's unit of work and leaves
committing to it. Which loops fit a jam (finished, same tempo, bars and meter) is decided here,
where the rows are read, so a button and `/jam add` give the same answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..shape import LoopShape
from .models import Generation, GenerationKind, GenerationStatus, JamLayer, JamSession, utcnow
from .repository import BPM_TOLERANCE

MAX_LAYERS = 8


@dataclass(frozen=True)
class NewJam:
    guild_id: int
    channel_id: int
    started_by: int
    shape: LoopShape
    key: str | None
    """A key's name as `music.keys` writes it ("A minor"), or None to leave every layer in its own key."""


class LayerOutcome(str, enum.Enum):
    ADDED = "added"
    REPLACED = "replaced"
    ALREADY_IN = "already_in"
    FULL = "full"
    """`MAX_LAYERS` are in: the caller asks which one to replace."""
    NOT_FINISHED = "not_finished"
    OTHER_SHAPE = "other_shape"
    NO_SUCH_LAYER = "no_such_layer"
    """The layer to replace is not (any longer) in the jam."""
    MIX = "mix"
    """A jam's mix is made of layers; it is not one."""


def same_shape(first: LoopShape, second: LoopShape) -> bool:
    return (abs(first.bpm - second.bpm) < BPM_TOLERANCE and first.bars == second.bars
            and first.beats_per_bar == second.beats_per_bar)


def running_jam(session: Session, channel_id: int) -> JamSession | None:
    """The jam running in the channel, if one does."""
    query = select(JamSession).where(JamSession.channel_id == channel_id, JamSession.ended_at.is_(None))
    return session.scalar(query)


def get_jam(session: Session, jam_id: int, guild_id: int | None) -> JamSession | None:
    """The jam `jam_id` of the server `guild_id` (running or ended); another server's reads as unknown."""
    return session.scalar(select(JamSession).where(JamSession.id == jam_id, JamSession.guild_id == guild_id))


def start_jam(session: Session, new: NewJam) -> JamSession | None:
    """Start a jam in the channel; None when one runs there already (the unique index decides a race)."""
    if running_jam(session, new.channel_id) is not None:
        return None
    now = utcnow()
    jam = JamSession(guild_id=new.guild_id, channel_id=new.channel_id, started_by=new.started_by, shape=new.shape,
                     key=new.key, started_at=now, last_active_at=now)
    try:
        with session.begin_nested():
            session.add(jam)
    except IntegrityError:
        return None
    return jam


def add_layer(session: Session, jam: JamSession, loop: Generation, added_by: int, *, replacing: int | None = None) -> LayerOutcome:
    """Add a finished loop of the jam's shape as its last layer, or in place of layer `replacing` (1-based),
    which then leaves the jam and the new one comes last."""
    if loop.kind is GenerationKind.MIX:
        return LayerOutcome.MIX
    if loop.status is not GenerationStatus.DONE:
        return LayerOutcome.NOT_FINISHED
    if not same_shape(loop.shape, jam.shape):
        return LayerOutcome.OTHER_SHAPE
    if any(layer.generation_id == loop.id for layer in jam.layers):
        return LayerOutcome.ALREADY_IN
    outcome = LayerOutcome.ADDED
    if replacing is not None:
        if not 1 <= replacing <= len(jam.layers):
            return LayerOutcome.NO_SUCH_LAYER
        jam.layers.pop(replacing - 1)
        outcome = LayerOutcome.REPLACED
    elif len(jam.layers) >= MAX_LAYERS:
        return LayerOutcome.FULL
    jam.layers.append(JamLayer(generation=loop, added_by=added_by, added_at=utcnow()))
    jam.last_active_at = utcnow()
    session.flush()
    return outcome


def remove_layer(session: Session, jam: JamSession, number: int) -> JamLayer | None:
    """Take layer `number` (1-based) out of the jam; None when there is no such layer."""
    if not 1 <= number <= len(jam.layers):
        return None
    layer = jam.layers.pop(number - 1)
    jam.last_active_at = utcnow()
    session.flush()
    return layer


def touch_jam(jam: JamSession) -> None:
    """The jam was used (mixed): its idle time starts again."""
    jam.last_active_at = utcnow()


def end_jam(session: Session, jam: JamSession, reason: str) -> None:
    """End the jam ("stopped" or "idle"); its layers and loops stay in the history."""
    jam.ended_at = utcnow()
    jam.end_reason = reason
    session.flush()


def idle_jams(session: Session, idle_since: datetime) -> list[JamSession]:
    """Running jams untouched since `idle_since`, oldest first."""
    query = (select(JamSession).where(JamSession.ended_at.is_(None), JamSession.last_active_at < idle_since)
             .order_by(JamSession.last_active_at))
    return list(session.scalars(query))


def set_jam_card(session: Session, jam_id: int, message_id: int) -> None:
    """Remember the jam's card (the message the bot edits as layers come and go)."""
    jam = session.get(JamSession, jam_id)
    if jam is not None:
        jam.card_message_id = message_id


def latest_mix(session: Session, jam_id: int) -> Generation | None:
    """The jam's newest mix that was posted (the card links to it)."""
    query = (select(Generation)
             .where(Generation.jam_id == jam_id, Generation.kind == GenerationKind.MIX, Generation.posted_message_id.is_not(None))
             .order_by(Generation.id.desc()).limit(1))
    return session.scalar(query)
