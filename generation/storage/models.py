"""The tables: every generation, per-guild settings, pending result deliveries, and replies to resume.

Interaction tokens are short-lived secrets (Discord accepts one for 15 minutes). The only table that
holds any is `interaction_replies`, and only while the bot restarts gracefully: see `InteractionReply`.
A result that outlives its interaction is delivered later through the channel, from `deliveries`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, composite, mapped_column, relationship

from ..shape import LoopShape

SHORT_ID_LENGTH = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the zone (timestamptz); SQLite keeps none, so values are stored in UTC and
    read back with UTC attached. Naive datetimes are refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware one (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class GenerationKind(str, enum.Enum):
    LOOP = "loop"
    VARIATION = "variation"
    REROLL = "reroll"
    DOUBLE = "double"
    LOOPIFY = "loopify"
    REPLAY = "replay"
    MIX = "mix"


class GenerationStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _string_enum(enum_class: type[enum.Enum], name: str) -> Enum:
    """A VARCHAR with a CHECK constraint storing the enum's values: portable, no PostgreSQL type to migrate."""
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    # Deterministic constraint names, so later migrations can alter them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), list[int]: JSON, list[str]: JSON}


class Generation(Base):
    """One loop (or one failed attempt at one): what was asked, how it was made, what came out."""

    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_user_id_created_at", "user_id", "created_at"),
        Index("ix_generations_guild_id_created_at", "guild_id", "created_at"),
        Index("ix_generations_status_created_at", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    short_id: Mapped[str] = mapped_column(String(SHORT_ID_LENGTH), unique=True, index=True)
    """The public id users type in `/replay id`."""
    request_group: Mapped[str] = mapped_column(String(SHORT_ID_LENGTH), index=True)
    """Shared by the rows of one request (variations=N gives N rows): the first row's short id."""
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    """The generation a variation, re-roll, double or replay was made from."""
    kind: Mapped[GenerationKind] = mapped_column(_string_enum(GenerationKind, "generation_kind"))
    status: Mapped[GenerationStatus] = mapped_column(
        _string_enum(GenerationStatus, "generation_status"), default=GenerationStatus.QUEUED
    )

    # Who asked, and where; guild and channel are empty for the CLI.
    user_id: Mapped[int] = mapped_column(BigInteger)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)

    prompt: Mapped[str] = mapped_column(Text)
    """As the user typed it."""
    prompt_sent: Mapped[str] = mapped_column(Text)
    """As the model was conditioned on it (tempo and meter appended)."""
    bpm: Mapped[float] = mapped_column(Float)
    bars: Mapped[int] = mapped_column(Integer)
    beats_per_bar: Mapped[int] = mapped_column(Integer)
    shape: Mapped[LoopShape] = composite("bpm", "bars", "beats_per_bar")
    """The three columns above as one value."""
    temperature: Mapped[float] = mapped_column(Float)
    top_k: Mapped[int] = mapped_column(Integer)
    top_p: Mapped[float] = mapped_column(Float)
    cfg_coef: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(200))
    audio_format: Mapped[str] = mapped_column(String(8), default="wav", server_default="wav")
    """The format the loop is written in (`jobs.api.AUDIO_FORMATS`)."""
    exact_seed: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Generate only `seed` (one candidate, no retries), as `/replay` asks."""
    source_path: Mapped[str | None] = mapped_column(Text)
    """A loopify's uploaded file, looped as it is with no model; None for every other kind."""
    jam_id: Mapped[int | None] = mapped_column(ForeignKey("jam_sessions.id", ondelete="SET NULL"), index=True)
    """The jam session the loop (or mix) was made in; None outside any."""
    mix_loop_ids: Mapped[list[str] | None]
    """A mix's layers (their short ids, in order) as they were when it was asked for; None for loops."""

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """How many times a worker started this job."""
    worker: Mapped[str | None] = mapped_column(String(200))

    # The loop report of the finished loop.
    source_bpm: Mapped[float | None] = mapped_column(Float)
    stretch_ratio: Mapped[float | None] = mapped_column(Float)
    source_start_seconds: Mapped[float | None] = mapped_column(Float)
    downbeat_confidence: Mapped[float | None] = mapped_column(Float)
    seam_score: Mapped[float | None] = mapped_column(Float)
    tempo_stability: Mapped[float | None] = mapped_column(Float)
    grid_error_ms: Mapped[float | None] = mapped_column(Float)
    """Median deviation (ms) of the loop's onsets from its beat grid, measured on the loop; None before 0007."""
    loudness_lufs: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(32))
    verdict_reason: Mapped[str | None] = mapped_column(Text)
    source_key: Mapped[str | None] = mapped_column(String(16))
    """The key detected in the loop before any shift, e.g. "F# minor"."""
    key_confidence: Mapped[float | None] = mapped_column(Float)
    target_key: Mapped[str | None] = mapped_column(String(16))
    key_shift_semitones: Mapped[int | None] = mapped_column(Integer)

    error: Mapped[str | None] = mapped_column(Text)
    """Why it failed, in words shown to the user."""
    audio_path: Mapped[str | None] = mapped_column(Text)
    """Relative to the data directory; cleared by the retention sweep, after which /replay regenerates."""
    posted_message_id: Mapped[int | None] = mapped_column(BigInteger)
    posted_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    delivery_error: Mapped[str | None] = mapped_column(Text)
    """Why its outcome never reached Discord, once its delivery was given up; None otherwise."""

    parent: Mapped[Generation | None] = relationship(remote_side=[id])

    def __repr__(self) -> str:
        return f"<Generation {self.short_id} {self.kind.value} {self.status.value}>"


class GuildSettings(Base):
    """A guild's overrides of the global limits; an empty value means "use the global setting"."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    rate_limit_jobs: Mapped[int | None] = mapped_column(Integer)
    rate_limit_window_s: Mapped[float | None] = mapped_column(Float)
    max_queued_per_user: Mapped[int | None] = mapped_column(Integer)
    exempt_role_ids: Mapped[list[int]] = mapped_column(default=list)
    allowed_channel_ids: Mapped[list[int]] = mapped_column(default=list)
    """Empty: every channel."""
    default_model: Mapped[str | None] = mapped_column(String(200))
    max_bars: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Delivery(Base):
    """A finished (done or failed) generation whose result has to reach Discord: the outbox.

    Written in the same transaction as the result, so a bot that was down when a worker finished
    posts it when it is back. A refused post is tried again at `next_attempt_at` (backing off)
    until it is posted (`delivered_at`) or given up (`given_up_at`).
    """

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    given_up_at: Mapped[datetime | None]

    generation: Mapped[Generation] = relationship(lazy="joined")


class InteractionReply(Base):
    """The reply to a request that was waiting or running when the bot stopped gracefully.

    The restarted bot takes these rows back (and deletes them at once) to go on editing the
    original "Queued" / "Generating" reply and to post the result into it, as without a restart.
    Only the minimum is kept: the application id and the interaction token (the two halves of the
    webhook that edits the reply) and when the interaction was made. The token is a secret:
    rows are written only at a graceful stop, deleted when the bot starts again or once older
    than Discord's 15 minutes, never logged, and left out of `repr`.
    """

    __tablename__ = "interaction_replies"

    job_id: Mapped[str] = mapped_column(
        String(SHORT_ID_LENGTH), ForeignKey("generations.short_id", ondelete="CASCADE"), primary_key=True
    )
    """The request's short id (its first row's)."""
    application_id: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    """When Discord created the interaction: its token expires 15 minutes later."""

    def __repr__(self) -> str:
        return f"<InteractionReply {self.job_id}>"


class JamSession(Base):
    """A channel's jam: one tempo, bar length, meter and key that its loops share, and its layers.

    At most one runs per channel (`ended_at` is None); an ended one stays for the history.
    """

    __tablename__ = "jam_sessions"
    __table_args__ = (
        Index("ix_jam_sessions_running_channel", "channel_id", unique=True,
              sqlite_where=text("ended_at IS NULL"), postgresql_where=text("ended_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    started_by: Mapped[int] = mapped_column(BigInteger)
    bpm: Mapped[float] = mapped_column(Float)
    bars: Mapped[int] = mapped_column(Integer)
    beats_per_bar: Mapped[int] = mapped_column(Integer)
    shape: Mapped[LoopShape] = composite("bpm", "bars", "beats_per_bar")
    key: Mapped[str | None] = mapped_column(String(16))
    """The key every layer is moved to, e.g. "A minor"; None: layers keep their own."""
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_active_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When it was started, or a layer added, removed or mixed: idle sessions end after `[jam] idle_hours`."""
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(16))
    """"stopped" or "idle"."""
    card_message_id: Mapped[int | None] = mapped_column(BigInteger)
    """The session card the bot posted in the channel, which it edits as layers come and go."""

    layers: Mapped[list[JamLayer]] = relationship(
        back_populates="jam", order_by="JamLayer.id", cascade="all, delete-orphan", lazy="selectin"
    )

    def __repr__(self) -> str:
        return f"<JamSession {self.id} channel={self.channel_id}>"


class JamLayer(Base):
    """One loop of a jam, in the order they were added (layer 1 is the first)."""

    __tablename__ = "jam_layers"
    __table_args__ = (UniqueConstraint("jam_id", "generation_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    jam_id: Mapped[int] = mapped_column(ForeignKey("jam_sessions.id", ondelete="CASCADE"), index=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    added_by: Mapped[int] = mapped_column(BigInteger)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)

    jam: Mapped[JamSession] = relationship(back_populates="layers")
    generation: Mapped[Generation] = relationship(lazy="joined")
