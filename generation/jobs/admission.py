"""Deciding whether a request joins the queue, and writing it there.

Requests that arrive together are decided together, in arrival order: one read of what the
limits count (`AdmissionLedger`), then one insert for all that were let in. Embedded, that is
one transaction (`admit_group`). Distributed, the per-user rate limit is shared by every bot
process through Redis, and taken last, once every other check passed, so a refused request is
never counted: checks (`check_requests`, the ledger), then `take_shared_rate_limit`, then the
insert (`insert_admitted`). The service decides one group at a time, so two requests arriving
together cannot both take the last place.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, distinct, func, select
from sqlalchemy.orm import Session

from ..audio_io import audio_duration
from ..config import Settings
from ..prompts import InvalidRequest, build_prompt, validate_request
from ..storage import (
    Generation,
    GenerationKind,
    GenerationStatus,
    GuildSettings,
    NewGeneration,
    create_request_groups,
    get_generation,
    utcnow,
)
from .api import AUDIO_FORMATS, MAX_VARIATIONS, JobRequest, RefusalKind, Refused

if TYPE_CHECKING:
    from .distributed.ratelimit import RedisRateLimiter

MAX_SOURCE_SECONDS = 600.0
"""The longest file `/loopify` takes."""
VARIATION_SEED_STRIDE = 1000
"""Variation k of a request gets seed + k x this: far apart enough that no two share a candidate seed."""
UNREADABLE_SOURCE = "I can't read that file as audio. Upload WAV, FLAC, OGG or MP3."


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one request, after the guild's overrides."""

    rate_limit_jobs: int
    rate_limit_window_s: float
    max_queued_per_user: int
    exempt: bool

    @classmethod
    def resolve(cls, settings: Settings, guild: GuildSettings | None, role_ids: frozenset[int]) -> Limits:
        queue = settings.queue
        if guild is None:
            return cls(queue.rate_limit_jobs, queue.rate_limit_window_s, queue.max_queued_per_user, False)
        return cls(
            rate_limit_jobs=int(_or(guild.rate_limit_jobs, queue.rate_limit_jobs)),
            rate_limit_window_s=_or(guild.rate_limit_window_s, queue.rate_limit_window_s),
            max_queued_per_user=int(_or(guild.max_queued_per_user, queue.max_queued_per_user)),
            exempt=bool(role_ids & set(guild.exempt_role_ids or ())),
        )


def _or(override: float | None, default: float) -> float:
    return default if override is None else override


def new_seed() -> int:
    """Same range as `engine.new_seed` (signed 63-bit), without importing the engine (torch)."""
    return secrets.randbits(62)


def wait_text(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{math.ceil(seconds)} seconds" if seconds < 60 else f"{minutes} minute{'s' if minutes > 1 else ''}"


def resolved_kind(request: JobRequest) -> GenerationKind:
    """A request with a source file is a loopify, whatever kind it names."""
    return GenerationKind.LOOPIFY if request.source_audio is not None else request.kind


def check_source(path: str) -> None:
    """Raise `InvalidRequest` unless `path` is audio soundfile reads, at most `MAX_SOURCE_SECONDS` long."""
    try:
        seconds = audio_duration(Path(path))
    except Exception:  # soundfile raises its own errors, RuntimeError and OSError for unreadable files
        raise InvalidRequest(UNREADABLE_SOURCE) from None
    if seconds <= 0:
        raise InvalidRequest(UNREADABLE_SOURCE)
    if seconds > MAX_SOURCE_SECONDS:
        raise InvalidRequest(f"That file is {seconds / 60:.1f} minutes long; the limit is {MAX_SOURCE_SECONDS / 60:g} minutes.")


def check_parent(request: JobRequest, parent: Generation | None) -> None:
    """Raise `InvalidRequest` when the parent named is missing, or cannot be continued for a variation."""
    if request.parent_id is not None and parent is None:
        raise InvalidRequest(f"There is no loop with the id {request.parent_id[:40]!r}.")
    if resolved_kind(request) is not GenerationKind.VARIATION:
        return
    if parent is None:
        raise InvalidRequest("A variation needs the id of the loop to vary.")
    if parent.status is not GenerationStatus.DONE:
        raise InvalidRequest("That loop isn't finished, so there is nothing to vary yet.")


def check_options(request: JobRequest) -> None:
    """Raise `InvalidRequest` for a variation count, format or source file the queue does not take."""
    if not 1 <= request.variations <= MAX_VARIATIONS:
        raise InvalidRequest(f"Variations must be between 1 and {MAX_VARIATIONS}, not {request.variations}.")
    if request.audio_format not in AUDIO_FORMATS:
        raise InvalidRequest(f"The format must be one of {', '.join(AUDIO_FORMATS)}, not {request.audio_format[:20]!r}.")
    if request.kind is GenerationKind.LOOPIFY and request.source_audio is None:
        raise InvalidRequest("A loopify needs an uploaded audio file.")
    if request.source_audio is not None:
        if request.variations != 1:
            raise InvalidRequest("An uploaded file makes one loop; ask for 1 variation.")
        check_source(request.source_audio)


def variation_seeds(request: JobRequest) -> list[int]:
    """One seed per loop of the request; 0 for a loopify, which uses none."""
    if request.source_audio is not None:
        return [0]
    first = new_seed() if request.seed is None else request.seed
    return [first + k * VARIATION_SEED_STRIDE for k in range(request.variations)]


def check_request(
    settings: Settings, request: JobRequest, guild: GuildSettings | None, parent: Generation | None = None
) -> list[NewGeneration] | Refused:
    """The request as rows to insert (one per variation), or an INVALID refusal saying what to change.

    A variation takes its parent's BPM, bars and meter: it is cut on the parent's grid. The rows
    keep every option of the job (format, exact seed, a loopify's source file), so a restart
    rebuilds it as it was asked for.
    """
    if resolved_kind(request) is GenerationKind.VARIATION and parent is not None:
        request = replace(request, bpm=parent.bpm, bars=parent.bars, beats_per_bar=parent.beats_per_bar)
    model = request.model or (guild.default_model if guild and guild.default_model else settings.model.name)
    try:
        prompt = validate_request(request.prompt, request.bpm, request.bars, request.beats_per_bar)
        check_options(request)
        check_parent(request, parent)
        if model not in settings.model.allowed and model != settings.model.name:
            raise InvalidRequest(f"The model {model!r} is not available here.")
        if guild is not None and guild.allowed_channel_ids and request.channel_id not in guild.allowed_channel_ids:
            channels = ", ".join(f"<#{channel}>" for channel in guild.allowed_channel_ids)
            raise InvalidRequest(f"Loops are made in {channels} on this server.")
        if guild is not None and guild.max_bars is not None and request.bars > guild.max_bars:
            raise InvalidRequest(f"This server allows loops of at most {guild.max_bars} bars.")
    except InvalidRequest as error:
        return Refused(RefusalKind.INVALID, str(error))
    generation = settings.generation
    return [
        NewGeneration(
            user_id=request.user_id, guild_id=request.guild_id, channel_id=request.channel_id,
            prompt=prompt,
            prompt_sent=build_prompt(prompt, request.bpm, request.beats_per_bar).text,
            bpm=request.bpm, bars=request.bars, beats_per_bar=request.beats_per_bar,
            temperature=_or(request.temperature, generation.temperature),
            top_k=int(_or(request.top_k, generation.top_k)),
            top_p=_or(request.top_p, generation.top_p),
            cfg_coef=_or(request.cfg_coef, generation.cfg_coef),
            seed=seed,
            model=model,
            kind=resolved_kind(request),
            parent_id=None if parent is None else parent.id,
            audio_format=request.audio_format,
            exact_seed=request.exact_seed,
            source_path=request.source_audio,
        )
        for seed in variation_seeds(request)
    ]


def count_requests(session: Session, *conditions: ColumnElement[bool]) -> int:
    """How many requests (request groups: variations=N counts once) have rows matching `conditions`."""
    return session.scalar(select(func.count(distinct(Generation.request_group))).where(*conditions)) or 0


def queued_requests_by_user(session: Session, user_ids: Collection[int]) -> Counter[int]:
    """How many requests each of `user_ids` has waiting in the queue."""
    query = (
        select(Generation.user_id, func.count(distinct(Generation.request_group)))
        .where(Generation.user_id.in_(user_ids), Generation.status == GenerationStatus.QUEUED)
        .group_by(Generation.user_id)
    )
    return Counter(dict(session.execute(query).all()))  # a Result has keys(): dict() would take it for a mapping


def recent_requests_by_user(session: Session, user_ids: Collection[int], since: datetime) -> dict[int, list[datetime]]:
    """When each of `user_ids` made the requests since `since`, oldest first."""
    made_at = func.min(Generation.created_at)
    query = (
        select(Generation.user_id, made_at)
        .where(Generation.user_id.in_(user_ids), Generation.created_at > since)
        .group_by(Generation.user_id, Generation.request_group)
        .order_by(made_at)
    )
    recent: dict[int, list[datetime]] = {user_id: [] for user_id in user_ids}
    for user_id, when in session.execute(query):
        recent[user_id].append(when)
    return recent


def rate_limited(limits: Limits, retry_after: float) -> Refused:
    """The refusal of a user who made `limits.rate_limit_jobs` requests in the window."""
    count = limits.rate_limit_jobs
    made = f"You've made {count} loop{'s' if count != 1 else ''} recently"
    return Refused(
        RefusalKind.RATE_LIMITED, f"{made}; you can ask for another in {wait_text(retry_after)}.",
        retry_after=retry_after, without_wait=made,
    )


async def take_shared_rate_limit(limiter: RedisRateLimiter, request: JobRequest, limits: Limits) -> Refused | None:
    """The per-user rate limit shared by every bot process (distributed mode); counts the request when it passes.

    Call it after every other check, right before the insert: a refused request is not counted.
    """
    if limits.exempt:
        return None
    retry_after = await limiter.take(str(request.user_id), limits.rate_limit_jobs, limits.rate_limit_window_s)
    return None if retry_after is None else rate_limited(limits, retry_after)


@dataclass(frozen=True)
class Checked:
    """A valid request: its rows to insert, and the limits that apply to it."""

    request: JobRequest
    rows: list[NewGeneration]
    limits: Limits


@dataclass
class AdmissionLedger:
    """What the limits count, read once for a group of requests decided together, in arrival order.

    `admit` records each request it lets in, so the next one in the group counts it: every
    request gets the answer it would have got alone, with the ones before it already queued.
    """

    now: datetime
    waiting: int
    """Requests in the queue."""
    queued_by_user: Counter[int]
    recent_by_user: dict[int, list[datetime]]
    """When each user's requests in the longest window of the group were made, oldest first."""

    @classmethod
    def read(cls, session: Session, decided: Sequence[Checked | Refused]) -> AdmissionLedger:
        """The counts for the valid requests among `decided` (`check_requests`'s answer)."""
        now = utcnow()
        checked = [item for item in decided if isinstance(item, Checked)]
        user_ids = {item.request.user_id for item in checked}
        longest_window = max((item.limits.rate_limit_window_s for item in checked), default=0.0)
        return cls(
            now=now,
            waiting=count_requests(session, Generation.status == GenerationStatus.QUEUED),
            queued_by_user=queued_requests_by_user(session, user_ids) if user_ids else Counter(),
            recent_by_user=recent_requests_by_user(session, user_ids, now - timedelta(seconds=longest_window)) if user_ids else {},
        )

    def capacity_refusal(self, settings: Settings, item: Checked) -> Refused | None:
        """A refusal when the queue is full or the user has too many jobs waiting; None when there is room."""
        if self.waiting >= settings.queue.max_queue:
            return Refused(RefusalKind.QUEUE_FULL, "The queue is full right now. Please try again in a few minutes.",
                           retry_after=None)
        if item.limits.exempt:
            return None
        queued = self.queued_by_user[item.request.user_id]
        if queued >= item.limits.max_queued_per_user:
            return Refused(
                RefusalKind.TOO_MANY_QUEUED,
                f"You already have {queued} loop{'s' if queued > 1 else ''} waiting; "
                "please wait for one to finish before asking for another.",
            )
        return None

    def rate_refusal(self, item: Checked) -> Refused | None:
        """The per-user rate limit counted in the database (embedded mode: one process admits)."""
        limits = item.limits
        if limits.exempt:
            return None
        window = timedelta(seconds=limits.rate_limit_window_s)
        recent = [when for when in self.recent_by_user[item.request.user_id] if when > self.now - window]
        if len(recent) < limits.rate_limit_jobs:
            return None
        # The oldest of the last N leaves the window first; then one more is allowed.
        blocking = recent[-limits.rate_limit_jobs]
        return rate_limited(limits, max(0.0, (blocking + window - self.now).total_seconds()))

    def admit(self, item: Checked) -> None:
        """Count a request let in: it waits in the queue and is in its user's window."""
        self.waiting += 1
        self.queued_by_user[item.request.user_id] += 1
        self.recent_by_user[item.request.user_id].append(self.now)


def check_requests(session: Session, settings: Settings, requests: Sequence[JobRequest]) -> list[Checked | Refused]:
    """Validate each request against its guild's settings and parent loop (INVALID refusals)."""
    guild_ids = {request.guild_id for request in requests if request.guild_id is not None}
    guilds = {guild.guild_id: guild for guild in session.scalars(select(GuildSettings).where(GuildSettings.guild_id.in_(guild_ids)))}
    checked: list[Checked | Refused] = []
    for request in requests:
        guild = guilds.get(request.guild_id) if request.guild_id is not None else None
        parent = get_generation(session, request.parent_id) if request.parent_id is not None else None
        rows = check_request(settings, request, guild, parent)
        checked.append(rows if isinstance(rows, Refused) else Checked(request, rows, Limits.resolve(settings, guild, request.role_ids)))
    return checked


def admit_group(session: Session, settings: Settings, requests: Sequence[JobRequest]) -> list[list[Generation] | Refused]:
    """Embedded: validate, check every limit (the rate in the database) and queue each request, in arrival order.

    One unit of work for the whole group: the limits see the group's own admissions.
    """
    checked = check_requests(session, settings, requests)
    ledger = AdmissionLedger.read(session, checked)
    decided: list[Checked | Refused] = []
    for item in checked:
        refusal = item if isinstance(item, Refused) else ledger.capacity_refusal(settings, item) or ledger.rate_refusal(item)
        if refusal is None:
            ledger.admit(item)
        decided.append(refusal or item)
    return insert_admitted(session, decided)


def insert_admitted(session: Session, decided: Sequence[Checked | Refused]) -> list[list[Generation] | Refused]:
    """Queue the rows of the requests let in (one flush for all); refusals pass through."""
    admitted = iter(create_request_groups(session, [item.rows for item in decided if isinstance(item, Checked)]))
    return [item if isinstance(item, Refused) else next(admitted) for item in decided]
