"""What the queue service takes and gives back: requests, admissions, refusals, events, status.

Plain dataclasses with no Discord and no torch in them, so the bot (and a future distributed
backend) can use them as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..shape import LoopShape

AUDIO_FORMATS = ("wav", "flac", "ogg")
"""The formats a loop can be written in (gapless ones only: no MP3)."""
MAX_VARIATIONS = 4
QUEUE_UNAVAILABLE = "The queue's database is unreachable right now; please try again in a minute."
QUEUE_UNREACHABLE = "The queue is unreachable right now; please try again in a minute."
"""Distributed mode: the bot cannot reach the queue's Redis."""


class JobKind(str, enum.Enum):
    """What a request makes; the history records it (as `storage.GenerationKind`, same values)."""

    LOOP = "loop"
    VARIATION = "variation"
    REROLL = "reroll"
    DOUBLE = "double"
    LOOPIFY = "loopify"
    REPLAY = "replay"
    MIX = "mix"
    """The layers of the channel's running jam (`jam_id`) as one loop, with its stems."""


class QueueUnavailable(Exception):
    """The queue cannot take or change work now (its database or Redis is unreachable); nothing was changed.

    `str()` of it is a sentence to show the user as it is.
    """

    def __init__(self, message: str = QUEUE_UNAVAILABLE) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class JobRequest:
    """One request: 1 to `MAX_VARIATIONS` loops. Sampling fields left as None take the `[generation]` settings.

    A request is one job however many `variations` it asks for: one id, one place in the queue,
    one count against the rate limit, one `JobDone` with every file.
    """

    user_id: int
    prompt: str
    shape: LoopShape
    guild_id: int | None = None
    channel_id: int | None = None
    role_ids: frozenset[int] = frozenset()
    """The member's roles in the guild: a guild's exempt roles skip the per-user limits."""
    model: str | None = None
    seed: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    cfg_coef: float | None = None
    kind: JobKind = JobKind.LOOP
    """Recorded in the history; VARIATION continues the parent's loop, the others are plain loops."""
    parent_loop_id: str | None = None
    """The public short id of the loop this one was made from (variation, re-roll, double, replay).
    A variation always takes its parent's BPM, bars and meter."""
    exact_seed: bool = False
    """Generate only `seed` (one candidate, no retries): `/replay` reproduces the loop users heard."""
    variations: int = 1
    """How many loops to make (1 to `MAX_VARIATIONS`); their seeds follow from `seed`."""
    audio_format: str = "wav"
    """One of `AUDIO_FORMATS`; a waveform PNG is written beside the audio (same stem, `.png`)."""
    source_audio: str | None = None
    """A readable audio file of at most 10 minutes to loop as it is (`/loopify`): no model, no seed.
    The worker reads it from this path, so it must be on the worker's machine (embedded mode)."""
    key: str | None = None
    """A key ("A minor", "F#m"...): named in the prompt, and the loop is moved into it. A jam's key."""
    jam_id: int | None = None
    """The jam session the loop is made in (its shape and key are the jam's), or the jam to mix (MIX)."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    position: int
    """1 is next in line."""
    eta_seconds: float | None
    """None until the service has timed a batch."""


class RefusalKind(str, enum.Enum):
    RATE_LIMITED = "rate_limited"
    TOO_MANY_QUEUED = "too_many_queued"
    QUEUE_FULL = "queue_full"
    INVALID = "invalid"


@dataclass(frozen=True)
class Refused:
    reason: RefusalKind
    message: str
    """A sentence to show the user as it is."""
    retry_after: float | None = None
    """Seconds until a new request would be taken, when that is known."""
    without_wait: str | None = None
    """With `retry_after`: the message up to the wait, for a front end that shows the wait its own way."""


SubmitResult = Accepted | Refused


class CancelOutcome(str, enum.Enum):
    CANCELLED = "cancelled"
    NOT_OWNER = "not_owner"
    NOT_FOUND = "not_found"
    ALREADY_FINISHED = "already_finished"


@dataclass(frozen=True)
class CancelResult:
    outcome: CancelOutcome
    message: str

    @property
    def ok(self) -> bool:
        return self.outcome is CancelOutcome.CANCELLED


class Stage(str, enum.Enum):
    QUEUED = "queued"
    GENERATING = "generating"
    RETRYING = "retrying"
    """Generating new takes because no earlier one looped well (best-of-N's further rounds)."""
    LOOPING = "looping"
    UPLOADING = "uploading"


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    stage: Stage
    percent: float
    position: int | None = None
    """Place in the queue while `stage` is QUEUED."""


@dataclass(frozen=True)
class JobDone:
    """A request's loops, one event for all its variations, in the order asked for.

    `seed` and `report` are the first loop's; `seeds`, `reports` and `loop_ids` (each loop's
    public short id; the first is `job_id`) default to that one loop. A variation that produced
    nothing (silence) is left out here and recorded as failed in the history.
    """

    job_id: str
    files: list[Path]
    """The loop audio files (absolute paths); each has its waveform at `.with_suffix('.png')`, and a
    mix its stems (a zip of its layers and jam.json) at `.with_suffix(files.STEMS_SUFFIX)`."""
    report: dict[str, Any]
    seed: int
    """The seed of the delivered candidate: `/replay` with it gives the same loop."""
    seeds: list[int] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    loop_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, single in (("seeds", self.seed), ("reports", self.report), ("loop_ids", self.job_id)):
            if not getattr(self, name):
                object.__setattr__(self, name, [single])


@dataclass(frozen=True)
class JobFailed:
    job_id: str
    reason: str
    """A sentence to show the user as it is."""


@dataclass(frozen=True)
class JobCancelled:
    job_id: str


JobEvent = JobProgress | JobDone | JobFailed | JobCancelled
FINAL_EVENT_TYPES = (JobDone, JobFailed, JobCancelled)


@dataclass(frozen=True)
class QueueStatus:
    depth: int
    """Jobs waiting."""
    running: int
    workers_alive: int
    models: list[str]
    """Models the workers have loaded."""
    eta_by_position: list[float | None] = field(default_factory=list)
    """`eta_by_position[i]`: seconds until position i + 1 would be done (None: no timings yet)."""
    seconds_per_job: float | None = None
