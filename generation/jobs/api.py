"""What the queue service takes and gives back: requests, admissions, refusals, events, status.

Plain dataclasses with no Discord and no torch in them, so the bot (and a future distributed
backend) can use them as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobRequest:
    """One loop asked for. Sampling fields left as None take the `[generation]` settings."""

    user_id: int
    prompt: str
    bpm: float
    bars: int
    beats_per_bar: int = 4
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
    job_id: str
    files: list[Path]
    """The loop audio files (absolute paths)."""
    report: dict[str, Any]
    seed: int
    """The seed of the delivered candidate: `/replay` with it gives the same loop."""


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
    seconds_per_batch: float | None = None
