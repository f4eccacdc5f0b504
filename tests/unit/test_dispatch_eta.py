"""The ETA a queued job is shown: from how long jobs take once a worker has them.

With continuous batching a worker's batch can run for as long as jobs keep joining it, so the
batch's wall time says nothing about how long a job waits; a job's own time does.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from generation.config import QueueSettings, Settings
from generation.jobs import dispatch
from generation.jobs.dispatch import Dispatcher
from generation.jobs.events import EventBus
from generation.jobs.fair import QueuedJob


def test_the_eta_counts_jobs_times_over_every_slot_and_ignores_how_long_batches_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(dispatch, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    backend = SimpleNamespace(workers_alive=lambda: 2)
    dispatcher = Dispatcher(Settings(queue=QueueSettings(batch_size=2)), None, backend, EventBus())  # type: ignore[arg-type]
    assert dispatcher.eta(1) is None  # no timing yet: the bot says so rather than guess

    for took in (10.0, 14.0):
        job = QueuedJob(item=None, user_id=1, started_at=clock[0])  # type: ignore[arg-type]
        clock[0] += took
        dispatcher.job_left(job)
    dispatcher.job_left(QueuedJob(item=None, user_id=2))  # type: ignore[arg-type]  # never started: no timing
    dispatcher.batch_finished()  # a batch that ran for an hour while jobs joined it changes nothing

    assert dispatcher.seconds_per_job() == 12.0
    # 2 workers x 2 slots: the first four waiting start at once; the fifth after one round.
    assert [dispatcher.eta(position) for position in (1, 4, 5, 9)] == [12.0, 12.0, 24.0, 36.0]
