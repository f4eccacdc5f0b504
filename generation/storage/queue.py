"""The queries of the job queue: what admission counts, what recovery and dispatch read and claim.

Every function takes the `Session` of the caller's unit of work (`Database.session()`), like
those of `repository`; the queue service (`generation.jobs`) reaches the database only through
these and `repository`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, distinct, func, select
from sqlalchemy.orm import Session

from .models import Generation, GenerationStatus, GuildSettings
from .repository import get_generation, list_request_group, mark_failed, mark_running


def guild_settings_of(session: Session, guild_ids: Collection[int]) -> dict[int, GuildSettings]:
    """The settings rows of those of `guild_ids` that have one, by guild id."""
    if not guild_ids:
        return {}
    query = select(GuildSettings).where(GuildSettings.guild_id.in_(guild_ids))
    return {guild.guild_id: guild for guild in session.scalars(query)}


def count_waiting_requests(session: Session) -> int:
    """How many requests wait in the queue (a request of N variations counts once)."""
    query = select(func.count(distinct(Generation.request_group))).where(Generation.status == GenerationStatus.QUEUED)
    return session.scalar(query) or 0


def queued_requests_by_user(session: Session, user_ids: Collection[int]) -> Counter[int]:
    """How many requests each of `user_ids` has waiting in the queue."""
    if not user_ids:
        return Counter()
    query = (
        select(Generation.user_id, func.count(distinct(Generation.request_group)))
        .where(Generation.user_id.in_(user_ids), Generation.status == GenerationStatus.QUEUED)
        .group_by(Generation.user_id)
    )
    return Counter(dict(session.execute(query).all()))


def request_times_by_user(session: Session, user_ids: Collection[int], since: datetime) -> dict[int, list[datetime]]:
    """When each of `user_ids` made the requests since `since`, oldest first."""
    recent: dict[int, list[datetime]] = {user_id: [] for user_id in user_ids}
    if not user_ids:
        return recent
    made_at = func.min(Generation.created_at)
    query = (
        select(Generation.user_id, made_at)
        .where(Generation.user_id.in_(user_ids), Generation.created_at > since)
        .group_by(Generation.user_id, Generation.request_group)
        .order_by(made_at)
    )
    for user_id, when in session.execute(query):
        recent[user_id].append(when)
    return recent


def _rows(session: Session, *conditions: ColumnElement[bool]) -> list[Generation]:
    return list(session.scalars(select(Generation).where(*conditions).order_by(Generation.id)))


def queued_rows(session: Session) -> list[Generation]:
    """Every row waiting in the queue, in the order they were accepted."""
    return _rows(session, Generation.status == GenerationStatus.QUEUED)


def running_rows_of(session: Session, workers: Collection[str]) -> list[Generation]:
    """The rows running on `workers` (batches that outlived a restart), in the order they were accepted."""
    if not workers:
        return []
    return _rows(session, Generation.status == GenerationStatus.RUNNING, Generation.worker.in_(workers))


def claim_loops(session: Session, loop_ids: Sequence[str], worker: str) -> bool:
    """Mark every row of a job running on `worker`; False when they are no longer queued (cancelled)."""
    claimed = [mark_running(session, loop_id, worker) for loop_id in loop_ids]  # every row, not up to the first refusal
    return all(claimed)


def fail_request(session: Session, request_group: str, reason: str) -> bool:
    """Fail every row of a request that is still queued or running; False when none was."""
    failed = [mark_failed(session, row.short_id, reason) for row in list_request_group(session, request_group)]  # every row
    return any(failed)


def failed_requests(session: Session, short_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(request id, reason) of the requests among failed rows: a request's other rows are not requests of their own."""
    rows = [get_generation(session, short_id) for short_id in short_ids]
    return [(row.short_id, row.error or "") for row in rows if row is not None and row.short_id == row.request_group]
