"""The waiting line: round-robin across users, so one user's burst cannot starve the others."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

from .backend import WorkItem


@dataclass
class QueuedJob:
    item: WorkItem
    user_id: int
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    """When a worker was given it (monotonic); None while it waits."""

    @property
    def job_id(self) -> str:
        return self.item.job_id


class FairQueue:
    """Jobs per user; users take turns in the order they (re)joined the line.

    A user who is served goes to the back of the turn order, so with users A, B, C waiting the
    order is A1 B1 C1 A2 B2 C2 ..., whatever order the jobs were submitted in.
    """

    def __init__(self) -> None:
        self._by_user: OrderedDict[int, deque[QueuedJob]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, job: QueuedJob, *, front: bool = False) -> None:
        """Add a job; `front` puts it first in its user's line (a retried job keeps its turn)."""
        line = self._by_user.setdefault(job.user_id, deque())
        line.appendleft(job) if front else line.append(job)
        if front:
            self._by_user.move_to_end(job.user_id, last=False)
        self._count += 1

    def remove(self, job_id: str) -> QueuedJob | None:
        for user_id, line in self._by_user.items():
            for job in line:
                if job.job_id == job_id:
                    line.remove(job)
                    self._forget_if_empty(user_id)
                    self._count -= 1
                    return job
        return None

    def head(self) -> QueuedJob | None:
        """The job that goes next."""
        return next(iter(self._by_user.values()))[0] if self._by_user else None

    def in_order(self) -> Iterator[QueuedJob]:
        """Every waiting job in the order it would be served one at a time."""
        lines = list(self._by_user.values())
        for turn in range(max((len(line) for line in lines), default=0)):
            for line in lines:
                if turn < len(line):
                    yield line[turn]

    def position(self, job_id: str) -> int | None:
        """1 for the next job; None when the job is not waiting."""
        return next((index for index, job in enumerate(self.in_order(), 1) if job.job_id == job_id), None)

    def compatible_with_head(self, limit: int) -> int:
        """How many waiting jobs (up to `limit`) could share a batch with the head."""
        head = self.head()
        if head is None:
            return 0
        key = head.item.batch_key
        count = 0
        for job in self.in_order():
            count += job.item.batch_key == key
            if count >= limit:
                break
        return count

    def take_batch(self, limit: int, key_of: Callable[[WorkItem], Hashable] = lambda item: item.batch_key) -> list[QueuedJob]:
        """The head and up to `limit - 1` jobs that can share its batch (equal `key_of`), taken in turn order."""
        head = self.head()
        if head is None:
            return []
        key = key_of(head.item)
        taken: list[QueuedJob] = []
        served = True
        while served and len(taken) < limit:
            served = False
            for user_id in list(self._by_user):
                if len(taken) == limit:
                    break
                line = self._by_user[user_id]
                job = next((job for job in line if key_of(job.item) == key), None)
                if job is None:
                    continue
                line.remove(job)
                taken.append(job)
                served = True
                self._by_user.move_to_end(user_id)
        for user_id in [user_id for user_id, line in self._by_user.items() if not line]:
            del self._by_user[user_id]
        self._count -= len(taken)
        return taken

    def _forget_if_empty(self, user_id: int) -> None:
        if not self._by_user[user_id]:
            del self._by_user[user_id]
