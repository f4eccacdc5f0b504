"""Deciding whether a request joins the queue, and writing it there.

The checks read the database (the jobs waiting, the jobs a user made in the window). Embedded,
the insert follows in the same transaction (`admit`). Distributed, the per-user rate limit is
shared by every bot process through Redis, and taken last, once every other check passed, so a
refused request is never counted: checks (`check_admission`), then `take_shared_rate_limit`,
then the insert. The service runs either under one lock, so two requests arriving together
cannot both take the last place.
"""

from __future__ import annotations

import math
import secrets
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
    create_generations,
    get_generation,
    get_guild_settings,
    utcnow,
)
from .api import AUDIO_FORMATS, MAX_VARIATIONS, JobRequest, Refused, RefusalKind

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
            raise InvalidRequest("Loops can't be made in this channel; ask an admin which channels allow them.")
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


def recent_requests(session: Session, user_id: int, since: datetime, limit: int) -> list[datetime]:
    """When the user's last `limit` requests since `since` were made, newest first."""
    made_at = func.min(Generation.created_at)
    query = (
        select(made_at)
        .where(Generation.user_id == user_id, Generation.created_at > since)
        .group_by(Generation.request_group)
        .order_by(made_at.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def check_capacity(session: Session, settings: Settings, request: JobRequest, limits: Limits) -> Refused | None:
    """A refusal when the queue is full or the user has too many jobs waiting; None when there is room."""
    waiting = count_requests(session, Generation.status == GenerationStatus.QUEUED)
    if waiting >= settings.queue.max_queue:
        return Refused(RefusalKind.QUEUE_FULL, "The queue is full right now. Please try again in a few minutes.",
                       retry_after=None)
    if limits.exempt:
        return None
    queued = count_requests(session, Generation.user_id == request.user_id, Generation.status == GenerationStatus.QUEUED)
    if queued >= limits.max_queued_per_user:
        return Refused(
            RefusalKind.TOO_MANY_QUEUED,
            f"You already have {queued} loop{'s' if queued > 1 else ''} waiting; "
            "please wait for one to finish before asking for another.",
        )
    return None


def rate_limited(limits: Limits, retry_after: float) -> Refused:
    """The refusal of a user who made `limits.rate_limit_jobs` requests in the window."""
    return Refused(
        RefusalKind.RATE_LIMITED,
        f"You've made {limits.rate_limit_jobs} loops recently; you can ask for another in {wait_text(retry_after)}.",
        retry_after=retry_after,
    )


def check_rate(session: Session, request: JobRequest, limits: Limits) -> Refused | None:
    """The per-user rate limit counted in the database (embedded mode: one process admits)."""
    if limits.exempt:
        return None
    now = utcnow()
    window = timedelta(seconds=limits.rate_limit_window_s)
    recent = recent_requests(session, request.user_id, now - window, limits.rate_limit_jobs)
    if len(recent) < limits.rate_limit_jobs:
        return None
    # The oldest of the last N leaves the window first; then one more is allowed.
    return rate_limited(limits, max(0.0, (recent[-1] + window - now).total_seconds()))


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
    """A request that passed the checks: its rows to insert, and the limits that applied."""

    rows: list[NewGeneration]
    limits: Limits


def check_admission(
    session: Session, settings: Settings, request: JobRequest, *, rate_in_database: bool
) -> Checked | Refused:
    """Validate the request and check the queue's and the user's limits; the rate limit too when `rate_in_database`.

    Without `rate_in_database` the caller takes the rate limit itself (`take_shared_rate_limit`).
    """
    guild = get_guild_settings(session, request.guild_id) if request.guild_id is not None else None
    parent = get_generation(session, request.parent_id) if request.parent_id is not None else None
    rows = check_request(settings, request, guild, parent)
    if isinstance(rows, Refused):
        return rows
    limits = Limits.resolve(settings, guild, request.role_ids)
    refusal = check_capacity(session, settings, request, limits)
    if refusal is None and rate_in_database:
        refusal = check_rate(session, request, limits)
    return Checked(rows, limits) if refusal is None else refusal


def admit(session: Session, settings: Settings, request: JobRequest) -> list[Generation] | Refused:
    """Validate, check every limit (the rate in the database) and queue the request's rows, in the caller's unit of work."""
    checked = check_admission(session, settings, request, rate_in_database=True)
    return checked if isinstance(checked, Refused) else create_generations(session, checked.rows)
