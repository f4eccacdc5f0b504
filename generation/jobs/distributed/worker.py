"""`loopjam worker --redis URL`: one GPU machine serving the saq queue.

The model is loaded once, before the first job is taken, and batches run in a `BatchRunner`
(as in the embedded worker process) on a thread, so the event loop stays free for saq:
every `BEAT_S` it touches the running job (saq's heartbeat: a worker killed mid-batch stops
touching it, and a sweep hands the batch back to the bot) and reports the batch's progress.
The runner writes its files into a scratch directory. Each job's loops travel back as soon as
the job is done (the heartbeat sends them ahead, `wire.finished_key`), the rest in the job's result;
jobs the bot sends to join the running batch are taken at each heartbeat (`wire.joins_key`) and
decode with it (continuous batching, in `BatchRunner`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from saq import Worker
from saq.job import Job

from ...config import Settings
from ..backend import BackendEvent, ModelUnavailable, WorkDone, WorkFailed, WorkItem, WorkProgress
from ..outage import Outage
from ..runner import BatchRunner, WorkerConfig
from .queue import BatchQueue, append, redis_client, repeat
from .wire import (
    BEAT_S,
    INPUTS_DIR,
    RUN_BATCH,
    SHUTDOWN_GRACE_S,
    SWEEP_S,
    WORKER_INFO_S,
    RogueItem,
    cancel_key,
    decode_items,
    encode_event,
    finished_key,
    joins_key,
    pack_files,
    pack_loop_files,
    progress_meta,
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
    """One batch's events (each job's latest progress apart, sent with the heartbeat), its cancelled
    jobs, and the jobs that joined it (continuous batching).

    The heartbeat adds joining jobs (`join`) until the batch `closes`; the runner's thread takes them
    (`joining`). A job taken from the joins list is the batch's: it runs, even after its runner
    returned, and the result names it (`joined`); one the batch did not take, the bot hands back.
    """

    def __init__(self, items: tuple[WorkItem, ...]) -> None:
        self.items = list(items)
        self.events: list[BackendEvent] = []
        self.progress: dict[str, tuple[str, float]] = {}
        self.cancelled: set[str] = set()
        self.joined: list[str] = []
        self.joins_read = 0
        """Entries of the batch's joins list read so far."""
        self.closed = False
        self._arrived: list[WorkItem] = []
        self._lock = threading.Lock()

    def send(self, event: BackendEvent) -> None:
        """The runner's sink (called from its thread)."""
        if isinstance(event, WorkProgress):
            self.progress.update((job_id, (event.stage, event.percent)) for job_id in event.job_ids)
        else:
            with self._lock:
                self.events.append(event)

    def finished(self) -> list[WorkDone | WorkFailed]:
        """The jobs' outcomes not sent ahead yet."""
        with self._lock:
            return [event for event in self.events if isinstance(event, (WorkDone, WorkFailed))]

    def sent_ahead(self, outcomes: list[WorkDone | WorkFailed]) -> None:
        """These outcomes travelled ahead of the batch's result: it leaves them out."""
        with self._lock:
            self.events = [event for event in self.events if event not in outcomes]

    def join(self, items: tuple[WorkItem, ...]) -> None:
        with self._lock:
            self._arrived += items
        self.items += items
        self.joined += [item.job_id for item in items]

    def joining(self) -> list[WorkItem]:
        """The jobs that joined since the last call (called from the runner's thread)."""
        with self._lock:
            arrived, self._arrived = self._arrived, []
        return arrived


class _DrainingWorker(Worker):
    """saq's worker, stopping gently: on SIGTERM or SIGINT it takes no new batch, lets the running
    one finish for `grace_s`, then cancels it, and saq hands it back to the queue (another worker,
    or this one's next start, runs it).

    saq's own grace period would wait for its never-ending upkeep loops as well, so it would
    always pass in full; here only the batch is waited for.
    """

    def __init__(self, queue: BatchQueue, *args: Any, grace_s: float, **kwargs: Any) -> None:
        super().__init__(queue, *args, dequeue_timeout=DEQUEUE_S, **kwargs)
        self.grace_s = grace_s
        self.outage = queue.outage
        self._upkeep: set[asyncio.Task[Any]] = set()

    async def upkeep(self) -> list[asyncio.Task[Any]]:
        """saq's upkeep loops (aborts, scheduled retries, the sweep, this worker's info), riding out Redis outages.

        saq's own log a traceback on every failed try, several a second while Redis is away.
        """
        timers = self.timers
        steps: dict[str, tuple[Callable[[], Awaitable[Any]], float, bool]] = {  # name: (step, every_s, always asks Redis)
            "abort": (partial(self.abort, timers["abort"]), timers["abort"], False),
            "schedule": (partial(self.queue.schedule, timers["schedule"]), timers["schedule"], True),
            "sweep": (partial(self.queue.sweep, timers["sweep"]), timers["sweep"], True),
            "worker info": (partial(self.worker_info, timers["worker_info"] + 1), timers["worker_info"], True),
        }
        self._upkeep = {
            asyncio.create_task(repeat(name, step, every_s, self.outage, self.event, always_asks_redis=asks))
            for name, (step, every_s, asks) in steps.items()
        }
        return list(self._upkeep)

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
        self.outage = Outage("Redis", "the worker waits for it; a running batch goes on", "the worker carries on", log)
        config = WorkerConfig(
            name=name, model=self.model, device=settings.model.device, generation=settings.generation,
            loop=settings.loop, data_dir=scratch_dir, decoder=settings.model.decoder,
        )
        self._runner = BatchRunner(config)

    def close(self) -> None:
        self._runner.close()

    def load(self) -> dict[str, Any]:
        """Load the model; the saq worker metadata that tells the bot this worker is ready."""
        ready = self._runner.start(_log_unavailable)
        return {"name": self.name, "model": self.model, "models": self._runner.models, "batch_size": ready.batch_size,
                "joins": ready.joins}

    async def serve(self, redis_url: str, metadata: dict[str, Any]) -> None:
        """Take batches until SIGINT or SIGTERM."""
        queue = BatchQueue(redis_client(redis_url), name=self.queue_name, outage=self.outage)
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
        self, ctx: dict[str, Any], *, items: list[dict[str, Any]], inputs: dict[str, dict[str, dict[str, str]]],
        ahead: bool = False,
    ) -> dict[str, Any]:
        """The saq job function: run one batch, and the jobs that join it, return their events and the files they wrote.

        The batch reads only the files sent as data in `inputs` (and with its joining jobs), copied
        under the scratch directory. `ahead`: the bot takes finished jobs ahead of the result (a bot
        from before continuous batching does not, and gets every job in the result).
        """
        job: Job = ctx["job"]
        shutil.rmtree(self.scratch_dir, ignore_errors=True)  # nothing of an earlier failed batch travels
        self.scratch_dir.mkdir(parents=True)
        batch = await self._local(items, inputs)
        state = _BatchState(batch)
        started = time.perf_counter()
        done = asyncio.Event()
        beat = asyncio.create_task(repeat("heartbeat", partial(self._beat, job, state, started if ahead else None),
                                          BEAT_S, self.outage, done))
        try:
            pending = list(batch)
            while pending:
                work = asyncio.get_running_loop().run_in_executor(
                    None, self._runner.run, pending, state.send, state.cancelled, state.joining)
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    # saq timed the batch out or aborted it: a thread cannot be killed, so stop it between
                    # decoding steps and wait, or the next batch would share the GPU with it.
                    state.cancelled.update(item.job_id for item in state.items)
                    await asyncio.wait([work])
                    raise
                state.closed = True  # no job joins any more; one taken while the runner was returning runs now
                pending = state.joining()
        finally:
            # No heartbeat after this: saq writes the finished job with an expiry, a late beat would
            # write it again without one (the result's audio included).
            done.set()
            beat.cancel()
            await asyncio.wait([beat])
        shutil.rmtree(self.scratch_dir / INPUTS_DIR, ignore_errors=True)  # the bot has these already
        files = await asyncio.to_thread(pack_files, self.scratch_dir)
        return {**self._result(started, state.events, files), "joined": state.joined}

    def _result(self, started: float, events: Sequence[BackendEvent], files: dict[str, dict[str, str]]) -> dict[str, Any]:
        """What travels back (`wire.check_result`): these events and files, from this worker, `started` (perf_counter) ago."""
        return {"worker": self.name, "seconds": time.perf_counter() - started,
                "events": [encode_event(event) for event in events], "files": files}

    async def _local(self, items: list[dict[str, Any]], inputs: dict[str, dict[str, dict[str, str]]]) -> tuple[WorkItem, ...]:
        """Work items as sent (checked), their input files copied under the scratch directory."""
        return await asyncio.to_thread(with_local_inputs, decode_items(items), self.scratch_dir, inputs)

    async def _beat(self, job: Job, state: _BatchState, started: float | None) -> None:
        """Touch the job (saq's heartbeat) with its jobs' latest progress, send the finished jobs'
        loops ahead (when the bot takes them: `started` is the batch's start then), take the jobs
        sent to join it, and pick up cancels."""
        assert job.queue is not None
        redis = job.queue.redis  # type: ignore[attr-defined]
        # Progress first: a job's last progress is then written before its outcome is sent ahead.
        await job.update(meta=progress_meta(state.progress))
        if started is not None:
            await self._send_finished(redis, job.key, state, started)
        await self._take_joining(redis, job.key, state)
        flags = await redis.mget([cancel_key(self.queue_name, item.job_id) for item in state.items])
        state.cancelled.update(item.job_id for item, flag in zip(state.items, flags) if flag)

    async def _send_finished(self, redis: Any, batch_key: str, state: _BatchState, started: float) -> None:
        """Send the jobs done since the last beat, with their files, ahead of the batch's result.

        Their files are removed once sent; should the beat be cut short before that, the batch's
        result carries them again, and the bot takes each job's outcome once."""
        outcomes = state.finished()
        if not outcomes:
            return
        loop_ids = [loop.loop_id for outcome in outcomes if isinstance(outcome, WorkDone) for loop in outcome.loops]
        files = await asyncio.to_thread(pack_loop_files, self.scratch_dir, loop_ids)
        await append(redis, finished_key(self.queue_name, batch_key), json.dumps(self._result(started, outcomes, files)))
        state.sent_ahead(outcomes)
        for name in files:
            (self.scratch_dir / name).unlink(missing_ok=True)

    async def _take_joining(self, redis: Any, batch_key: str, state: _BatchState) -> None:
        """Add the jobs sent to join the batch since the last look, unless it has closed; an entry no
        bot would send is skipped with one line."""
        if state.closed:
            return
        for entry in await redis.lrange(joins_key(self.queue_name, batch_key), state.joins_read, -1):
            try:
                sent = json.loads(entry)
                joining = await self._local(sent["items"], sent["inputs"])
            except (RogueItem, ValueError, KeyError, TypeError) as rogue:
                log.warning("batch %s: skipped jobs sent to join it (%s)", batch_key, str(rogue)[:200])
                joining = ()
            if state.closed:
                return  # not taken: the bot hands them back
            state.joins_read += 1
            state.join(joining)


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
