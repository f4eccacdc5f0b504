"""`loopjam worker --redis URL`: one GPU machine serving the saq queue.

The model is loaded once, before the first job is taken, and batches run in a `BatchRunner`
(as in the embedded worker process) on a thread, so the event loop stays free for saq:
every `BEAT_S` it touches the running job (saq's heartbeat: a worker killed mid-batch stops
touching it, and a sweep hands the batch back to the bot) and reports the batch's progress.
The runner writes its files into a scratch directory; they travel back in the job's result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from saq import Worker
from saq.job import Job
from saq.queue.redis import RedisQueue

from ...config import Settings
from ..backend import BackendEvent, ModelUnavailable, WorkItem, WorkProgress
from ..runner import BatchRunner, WorkerConfig
from .wire import (
    BEAT_S,
    RUN_BATCH,
    SHUTDOWN_GRACE_S,
    SWEEP_S,
    WORKER_INFO_S,
    cancel_key,
    decode_items,
    encode_event,
    pack_files,
    unpack_files,
    with_local_inputs,
)

log = logging.getLogger(__name__)

DEQUEUE_S = 1.0
"""How long an idle worker waits on the queue at a time: after SIGTERM it takes no batch once this has passed."""
CANCEL_GRACE_S = 30.0
"""A timed-out or aborted batch stops at its next decoding step; this is how long that may take."""


def default_worker_name() -> str:
    """Unique per process and readable in logs; saq worker ids must not contain ':'."""
    return f"{socket.gethostname()}-{os.getpid()}".replace(":", "-")


class _BatchState:
    """One batch's events (its latest progress apart, sent with the heartbeat) and cancelled jobs."""

    def __init__(self) -> None:
        self.events: list[BackendEvent] = []
        self.progress: tuple[str, float] | None = None
        self.cancelled: set[str] = set()

    def send(self, event: BackendEvent) -> None:
        if isinstance(event, WorkProgress):
            self.progress = (event.stage, event.percent)
        else:
            self.events.append(event)


class _DrainingWorker(Worker):
    """saq's worker, stopping gently: on SIGTERM or SIGINT it takes no new batch, lets the running
    one finish for `grace_s`, then cancels it, and saq hands it back to the queue (another worker,
    or this one's next start, runs it).

    saq's own grace period would wait for its never-ending upkeep loops as well, so it would
    always pass in full; here only the batch is waited for.
    """

    def __init__(self, *args: Any, grace_s: float, **kwargs: Any) -> None:
        super().__init__(*args, dequeue_timeout=DEQUEUE_S, **kwargs)
        self.grace_s = grace_s
        self._upkeep: set[asyncio.Task[Any]] = set()

    async def upkeep(self) -> list[asyncio.Task[Any]]:
        tasks = await super().upkeep()
        self._upkeep = set(tasks)
        return tasks

    async def stop(self) -> None:
        self.event.set()  # no new batch is taken
        takers = self.tasks - self._upkeep
        if takers and self.job_task_contexts:
            log.info("stopping: no new batch is taken; the running one may finish for %g s", self.grace_s)
            _, unfinished = await asyncio.wait(takers, timeout=self.grace_s)
            if unfinished:
                log.warning("the running batch did not finish within %g s; handing it back", self.grace_s)
        elif takers:
            # Idle: the wait on the queue ends by itself within DEQUEUE_S. Cancelling it instead could
            # take a batch and lose it: redis-py can drop a cancellation during a command (redis/redis-py#2028).
            log.info("stopping: no new batch is taken")
            await asyncio.wait(takers, timeout=2 * DEQUEUE_S)
        for task in self._upkeep:
            task.cancel()
        await asyncio.gather(*self._upkeep, return_exceptions=True)
        self.tasks -= self._upkeep
        await super().stop()  # cancels what is left: saq puts that batch back in the queue


class RemoteWorker:
    """Runs `RUN_BATCH` jobs of the saq queue `queue_name` with the model loaded once."""

    def __init__(
        self, settings: Settings, *, name: str, queue_name: str, scratch_dir: Path, grace_s: float = SHUTDOWN_GRACE_S
    ) -> None:
        self.name = name
        self.grace_s = grace_s
        self.queue_name = queue_name
        self.scratch_dir = scratch_dir
        self.model = settings.model.name
        config = WorkerConfig(
            name=name, model=self.model, device=settings.model.device, generation=settings.generation,
            loop=settings.loop, data_dir=scratch_dir,
        )
        self._runner = BatchRunner(config)

    def close(self) -> None:
        self._runner.close()

    def load(self) -> dict[str, Any]:
        """Load the model; the saq worker metadata that tells the bot this worker is ready."""
        ready = self._runner.start(_log_unavailable)
        return {"name": self.name, "model": self.model, "models": self._runner.models, "batch_size": ready.batch_size}

    async def serve(self, redis_url: str, metadata: dict[str, Any]) -> None:
        """Take batches until SIGINT or SIGTERM."""
        queue = RedisQueue(Redis.from_url(redis_url), name=self.queue_name)
        worker = _DrainingWorker(
            queue, functions=[(RUN_BATCH, self.run_batch)], id=self.name, concurrency=1, metadata=metadata,
            timers={"worker_info": WORKER_INFO_S, "sweep": SWEEP_S}, grace_s=self.grace_s,
            cancellation_hard_deadline_s=CANCEL_GRACE_S,
        )
        await queue.connect()
        try:
            await worker.start()
        finally:
            await queue.disconnect()

    async def run_batch(
        self, ctx: dict[str, Any], *, items: list[dict[str, Any]], inputs: dict[str, dict[str, str]]
    ) -> dict[str, Any]:
        """The saq job function: run one batch, return its events and the files it wrote."""
        job: Job = ctx["job"]
        state = _BatchState()
        shutil.rmtree(self.scratch_dir, ignore_errors=True)  # nothing of an earlier failed batch travels
        self.scratch_dir.mkdir(parents=True)
        await asyncio.to_thread(unpack_files, self.scratch_dir, inputs)
        batch = with_local_inputs(decode_items(items), self.scratch_dir)
        started = time.perf_counter()
        beat = asyncio.create_task(self._beat(job, batch, state))
        work = asyncio.get_running_loop().run_in_executor(None, self._runner.run, batch, state.send, state.cancelled)
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            # saq timed the batch out or aborted it: a thread cannot be killed, so stop it between
            # decoding steps and wait, or the next batch would share the GPU with it.
            state.cancelled.update(item.job_id for item in batch)
            await asyncio.wait([work])
            raise
        finally:
            beat.cancel()
        for relative in inputs:  # the bot has these already
            (self.scratch_dir / relative).unlink(missing_ok=True)
        files = await asyncio.to_thread(pack_files, self.scratch_dir)
        return {
            "worker": self.name, "seconds": time.perf_counter() - started,
            "events": [encode_event(event) for event in state.events], "files": files,
        }

    async def _beat(self, job: Job, batch: tuple[WorkItem, ...], state: _BatchState) -> None:
        """Touch the job (saq's heartbeat) with the latest progress, and pick up cancels."""
        assert job.queue is not None
        redis = job.queue.redis  # type: ignore[attr-defined]
        keys = [cancel_key(self.queue_name, item.job_id) for item in batch]
        while True:
            try:
                flags = await redis.mget(keys)
                state.cancelled.update(item.job_id for item, flag in zip(batch, flags) if flag)
                await job.update(meta={"progress": list(state.progress)} if state.progress else {})
            except (RedisError, OSError) as error:
                log.warning("heartbeat of %s: %s", job.key, error)
            await asyncio.sleep(BEAT_S)


def _log_unavailable(event: BackendEvent) -> None:
    """Where loading the model reports: the worker still serves, and these jobs fail with the reason."""
    if isinstance(event, ModelUnavailable):
        log.error("%s", event.reason)


class _StopRequested(Exception):
    """SIGTERM or SIGINT came while the model was loading."""


def _stop_requested(signum: int, _frame: object) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def serve(settings: Settings, redis_url: str, *, name: str, queue_name: str, grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Load the model, then serve the queue; returns after SIGINT or SIGTERM, its batch finished or handed back."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s", force=True)
    # Until saq takes the signals over (it does while serving), they end the loading quietly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_requested)
    with tempfile.TemporaryDirectory(prefix="loopjam-worker-") as scratch:
        worker = RemoteWorker(settings, name=name, queue_name=queue_name, scratch_dir=Path(scratch) / "data", grace_s=grace_s)
        try:
            metadata = worker.load()
            log.info("serving saq queue %s with %s", queue_name, metadata)
            asyncio.run(worker.serve(redis_url, metadata))
        except _StopRequested as stop:
            log.info("%s while starting; leaving", stop)
        finally:
            worker.close()
    log.info("stopped")
