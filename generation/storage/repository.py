"""What the bot and the queue do with the history, one typed function per operation.

Every function takes the `Session` of the caller's unit of work (`Database.session()`) and
leaves committing to it. Status changes are conditional UPDATEs, so two workers or a worker
and a cancel racing on the same job cannot both win: the loser gets `False`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypedDict, Unpack

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..shape import LoopShape
from .models import (
    SHORT_ID_LENGTH,
    Delivery,
    Generation,
    GenerationKind,
    GenerationStatus,
    GuildSettings,
    utcnow,
)

DEFAULT_HISTORY_LIMIT = 20
MAX_DELIVERY_ATTEMPTS = 10
"""With the default 30 s doubling up to an hour: about four hours of trying before giving up."""
MAX_DELIVERY_DELAY_S = 3600.0
BPM_TOLERANCE = 0.005
"""Tempos this close are the same (BPM is kept to two decimals)."""


@dataclass(frozen=True)
class NewGeneration:
    """A generation as requested, before any worker touched it."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    prompt: str
    prompt_sent: str
    shape: LoopShape
    temperature: float
    top_k: int
    top_p: float
    cfg_coef: float
    seed: int
    model: str
    kind: GenerationKind = GenerationKind.LOOP
    parent_id: int | None = None
    audio_format: str = "wav"
    exact_seed: bool = False
    source_path: str | None = None
    jam_id: int | None = None
    target_key: str | None = None
    """The key the loop is to be moved to (a jam's), e.g. "A minor"."""
    mix_loop_ids: list[str] | None = None
    """A mix's layers, by short id; None for a loop."""


@dataclass(frozen=True)
class LoopReportFields:
    """The loop report as stored with a finished generation."""

    source_bpm: float | None = None
    stretch_ratio: float | None = None
    source_start_seconds: float | None = None
    downbeat_confidence: float | None = None
    seam_score: float | None = None
    tempo_stability: float | None = None
    grid_error_ms: float | None = None
    """Median deviation of the loop's onsets from its beat grid, measured on the loop itself."""
    loudness_lufs: float | None = None
    verdict: str | None = None
    verdict_reason: str | None = None
    source_key: str | None = None
    key_confidence: float | None = None
    target_key: str | None = None
    key_shift_semitones: int | None = None


class GuildSettingsChanges(TypedDict, total=False):
    """The guild settings to change; a key left out keeps its value, `None` means the global setting."""

    rate_limit_jobs: int | None
    rate_limit_window_s: float | None
    max_queued_per_user: int | None
    exempt_role_ids: list[int]
    allowed_channel_ids: list[int]
    default_model: str | None
    max_bars: int | None


# --- generations -------------------------------------------------------------------------------


def new_short_id() -> str:
    """8 URL-safe characters (48 random bits): short enough to type, too many to guess."""
    return secrets.token_urlsafe(SHORT_ID_LENGTH * 3 // 4)


def _unused_short_ids(session: Session, count: int) -> list[str]:
    """`count` fresh short ids, in the order drawn; the unique index stays the last word on a race."""
    chosen: list[str] = []
    while len(chosen) < count:
        drawn = [short_id for short_id in dict.fromkeys(new_short_id() for _ in range(count - len(chosen)))
                 if short_id not in chosen]
        taken = set(session.scalars(select(Generation.short_id).where(Generation.short_id.in_(drawn))))
        chosen += [short_id for short_id in drawn if short_id not in taken]
    return chosen


def create_request_groups(session: Session, requests: Sequence[Sequence[NewGeneration]]) -> list[list[Generation]]:
    """Queue the rows of several requests (variations=N: N rows each) with one flush.

    A request's rows share a `request_group`: its first row's short id, unique because short ids are.
    """
    if any(not rows for rows in requests):
        raise ValueError("no generation to create")
    short_ids = iter(_unused_short_ids(session, sum(len(rows) for rows in requests)))
    now = utcnow()
    groups: list[list[Generation]] = []
    for rows in requests:
        ids = [next(short_ids) for _ in rows]
        groups.append([
            # Field by field, not `asdict`: the shape stays a LoopShape for the row's composite.
            Generation(**{field.name: getattr(row, field.name) for field in fields(row)}, short_id=short_id,
                       request_group=ids[0], created_at=now, status=GenerationStatus.QUEUED, attempts=0)
            for row, short_id in zip(rows, ids)
        ])
    session.add_all([row for group in groups for row in group])
    session.flush()
    return groups


def create_generations(session: Session, requests: Sequence[NewGeneration]) -> list[Generation]:
    """Queue the rows of one request (variations=N: N rows)."""
    return create_request_groups(session, [requests])[0]


def create_generation(session: Session, request: NewGeneration) -> Generation:
    """Queue a single generation (a request group of one)."""
    return create_generations(session, [request])[0]


def get_generation(session: Session, short_id: str) -> Generation | None:
    """The generation `short_id`, wherever it was made: for the queue's own ids, never for an id a user gave."""
    return session.scalar(select(Generation).where(Generation.short_id == short_id))


def get_guild_generation(session: Session, short_id: str, guild_id: int | None) -> Generation | None:
    """The generation `short_id` as named in the server `guild_id`; None when unknown or made elsewhere.

    Ids users give (commands, buttons) resolve only where their loop was made, so another
    server's loop reads exactly like an unknown id. `guild_id` None names the loops made
    outside any server (by the CLI).
    """
    return session.scalar(select(Generation).where(Generation.short_id == short_id, Generation.guild_id == guild_id))


def list_request_group(session: Session, request_group: str) -> list[Generation]:
    """The rows of one request, in the order they were asked for."""
    query = select(Generation).where(Generation.request_group == request_group).order_by(Generation.id)
    return list(session.scalars(query))


def _transition(
    session: Session, short_id: str, allowed_from: Sequence[GenerationStatus], **values: Any
) -> int | None:
    """Set `values` when the row is still in one of `allowed_from`; the row's id, or None."""
    statement = (
        update(Generation)
        .where(Generation.short_id == short_id, Generation.status.in_(allowed_from))
        .values(**values)
        .returning(Generation.id)
    )
    return session.execute(statement).scalar_one_or_none()


def mark_running(session: Session, short_id: str, worker: str) -> bool:
    """Claim a queued job for `worker`; False when it is no longer queued (taken or cancelled)."""
    claimed = _transition(
        session, short_id, [GenerationStatus.QUEUED],
        status=GenerationStatus.RUNNING, started_at=utcnow(), worker=worker, attempts=Generation.attempts + 1,
    )
    return claimed is not None


def mark_done(
    session: Session, short_id: str, *, audio_path: str, report: LoopReportFields, seed: int | None = None
) -> bool:
    """Store the result of a running job and queue its delivery; False when it was not running.

    `seed` is the seed of the candidate delivered, when best-of-N chose another than the row's:
    stored, so that `/replay` reproduces the loop users heard.
    """
    delivered = {} if seed is None else {"seed": seed}
    reported = asdict(report)
    if reported["target_key"] is None:
        del reported["target_key"]  # the key asked for, stored with the request, stays
    generation_id = _transition(
        session, short_id, [GenerationStatus.RUNNING],
        status=GenerationStatus.DONE, finished_at=utcnow(), audio_path=audio_path, error=None, **reported, **delivered,
    )
    return _queue_delivery(session, generation_id)


def mark_failed(session: Session, short_id: str, error: str) -> bool:
    """Fail a queued or running job with a reason a user can read, and queue its delivery."""
    generation_id = _transition(
        session, short_id, [GenerationStatus.QUEUED, GenerationStatus.RUNNING],
        status=GenerationStatus.FAILED, finished_at=utcnow(), error=error,
    )
    return _queue_delivery(session, generation_id)


def mark_cancelled(session: Session, short_id: str) -> bool:
    """Cancel a queued or running job; a worker finishing it later gets False from `mark_done`.

    Whether the caller may cancel it (its owner only) is the queue service's decision.
    """
    cancelled = _transition(
        session, short_id, [GenerationStatus.QUEUED, GenerationStatus.RUNNING],
        status=GenerationStatus.CANCELLED, finished_at=utcnow(),
    )
    return cancelled is not None


def _queue_delivery(session: Session, generation_id: int | None) -> bool:
    if generation_id is None:
        return False
    session.add(Delivery(generation_id=generation_id, attempts=0))
    session.flush()
    return True


def _contains(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with LIKE's wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_history(
    session: Session,
    *,
    user_id: int | None = None,
    guild_id: int | None = None,
    search: str | None = None,
    jam_id: int | None = None,
    bpm: float | None = None,
    key: str | None = None,
    limit: int = DEFAULT_HISTORY_LIMIT,
    offset: int = 0,
) -> list[Generation]:
    """Generations, newest first, filtered by user, guild, a case-insensitive prompt search, the jam they
    were made in, their tempo, and the key they came out in (the key moved to, or else the key found).

    The search is ILIKE on PostgreSQL and lower() LIKE lower() on SQLite, where only ASCII
    letters fold case.
    """
    if limit < 1 or offset < 0:
        raise ValueError("limit must be at least 1 and offset at least 0")
    conditions: list[ColumnElement[bool]] = []
    if user_id is not None:
        conditions.append(Generation.user_id == user_id)
    if guild_id is not None:
        conditions.append(Generation.guild_id == guild_id)
    if search:
        conditions.append(Generation.prompt.ilike(_contains(search), escape="\\"))
    if jam_id is not None:
        conditions.append(Generation.jam_id == jam_id)
    if bpm is not None:
        conditions.append(Generation.bpm.between(bpm - BPM_TOLERANCE, bpm + BPM_TOLERANCE))
    if key is not None:
        conditions.append(or_(Generation.target_key == key, and_(Generation.target_key.is_(None), Generation.source_key == key)))
    query = (
        select(Generation)
        .where(*conditions)
        .order_by(Generation.created_at.desc(), Generation.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(query))


def count_queued(session: Session, user_id: int, *, include_running: bool = False) -> int:
    """How many of the user's jobs wait in the queue (and, with `include_running`, run)."""
    statuses = [GenerationStatus.QUEUED, GenerationStatus.RUNNING] if include_running else [GenerationStatus.QUEUED]
    query = select(func.count()).where(Generation.user_id == user_id, Generation.status.in_(statuses))
    return session.scalar(query) or 0


# --- guild settings ----------------------------------------------------------------------------


def get_guild_settings(session: Session, guild_id: int) -> GuildSettings | None:
    return session.get(GuildSettings, guild_id)


def upsert_guild_settings(session: Session, guild_id: int, **changes: Unpack[GuildSettingsChanges]) -> GuildSettings:
    """Change some of a guild's settings, creating its row on first use.

    One INSERT ... ON CONFLICT DO UPDATE, so two admins saving at once cannot collide.
    """
    unknown = set(changes) - set(GuildSettingsChanges.__annotations__)
    if unknown:
        raise ValueError(f"unknown guild settings: {', '.join(sorted(unknown))}")
    dialect = session.get_bind().dialect.name
    values: dict[str, Any] = {**changes, "updated_at": utcnow()}
    insert = postgresql.insert(GuildSettings) if dialect == "postgresql" else sqlite.insert(GuildSettings)
    statement = insert.values(guild_id=guild_id, **values)
    session.execute(statement.on_conflict_do_update(index_elements=[GuildSettings.guild_id], set_=values))
    return session.get_one(GuildSettings, guild_id, populate_existing=True)


# --- deliveries --------------------------------------------------------------------------------


def due_deliveries(session: Session, *, now: datetime | None = None, limit: int = 50) -> list[Delivery]:
    """Results to post now, with their generation loaded: not posted, not given up, their backoff over.

    Never-tried ones come first (oldest first among them), then retries by how often they failed:
    however many old ones keep failing, a new result is always in the first `limit`.
    """
    query = (
        select(Delivery)
        .where(Delivery.delivered_at.is_(None), Delivery.given_up_at.is_(None), Delivery.next_attempt_at <= (now or utcnow()))
        .order_by(Delivery.attempts, Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def mark_delivered(
    session: Session, delivery_id: int, *, message_id: int | None = None, channel_id: int | None = None
) -> None:
    """Record that a result reached Discord, and where it was posted."""
    delivery = session.get_one(Delivery, delivery_id)
    delivery.delivered_at = utcnow()
    delivery.attempts += 1
    if message_id is not None:
        delivery.generation.posted_message_id = message_id
        delivery.generation.posted_channel_id = channel_id


def _undelivered_of(request_group: str) -> Select[int]:
    """The ids of the deliveries of one request that are neither posted nor given up."""
    return (
        select(Delivery.id)
        .join(Generation, Delivery.generation_id == Generation.id)
        .where(Generation.request_group == request_group, Delivery.delivered_at.is_(None), Delivery.given_up_at.is_(None))
    )


def mark_request_delivered(
    session: Session, request_group: str, *, message_id: int | None = None, channel_id: int | None = None
) -> int:
    """Record that every pending result of one request (its variations) was posted; returns how many."""
    delivery_ids = list(session.scalars(_undelivered_of(request_group)))
    for delivery_id in delivery_ids:
        mark_delivered(session, delivery_id, message_id=message_id, channel_id=channel_id)
    return len(delivery_ids)


def has_pending_delivery(session: Session, request_group: str) -> bool:
    """Whether some result of this request still waits to be posted."""
    return session.scalar(_undelivered_of(request_group).limit(1)) is not None


def retry_delay_s(attempts: int, first_delay_s: float) -> float:
    """The pause after the `attempts`-th failed post: `first_delay_s`, doubling, at most an hour."""
    return min(first_delay_s * 2 ** max(0, attempts - 1), MAX_DELIVERY_DELAY_S)


def record_delivery_failure(
    session: Session, delivery_id: int, error: str, *, first_delay_s: float = 30.0, permanent: bool = False
) -> bool:
    """Count a failed post and schedule the next try; True when the delivery is given up.

    It is given up at once when `permanent` (the channel is gone, access was taken away), else
    after `MAX_DELIVERY_ATTEMPTS`; its generation then says why in `delivery_error`.
    """
    delivery = session.get_one(Delivery, delivery_id)
    now = utcnow()
    delivery.attempts += 1
    delivery.last_error = error
    if permanent or delivery.attempts >= MAX_DELIVERY_ATTEMPTS:
        delivery.given_up_at = now
        delivery.generation.delivery_error = error
        return True
    delivery.next_attempt_at = now + timedelta(seconds=retry_delay_s(delivery.attempts, first_delay_s))
    return False


@dataclass(frozen=True)
class DeliveryFailure:
    """What became of a request's refused post: how often it failed, and when it is tried again."""

    attempts: int
    given_up: bool
    retry_in_s: float | None


def record_request_delivery_failure(
    session: Session, request_group: str, error: str, *, first_delay_s: float = 30.0, permanent: bool = False
) -> DeliveryFailure | None:
    """`record_delivery_failure` for every pending result of one request; None when none was pending."""
    deliveries = [session.get_one(Delivery, delivery_id) for delivery_id in session.scalars(_undelivered_of(request_group))]
    if not deliveries:
        return None
    given_up = [record_delivery_failure(session, d.id, error, first_delay_s=first_delay_s, permanent=permanent)
                for d in deliveries]
    attempts = max(d.attempts for d in deliveries)
    return DeliveryFailure(attempts, all(given_up), None if all(given_up) else retry_delay_s(attempts, first_delay_s))
