"""Deciding whether a request joins the queue, and writing it there.

Requests that arrive together are decided together, in arrival order, in one unit of work
(`admit_group`): one read of what the limits count (`AdmissionLedger`), the per-user rate limit
taken last from a `RateCounter` once every other check passed (so a refused request is never
counted), then one insert for all that were let in. Embedded, the rate is counted in the history
(`DatabaseRateCounter`); distributed, by Redis (`distributed.SharedRateCounter`), which every bot
process shares. The service decides one group at a time, so two requests arriving together
cannot both take the last place.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from ..config import Settings
from ..guild_rules import GuildRules
from ..music import Key, UnknownKey, parse_key, prompt_words
from ..prompts import InvalidRequest, build_prompt, check_source, validate_request
from ..seeds import new_seed, variation_seeds
from ..storage import (
    Generation,
    GenerationKind,
    GenerationStatus,
    GuildSettings,
    JamSession,
    NewGeneration,
    Session,
    create_request_groups,
    get_guild_generation,
    get_jam,
    running_jam,
    touch_jam,
    utcnow,
)
from ..storage.queue import count_waiting_requests, guild_settings_of, queued_requests_by_user, request_times_by_user
from .api import AUDIO_FORMATS, MAX_VARIATIONS, JobKind, JobRequest, RefusalKind, Refused

NO_JAM = "There is no jam running in this channel. Start one with /jam start."
EMPTY_JAM = "This jam has no layers yet: add loops with /jam add or the Add to jam button."
KEEPS_PARENT_KEY = frozenset({JobKind.VARIATION, JobKind.REROLL, JobKind.DOUBLE, JobKind.REPLAY})
"""Kinds made from a parent loop that keep its key when the request names none: they stay in the jam's
key, and a replay sends the model the same words, so it reproduces the loop."""


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one request, after the guild's overrides."""

    rate_limit_jobs: int
    rate_limit_window_s: float
    max_queued_per_user: int
    exempt: bool

    @classmethod
    def resolve(cls, settings: Settings, guild: GuildSettings | None, role_ids: frozenset[int]) -> Limits:
        rules = GuildRules.of(settings, guild)
        return cls(rules.rate_limit_jobs, rules.rate_limit_window_s, rules.max_queued_per_user, rules.exempts(role_ids))


def _or(override: float | None, default: float) -> float:
    return default if override is None else override


def wait_text(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{math.ceil(seconds)} seconds" if seconds < 60 else f"{minutes} minute{'s' if minutes > 1 else ''}"


def resolved_kind(request: JobRequest) -> JobKind:
    """A request with a source file is a loopify, whatever kind it names."""
    return JobKind.LOOPIFY if request.source_audio is not None else request.kind


def check_parent(request: JobRequest, parent: Generation | None) -> None:
    """Raise `InvalidRequest` when the parent named is missing, or cannot be continued for a variation."""
    if request.parent_loop_id is not None and parent is None:
        raise InvalidRequest(f"There is no loop with the id {request.parent_loop_id[:40]!r}.")
    if resolved_kind(request) is not JobKind.VARIATION:
        return
    if parent is None:
        raise InvalidRequest("A variation needs the id of the loop to vary.")
    if parent.status is not GenerationStatus.DONE:
        raise InvalidRequest("That loop isn't finished, so there is nothing to vary yet.")


def target_key(request: JobRequest, parent: Generation | None, jam: JamSession | None) -> Key | None:
    """The key the loops are moved into: the request's, else the parent's for a kind that keeps it
    (`KEEPS_PARENT_KEY`), else the key of the jam it is made in; `InvalidRequest` for a key that is none."""
    text = request.key
    if text is None and parent is not None and resolved_kind(request) in KEEPS_PARENT_KEY:
        text = parent.target_key
    if text is None and jam is not None:
        text = jam.key
    if text is None:
        return None
    try:
        return parse_key(text)
    except UnknownKey as error:
        raise InvalidRequest(str(error)) from None


def check_place(rules: GuildRules, request: JobRequest) -> None:
    """Raise `InvalidRequest` when the guild does not take requests in this channel."""
    if not rules.allows_channel(request.channel_id):
        raise InvalidRequest(f"Loops are made in {rules.channels_text()} on this server.")


def check_options(request: JobRequest) -> None:
    """Raise `InvalidRequest` for a variation count, format or source file the queue does not take."""
    if not 1 <= request.variations <= MAX_VARIATIONS:
        raise InvalidRequest(f"Variations must be between 1 and {MAX_VARIATIONS}, not {request.variations}.")
    if request.audio_format not in AUDIO_FORMATS:
        raise InvalidRequest(f"The format must be one of {', '.join(AUDIO_FORMATS)}, not {request.audio_format[:20]!r}.")
    if request.kind is JobKind.LOOPIFY and request.source_audio is None:
        raise InvalidRequest("A loopify needs an uploaded audio file.")
    if request.source_audio is not None:
        if request.variations != 1:
            raise InvalidRequest("An uploaded file makes one loop; ask for 1 variation.")
        check_source(Path(request.source_audio))


def request_seeds(request: JobRequest) -> list[int]:
    """One seed per loop of the request; 0 for a loopify, which uses none."""
    if request.source_audio is not None:
        return [0]
    return variation_seeds(new_seed() if request.seed is None else request.seed, request.variations)


def check_request(
    settings: Settings, request: JobRequest, guild: GuildSettings | None, parent: Generation | None = None,
    jam: JamSession | None = None,
) -> list[NewGeneration] | Refused:
    """The request as rows to insert (one per variation), or an INVALID refusal saying what to change.

    A variation takes its parent's BPM, bars and meter: it is cut on the parent's grid. The rows
    keep every option of the job (format, exact seed, a loopify's source file, the key), so a
    restart rebuilds it as it was asked for. A key is stored by its name ("A minor") and named to
    the model. `jam` is the jam the request names (`request_jam`): a mix's, or the one a loop is made in.
    """
    if resolved_kind(request) is JobKind.MIX:
        return check_mix(settings, request, guild, jam)
    if resolved_kind(request) is JobKind.VARIATION and parent is not None:
        request = replace(request, shape=parent.shape)
    rules = GuildRules.of(settings, guild)
    model = request.model or rules.default_model
    try:
        prompt = validate_request(request.prompt, request.shape)
        check_options(request)
        check_parent(request, parent)
        key = target_key(request, parent, jam)
        if request.jam_id is not None and jam is None:
            raise InvalidRequest(NO_JAM)
        if model not in settings.model.allowed and model != settings.model.name:
            raise InvalidRequest(f"The model {model!r} is not available here.")
        check_place(rules, request)
        if request.shape.bars > rules.max_bars:
            raise InvalidRequest(f"This server allows loops of at most {rules.max_bars} bars.")
    except InvalidRequest as error:
        return Refused(RefusalKind.INVALID, str(error))
    generation = settings.generation
    return [
        NewGeneration(
            user_id=request.user_id, guild_id=request.guild_id, channel_id=request.channel_id,
            prompt=prompt,
            prompt_sent=build_prompt(prompt, request.shape, None if key is None else prompt_words(key)).text,
            shape=request.shape,
            temperature=_or(request.temperature, generation.temperature),
            top_k=int(_or(request.top_k, generation.top_k)),
            top_p=_or(request.top_p, generation.top_p),
            cfg_coef=_or(request.cfg_coef, generation.cfg_coef),
            seed=seed,
            model=model,
            kind=GenerationKind(resolved_kind(request).value),
            parent_id=None if parent is None else parent.id,
            audio_format=request.audio_format,
            exact_seed=request.exact_seed,
            source_path=request.source_audio,
            jam_id=request.jam_id,
            target_key=None if key is None else key.name,
        )
        for seed in request_seeds(request)
    ]


def mix_prompt(layers: int) -> str:
    """What a mix is called in the history, where a loop has its prompt."""
    return f"jam mix: {layers} layer{'s' if layers != 1 else ''}"


def check_mix(
    settings: Settings, request: JobRequest, guild: GuildSettings | None, jam: JamSession | None
) -> list[NewGeneration] | Refused:
    """A mix of `jam` as its one row, or an INVALID refusal: the jam must be the one running in the
    request's channel, with a layer at least.

    The row is the jam's shape and key, and its layers' short ids as they are now: a layer added
    or removed later does not change a mix already asked for. The mix needs no model; the row
    names the default one, and a layer that must be made again uses its own.
    """
    rules = GuildRules.of(settings, guild)
    try:
        check_options(request)
        if request.variations != 1:
            raise InvalidRequest("A mix is one loop; ask for 1 variation.")
        check_place(rules, request)
        if jam is None or jam.ended_at is not None or (jam.guild_id, jam.channel_id) != (request.guild_id, request.channel_id):
            raise InvalidRequest(NO_JAM)
        if not jam.layers:
            raise InvalidRequest(EMPTY_JAM)
    except InvalidRequest as error:
        return Refused(RefusalKind.INVALID, str(error))
    generation, prompt = settings.generation, mix_prompt(len(jam.layers))
    return [NewGeneration(
        user_id=request.user_id, guild_id=request.guild_id, channel_id=request.channel_id,
        prompt=prompt, prompt_sent=prompt, shape=jam.shape,
        temperature=generation.temperature, top_k=generation.top_k, top_p=generation.top_p, cfg_coef=generation.cfg_coef,
        seed=0, model=rules.default_model, kind=GenerationKind.MIX, audio_format=request.audio_format,
        jam_id=jam.id, target_key=jam.key, mix_loop_ids=[layer.generation.short_id for layer in jam.layers],
    )]


def request_jam(session: Session, request: JobRequest) -> JamSession | None:
    """The jam the request names (in its guild), or for a mix naming none, the one running in its channel."""
    if request.jam_id is not None:
        return get_jam(session, request.jam_id, request.guild_id)
    if resolved_kind(request) is JobKind.MIX and request.channel_id is not None:
        return running_jam(session, request.channel_id)
    return None


def rate_limited(limits: Limits, retry_after: float) -> Refused:
    """The refusal of a user who made `limits.rate_limit_jobs` requests in the window."""
    count = limits.rate_limit_jobs
    made = f"You've made {count} loop{'s' if count != 1 else ''} recently"
    return Refused(
        RefusalKind.RATE_LIMITED, f"{made}; you can ask for another in {wait_text(retry_after)}.",
        retry_after=retry_after, without_wait=made,
    )


class RateCounter(Protocol):
    """Counts each user's requests in a sliding window: the per-user rate limit."""

    def take(self, user_id: int, limit: int, window_s: float) -> float | None:
        """Count one request of the user and return None, or count nothing and return the seconds
        until one would be allowed."""
        ...


@dataclass
class DatabaseRateCounter:
    """Embedded mode's `RateCounter`: the users' recent requests as the history has them, read once
    for a group in its unit of work; `take` adds the group's own admissions (one process admits)."""

    now: datetime
    recent_by_user: dict[int, list[datetime]]
    """When each user's requests in the longest window of the group were made, oldest first."""

    @classmethod
    def read(cls, session: Session, decided: Sequence[Checked | Refused], now: datetime) -> DatabaseRateCounter:
        checked = [item for item in decided if isinstance(item, Checked)]
        longest_window = max((item.limits.rate_limit_window_s for item in checked), default=0.0)
        user_ids = {item.request.user_id for item in checked}
        return cls(now, request_times_by_user(session, user_ids, now - timedelta(seconds=longest_window)))

    def take(self, user_id: int, limit: int, window_s: float) -> float | None:
        window = timedelta(seconds=window_s)
        recent = [when for when in self.recent_by_user[user_id] if when > self.now - window]
        if len(recent) >= limit:
            # The oldest of the last N leaves the window first; then one more is allowed.
            blocking = recent[-limit]
            return max(0.0, (blocking + window - self.now).total_seconds())
        self.recent_by_user[user_id].append(self.now)
        return None


def rate_refusal(counter: RateCounter, item: Checked) -> Refused | None:
    """Take the request's place in its user's window, or the refusal saying when there is one."""
    limits = item.limits
    if limits.exempt:
        return None
    retry_after = counter.take(item.request.user_id, limits.rate_limit_jobs, limits.rate_limit_window_s)
    return None if retry_after is None else rate_limited(limits, retry_after)


@dataclass(frozen=True)
class Checked:
    """A valid request: its rows to insert, and the limits that apply to it."""

    request: JobRequest
    rows: list[NewGeneration]
    limits: Limits
    jam: JamSession | None = None
    """The jam the request names: a mix admitted touches it (its idle time starts again)."""


@dataclass
class AdmissionLedger:
    """What the queue limits count, read once for a group of requests decided together, in arrival order.

    `admit` records each request let in, so the next one in the group counts it: every request
    gets the answer it would have got alone, with the ones before it already queued.
    """

    now: datetime
    waiting: int
    """Requests in the queue."""
    queued_by_user: Counter[int]

    @classmethod
    def read(cls, session: Session, decided: Sequence[Checked | Refused]) -> AdmissionLedger:
        """The counts for the valid requests among `decided` (`check_requests`'s answer)."""
        user_ids = {item.request.user_id for item in decided if isinstance(item, Checked)}
        return cls(now=utcnow(), waiting=count_waiting_requests(session), queued_by_user=queued_requests_by_user(session, user_ids))

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

    def admit(self, item: Checked) -> None:
        """Count a request let in: it waits in the queue."""
        self.waiting += 1
        self.queued_by_user[item.request.user_id] += 1


def check_requests(session: Session, settings: Settings, requests: Sequence[JobRequest]) -> list[Checked | Refused]:
    """Validate each request against its guild's settings and parent loop (INVALID refusals)."""
    guilds = guild_settings_of(session, {request.guild_id for request in requests if request.guild_id is not None})
    checked: list[Checked | Refused] = []
    for request in requests:
        guild = guilds.get(request.guild_id) if request.guild_id is not None else None
        parent = None if request.parent_loop_id is None else get_guild_generation(session, request.parent_loop_id, request.guild_id)
        jam = request_jam(session, request)
        rows = check_request(settings, request, guild, parent, jam)
        limits = Limits.resolve(settings, guild, request.role_ids)
        checked.append(rows if isinstance(rows, Refused) else Checked(request, rows, limits, jam))
    return checked


def admit_group(
    session: Session, settings: Settings, requests: Sequence[JobRequest], rate_counter: RateCounter | None = None
) -> list[list[Generation] | Refused]:
    """Validate, check every limit and queue each request, in arrival order, in the caller's unit of work.

    The per-user rate is counted by `rate_counter` (distributed: Redis), or in the database when
    it is None (embedded). The limits see the group's own admissions.
    """
    checked = check_requests(session, settings, requests)
    ledger = AdmissionLedger.read(session, checked)
    counter = rate_counter or DatabaseRateCounter.read(session, checked, ledger.now)
    decided: list[Checked | Refused] = []
    for item in checked:
        refusal = item if isinstance(item, Refused) else ledger.capacity_refusal(settings, item) or rate_refusal(counter, item)
        if refusal is None and isinstance(item, Checked):
            ledger.admit(item)
        decided.append(refusal or item)
    return insert_admitted(session, decided)


def insert_admitted(session: Session, decided: Sequence[Checked | Refused]) -> list[list[Generation] | Refused]:
    """Queue the rows of the requests let in (one flush for all); refusals pass through. A mix let in touches its jam."""
    for item in decided:
        if isinstance(item, Checked) and item.jam is not None and resolved_kind(item.request) is JobKind.MIX:
            touch_jam(item.jam)
    admitted = iter(create_request_groups(session, [item.rows for item in decided if isinstance(item, Checked)]))
    return [item if isinstance(item, Refused) else next(admitted) for item in decided]
