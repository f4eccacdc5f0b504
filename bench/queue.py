"""The bot-side cost of the queue: 1000 submissions from 200 users, then draining them.

    .venv/bin/python -m bench.queue [--jobs 1000] [--users 200] [--database-url URL]

Prints submit latency (p50/p99), the scheduler's overhead per job (dispatch, claim and result
bookkeeping, measured with a backend that finishes every batch at once), and the peak RSS of this
process; fails if torch was imported. Uses SQLite in a temporary directory unless a URL is given.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from generation.config import ModelSettings, QueueSettings, Settings, StorageSettings
from generation.jobs import JobDone, JobRequest, QueueService
from generation.jobs.backend import BatchFinished, EventSink, MadeLoop, Opening, WorkDone, WorkerReady, WorkItem
from generation.shape import LoopShape
from generation.storage import Database


class InstantBackend:
    """A `JobBackend` whose one worker finishes every batch as soon as it gets it."""

    def __init__(self) -> None:
        self._sink: EventSink | None = None

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        sink(WorkerReady("instant", 8, "bench"))

    async def stop(self) -> None:
        pass

    def next_batch_key(self) -> str | None:
        return "instant"

    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None:
        assert self._sink is not None
        for item in batch:
            made = MadeLoop(item.job_id, f"loops/{item.job_id}.wav", {"verdict": "good"}, item.seed)
            self._sink(WorkDone(item.job_id, (made,)))
        self._sink(BatchFinished(batch_key, len(batch), 0.0))

    def cancel(self, job_id: str) -> None:
        pass

    def openings(self) -> list[Opening]:
        return []

    def workers_alive(self) -> int:
        return 1

    def running(self) -> int:
        return 0

    def resumed(self) -> dict[str, tuple[str, ...]]:
        return {}

    def models(self) -> list[str]:
        return ["bench"]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


async def bench(jobs: int, users: int, data_dir: Path, database_url: str | None) -> None:
    per_user = -(-jobs // users)
    settings = Settings(
        model=ModelSettings(name="facebook/musicgen-small"),
        queue=QueueSettings(max_queue=jobs, max_queued_per_user=per_user, rate_limit_jobs=per_user,
                            batch_size=8, batch_wait_ms=0),
        storage=StorageSettings(data_dir=data_dir, database_url=database_url),
    )
    database = Database.from_settings(settings.storage)
    database.upgrade()
    service = QueueService(settings, database, InstantBackend())
    done = asyncio.Event()
    finished = 0

    def count(event: object) -> None:
        nonlocal finished
        finished += isinstance(event, JobDone)
        if finished == jobs:
            done.set()

    service.add_listener(count)
    latencies = []
    for index in range(jobs):  # users take turns, as a busy server's traffic would interleave
        started = time.perf_counter()
        result = await service.submit(JobRequest(user_id=1000 + index % users, prompt="lofi hip hop drums",
                                                 shape=LoopShape(90.0, 4), guild_id=1))
        latencies.append(time.perf_counter() - started)
        assert result.__class__.__name__ == "Accepted", result
    holding_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    started = time.perf_counter()
    await service.start()
    await asyncio.wait_for(done.wait(), 600)
    drain = time.perf_counter() - started
    await service.stop()
    database.dispose()

    print(f"database: {database.display_url}")
    print(f"{jobs} submissions from {users} users")
    print(f"submit latency: p50 {percentile(latencies, 50) * 1000:.2f} ms, p99 {percentile(latencies, 99) * 1000:.2f} ms")
    print(f"scheduler overhead: {drain / jobs * 1000:.2f} ms per job ({drain:.2f} s to dispatch and record {jobs} jobs, B=8)")
    print(f"peak RSS: {holding_rss_mb:.0f} MB holding {jobs} queued jobs, "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB at the end")
    assert "torch" not in sys.modules, "the bot side imported torch"
    print("torch imported: no")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        asyncio.run(bench(args.jobs, args.users, Path(data_dir), args.database_url))


if __name__ == "__main__":
    main()
