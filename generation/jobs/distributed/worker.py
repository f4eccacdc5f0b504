"""`loopjam worker --redis URL`: one GPU machine serving the saq queue.

The model is loaded once, before the first job is taken, and batches run in `jobs.worker`'s
batch runner (the embedded worker's code) on a thread, so the event loop stays free for saq:
every `BEAT_S` it touches the running job (saq's heartbeat: a worker killed mid-batch stops
touching it, and a sweep hands the batch back to the bot) and reports the batch's progress.
The runner writes its files into a scratch directory; they travel back in the job's result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
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
from ..backend import BackendEvent, WorkItem, WorkProgress
from ..worker import CPU_BATCH_SIZE, GPU_BATCH_SIZE, WorkerConfig, _Worker
from .wire import (
    BEAT_S,
    RUN_BATCH,
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

SHUTDOWN_GRACE_S = 60
"""On SIGTERM a running batch may finish for this long; then it goes back to the queue."""
CANCEL_GRACE_S = 30.0
"""A timed-out or aborted batch stops at its next decoding step; this is how long that may take."""


def default_worker_name() -> str:
    """Unique per process and readable in logs; saq worker ids must not contain ':'."""
    return f"{socket.gethostname()}-{os.getpid()}".replace(":", "-")


class _BatchState:
    """What the embedded worker gets from its pipes, for one batch: where events go, what is cancelled."""

    def __init__(self) -> None:
        self.events: list[BackendEvent] = []
        self.progress: tuple[str, float] | None = None
        self.cancelled: set[str] = set()

    def send(self, event: BackendEvent) -> None:
        if isinstance(event, WorkProgress):
            self.progress = (event.stage, event.percent)
        else:
            self.events.append(event)


class RemoteWorker:
    """Runs `RUN_BATCH` jobs of the saq queue `queue_name` with the model loaded once."""

    def __init__(self, settings: Settings, *, name: str, queue_name: str, scratch_dir: Path) -> None:
        self.name = name
        self.queue_name = queue_name
        self.scratch_dir = scratch_dir
        self.model = settings.model.name
        config = WorkerConfig(
            name=name, model=self.model, device=settings.model.device, generation=settings.generation,
            loop=settings.loop, data_dir=scratch_dir,
        )
        idle = _BatchState()  # replaced by each batch's own
        self._runner = _Worker(config, idle, idle)  # type: ignore[arg-type]  # it only calls send() and reads cancelled

    def close(self) -> None:
        self._runner.close()

    def load(self) -> dict[str, Any]:
        """Load the model; the saq worker metadata that tells the bot this worker is ready."""
        maker = self._runner.maker(self.model)
        self._runner.loop_processes.wait_ready()
        on_gpu = maker is not None and not maker.engine.device.startswith("cpu")
        if maker is None:  # still serve, like the embedded worker: these jobs fail with the reason
            log.error("%s", self._runner.unavailable.get(self.model))
        return {
            "name": self.name, "model": self.model, "models": sorted(self._runner.makers),
            "batch_size": GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE,
        }

    async def serve(self, redis_url: str, metadata: dict[str, Any]) -> None:
        """Take batches until SIGINT or SIGTERM."""
        queue = RedisQueue(Redis.from_url(redis_url), name=self.queue_name)
        worker = Worker(
            queue, functions=[(RUN_BATCH, self.run_batch)], id=self.name, concurrency=1, metadata=metadata,
            timers={"worker_info": WORKER_INFO_S, "sweep": SWEEP_S}, shutdown_grace_period_s=SHUTDOWN_GRACE_S,
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
        state = self._runner.events = self._runner.tasks = _BatchState()
        shutil.rmtree(self.scratch_dir, ignore_errors=True)  # nothing of an earlier failed batch travels
        self.scratch_dir.mkdir(parents=True)
        await asyncio.to_thread(unpack_files, self.scratch_dir, inputs)
        batch = with_local_inputs(decode_items(items), self.scratch_dir)
        started = time.perf_counter()
        beat = asyncio.create_task(self._beat(job, batch, state))
        work = asyncio.get_running_loop().run_in_executor(None, self._runner.run, batch)
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


def serve(settings: Settings, redis_url: str, *, name: str, queue_name: str) -> None:
    """Load the model, then serve the queue; blocks until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s", force=True)
    with tempfile.TemporaryDirectory(prefix="loopjam-worker-") as scratch:
        worker = RemoteWorker(settings, name=name, queue_name=queue_name, scratch_dir=Path(scratch) / "data")
        try:
            metadata = worker.load()
            log.info("serving saq queue %s with %s", queue_name, metadata)
            asyncio.run(worker.serve(redis_url, metadata))
        finally:
            worker.close()
