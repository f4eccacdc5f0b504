"""Deciding whether a request joins the queue, and writing it there: one unit of work.

The checks read the database (the jobs a user made in the window, the jobs waiting) and the
insert follows in the same transaction; the service runs this under one lock, so two requests
arriving together cannot both take the last place.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..config import Settings
from ..prompts import InvalidRequest, build_prompt, validate_request
from ..storage import (
    Generation,
    GenerationStatus,
    GuildSettings,
    NewGeneration,
    count_queued,
    create_generation,
    get_guild_settings,
    utcnow,
)
from .api import JobRequest, Refused, RefusalKind


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


def check_request(settings: Settings, request: JobRequest, guild: GuildSettings | None) -> NewGeneration | Refused:
    """The request as a row to insert, or an INVALID refusal saying what to change."""
    model = request.model or (guild.default_model if guild and guild.default_model else settings.model.name)
    try:
        prompt = validate_request(request.prompt, request.bpm, request.bars, request.beats_per_bar)
        if model not in settings.model.allowed and model != settings.model.name:
            raise InvalidRequest(f"The model {model!r} is not available here.")
        if guild is not None and guild.allowed_channel_ids and request.channel_id not in guild.allowed_channel_ids:
            raise InvalidRequest("Loops can't be made in this channel; ask an admin which channels allow them.")
        if guild is not None and guild.max_bars is not None and request.bars > guild.max_bars:
            raise InvalidRequest(f"This server allows loops of at most {guild.max_bars} bars.")
    except InvalidRequest as error:
        return Refused(RefusalKind.INVALID, str(error))
    generation = settings.generation
    return NewGeneration(
        user_id=request.user_id, guild_id=request.guild_id, channel_id=request.channel_id,
        prompt=prompt, prompt_sent=build_prompt(prompt, request.bpm, request.beats_per_bar).text,
        bpm=request.bpm, bars=request.bars, beats_per_bar=request.beats_per_bar,
        temperature=_or(request.temperature, generation.temperature),
        top_k=int(_or(request.top_k, generation.top_k)),
        top_p=_or(request.top_p, generation.top_p),
        cfg_coef=_or(request.cfg_coef, generation.cfg_coef),
        seed=new_seed() if request.seed is None else request.seed,
        model=model,
    )


def check_limits(session: Session, settings: Settings, request: JobRequest, limits: Limits) -> Refused | None:
    """A refusal when the user or the queue is at a limit; None when the request may join."""
    waiting = session.scalar(select(func.count()).where(Generation.status == GenerationStatus.QUEUED)) or 0
    if waiting >= settings.queue.max_queue:
        return Refused(RefusalKind.QUEUE_FULL, "The queue is full right now. Please try again in a few minutes.",
                       retry_after=None)
    if limits.exempt:
        return None
    queued = count_queued(session, request.user_id)
    if queued >= limits.max_queued_per_user:
        return Refused(
            RefusalKind.TOO_MANY_QUEUED,
            f"You already have {queued} loop{'s' if queued > 1 else ''} waiting; "
            "please wait for one to finish before asking for another.",
        )
    now = utcnow()
    window = timedelta(seconds=limits.rate_limit_window_s)
    recent = list(session.scalars(
        select(Generation.created_at)
        .where(Generation.user_id == request.user_id, Generation.created_at > now - window)
        .order_by(Generation.created_at.desc())
        .limit(limits.rate_limit_jobs)
    ))
    if len(recent) >= limits.rate_limit_jobs:
        # The oldest of the last N leaves the window first; then one more is allowed.
        retry_after = max(0.0, (recent[-1] + window - now).total_seconds())
        return Refused(
            RefusalKind.RATE_LIMITED,
            f"You've made {limits.rate_limit_jobs} loops recently; you can ask for another in {wait_text(retry_after)}.",
            retry_after=retry_after,
        )
    return None


def admit(session: Session, settings: Settings, request: JobRequest) -> Generation | Refused:
    """Validate, check the limits and queue the request, in the caller's unit of work."""
    guild = get_guild_settings(session, request.guild_id) if request.guild_id is not None else None
    checked = check_request(settings, request, guild)
    if isinstance(checked, Refused):
        return checked
    refusal = check_limits(session, settings, request, Limits.resolve(settings, guild, request.role_ids))
    return refusal if refusal is not None else create_generation(session, checked)
