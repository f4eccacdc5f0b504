"""`SaqBackend`: the service's batches run by `loopjam worker` processes anywhere, through Redis and saq.

The service still decides everything (limits, fair order, batching); this backend turns each
batch into one saq job and saq's job states back into backend events:

    ACTIVE with new progress  -> WorkProgress
    COMPLETE                  -> the runner's WorkDone / WorkFailed, then BatchFinished
    FAILED past its timeout   -> WorkFailed (timeout) for each job
    FAILED otherwise, ABORTED -> WorkerLost: the worker died (a killed worker's job is swept once
    (swept), or vanished         its heartbeat stops); the service retries its jobs once

The saq job key is the batch's "worker" name, so the history rows record which batch ran them
and `WorkerLost` names exactly those rows. Batches live in Redis, not in this process: after a
restart `start` finds the ones not yet collected and `resumed` tells the service to keep their
rows running, so their results are delivered and nothing runs twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue

from ...config import Settings
from ..backend import (
    BackendEvent,
    BatchFinished,
    EventSink,
    WorkerLost,
    WorkerReady,
    WorkFailed,
    WorkItem,
    WorkProgress,
)
from ..pool import timeout_message
from .wire import (
    COLLECTED_TTL_S,
    DEFAULT_QUEUE,
    RESULT_TTL_S,
    RUN_BATCH,
    SWEEP_S,
    cancel_key,
    decode_event,
    decode_items,
    encode_items,
    input_files,
    unpack_files,
)

log = logging.getLogger(__name__)

ENQUEUE_RETRY_S = 1.0
STOP_GRACE_S = 5.0


def timed_out(job: Job) -> bool:
    """saq failed the job because it ran past its timeout, not because its function raised."""
    return bool(job.timeout) and (job.duration("process") or 0) >= job.timeout * 1000


@dataclass(frozen=True)
class Timing:
    heartbeat_s: int = 30
    """A running batch whose worker has not touched it for this long is swept (and retried)."""
    sweep_s: int = SWEEP_S
    poll_s: float = 0.25
    """How often the states of the batches in flight are read."""
    workers_poll_s: float = 2.0


@dataclass
class _Batch:
    items: tuple[WorkItem, ...]
    enqueued: bool = False
    progress: tuple[str, float] | None = None

    @property
    def job_ids(self) -> tuple[str, ...]:
        return tuple(item.job_id for item in self.items)


class SaqBackend:
    """`JobBackend` whose workers are `loopjam worker` processes reading the saq queue `queue_name`."""

    stops_its_batches = False

    def __init__(
        self, settings: Settings, *, queue_name: str = DEFAULT_QUEUE, redis_url: str | None = None,
        timing: Timing = Timing(),
    ) -> None:
        self.queue_name = queue_name
        self.redis_url = redis_url or settings.queue.redis_url
        self.data_dir = Path(settings.storage.data_dir).resolve()
        self.job_timeout_s = math.ceil(settings.queue.job_timeout_s)
        self.timing = timing
        self._queue: RedisQueue | None = None
        self._sink: EventSink | None = None
        self._batches: dict[str, _Batch] = {}
        self._resumed: dict[str, tuple[str, ...]] = {}
        self._workers: dict[str, dict[str, Any]] = {}
        self._next_key: str | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()

    # --- JobBackend ---------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._stopping.clear()
        self._queue = RedisQueue(Redis.from_url(self.redis_url), name=self.queue_name)
        await self._queue.connect()
        async for job in self._queue.iter_jobs():
            if job.function == RUN_BATCH and job.kwargs is not None:
                self._batches[job.key] = _Batch(decode_items(job.kwargs["items"]), enqueued=True)
        self._resumed = {key: batch.job_ids for key, batch in self._batches.items()}
        await self._refresh_workers()
        self._loops = [
            asyncio.create_task(self._repeat(self._follow_batches, self.timing.poll_s), name="saq-batches"),
            asyncio.create_task(self._repeat(self._refresh_workers, self.timing.workers_poll_s), name="saq-workers"),
            asyncio.create_task(self._repeat(self._sweep, self.timing.sweep_s), name="saq-sweep"),
        ]
        log.info("saq queue %s: %d worker(s), %d batch(es) resumed", self.queue_name, len(self._workers), len(self._resumed))

    async def stop(self) -> None:
        """Stop following; the batches go on in Redis and the next `start` resumes them."""
        self._stopping.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._pending:  # enqueues in progress: let them land, so their batches can be resumed
            await asyncio.wait(self._pending, timeout=STOP_GRACE_S)
        if self._queue is not None:
            await self._queue.disconnect()
            self._queue = None

    def resumed(self) -> dict[str, tuple[str, ...]]:
        """Batches from before this `start` still in Redis: their key (the rows' worker) -> job ids."""
        return dict(self._resumed)

    def next_batch_key(self) -> str | None:
        """A new batch key while fewer batches are in flight than workers are alive."""
        if self._queue is None or len(self._batches) >= len(self._workers):
            return None
        if self._next_key is None:  # the same name until `run` uses it: the service asks twice
            self._next_key = f"batch-{uuid.uuid4().hex[:12]}"
        return self._next_key

    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None:
        if batch_key == self._next_key:
            self._next_key = None
        self._batches[batch_key] = _Batch(tuple(batch))
        self._spawn(self._enqueue(batch_key, self._batches[batch_key]))

    def cancel(self, job_id: str) -> None:
        if self._queue is not None and any(job_id in batch.job_ids for batch in self._batches.values()):
            self._spawn(self._queue.redis.set(cancel_key(self.queue_name, job_id), 1, ex=self.job_timeout_s + 60))

    def workers_alive(self) -> int:
        return len(self._workers)

    def running(self) -> int:
        return sum(len(batch.items) for batch in self._batches.values())

    def models(self) -> list[str]:
        return sorted({model for info in self._workers.values() for model in info.get("models", ())})

    async def worker_of(self, job_id: str) -> str | None:
        """The name of the worker running the job now, if one is (for operators and tests)."""
        key = next((key for key, batch in self._batches.items() if job_id in batch.job_ids), None)
        job = await self._queue.job(key) if key is not None and self._queue is not None else None
        return job.worker_id if job is not None and job.status is Status.ACTIVE else None

    # --- following the batches ----------------------------------------------------------------

    def _emit(self, event: BackendEvent) -> None:
        assert self._sink is not None
        self._sink(event)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _repeat(self, step: Callable[[], Awaitable[None]], interval_s: float) -> None:
        """Run `step` every `interval_s` until `stop`; a Redis outage is logged and waited out.

        `stop` cancels these loops, but redis-py can lose a cancellation that lands during a
        command (redis/redis-py#2028): the step then returns normally, so the loop also ends on
        `_stopping`, or `stop` would wait for it forever.
        """
        while not self._stopping.is_set():
            try:
                await step()
            except (RedisError, OSError) as error:
                log.warning("saq queue %s: %s", self.queue_name, error)
            except Exception:
                log.exception("saq queue %s: %s failed", self.queue_name, step.__name__)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)

    async def _enqueue(self, key: str, batch: _Batch) -> None:
        assert self._queue is not None
        inputs = await asyncio.to_thread(input_files, self.data_dir, batch.items)
        job = Job(
            RUN_BATCH, kwargs={"items": encode_items(batch.items), "inputs": inputs}, key=key, timeout=self.job_timeout_s,
            heartbeat=self.timing.heartbeat_s, retries=1, ttl=RESULT_TTL_S,
        )
        while not batch.enqueued:
            try:
                await self._queue.enqueue(job)
                batch.enqueued = True
            except (RedisError, OSError) as error:  # Redis is down: the batch waits for it
                log.warning("cannot enqueue batch %s yet: %s", key, error)
                await asyncio.sleep(ENQUEUE_RETRY_S)

    async def _follow_batches(self) -> None:
        assert self._queue is not None
        keys = [key for key, batch in self._batches.items() if batch.enqueued]
        if keys:
            for key, job in zip(keys, await self._queue.jobs(keys)):
                await self._observe(key, job)

    async def _observe(self, key: str, job: Job | None) -> None:
        batch = self._batches[key]
        if job is None:
            self._finish(key, WorkerLost(key, batch.job_ids))
        elif job.status is Status.ACTIVE:
            progress = job.meta.get("progress")
            if progress is not None and tuple(progress) != batch.progress:
                batch.progress = (progress[0], progress[1])
                self._emit(WorkProgress(batch.job_ids, *batch.progress))
        elif job.status is Status.COMPLETE:
            await self._collect(key, job)
        elif job.status is Status.FAILED and timed_out(job):
            for job_id in batch.job_ids:
                self._emit(WorkFailed(job_id, timeout_message(job.timeout)))
            self._finish(key, WorkerLost(key, ()))
            await self._set_collected(job)
        elif job.status in (Status.FAILED, Status.ABORTED):
            log.warning("batch %s %s: %s", key, job.status.value, (job.error or "").strip().splitlines()[-1:])
            self._finish(key, WorkerLost(key, batch.job_ids))
            await self._set_collected(job)

    async def _collect(self, key: str, job: Job) -> None:
        """Write the batch's files under the data directory, then pass its events on."""
        result: dict[str, Any] = job.result
        await asyncio.to_thread(unpack_files, self.data_dir, result.get("files", {}))
        for event in result["events"]:
            self._emit(decode_event(event))
        self._finish(key, BatchFinished(result["worker"], len(self._batches[key].items), result["seconds"]))
        result["files"] = {}  # written: the audio need not wait in Redis any longer
        await self._set_collected(job)

    def _finish(self, key: str, event: BackendEvent) -> None:
        del self._batches[key]
        self._emit(event)

    async def _set_collected(self, job: Job) -> None:
        """Keep a collected batch (without audio) a while: a restart before the service stored it replays it."""
        assert self._queue is not None
        await self._queue.redis.set(job.id, self._queue.serialize(job), ex=COLLECTED_TTL_S)

    # --- workers ------------------------------------------------------------------------------

    async def _refresh_workers(self) -> None:
        assert self._queue is not None
        info = await self._queue.info()
        workers = {worker_id: worker.get("metadata") or {} for worker_id, worker in info["workers"].items()}
        for worker_id in workers.keys() - self._workers.keys():
            metadata = workers[worker_id]
            self._emit(WorkerReady(worker_id, metadata.get("batch_size", 1), metadata.get("model", "")))
        self._workers = workers

    async def _sweep(self) -> None:
        """saq's sweep, here too: a batch whose workers all died is still found (and retried)."""
        assert self._queue is not None
        await self._queue.sweep(lock=self.timing.sweep_s, abort=1.0)
