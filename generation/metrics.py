"""Prometheus metrics and a health check over HTTP: `/metrics` and `/healthz` on aiohttp.

Off by default (`[metrics] enabled = false`). The bot turns it on with one call at start:

    runner = await start_metrics_server(settings.metrics, service)   # None when disabled
    ...
    if runner is not None:
        await runner.cleanup()

What is measured, and where it comes from:

- job events (`QueueService.add_listener`): jobs by final status, loop verdicts, and per job the
  seconds spent generating and looping (the time between its stage changes, retries included);
- `QueueService.status()`, read on every scrape: queue depth, jobs running, workers alive;
- finished batches (`QueueService.add_batch_listener`): batch sizes and seconds per batch;
- the bot's event loop (`event_loop_lag`, read on every scrape): its longest stall since the last scrape.

The metrics live in the recorder's own `CollectorRegistry`, never prometheus-client's global one,
so several recorders (tests, two services in one process) never clash. This module imports
neither torch nor discord.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .config import MetricsSettings
from .jobs.api import JobCancelled, JobDone, JobEvent, JobFailed, JobProgress, QueueStatus, Stage

log = logging.getLogger(__name__)

FINAL_STATUSES = ("done", "failed", "cancelled")
VERDICTS = ("good", "usable", "unusable")
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
GENERATION_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
LOOP_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TIMED_STAGES = (Stage.GENERATING, Stage.RETRYING, Stage.LOOPING)

BatchListener = Callable[[int, float], object]
"""Called with a finished batch's job count and wall seconds."""


class MetricsSource(Protocol):
    """What the metrics need from the queue service (`QueueService` is one)."""

    def add_listener(self, listener: Callable[[JobEvent], object]) -> None: ...

    def add_batch_listener(self, listener: BatchListener) -> None: ...

    async def status(self) -> QueueStatus: ...


@dataclass
class _StageClock:
    """Where one job is (generating or looping) since when, and the seconds spent in each so far."""

    stage: Stage
    since: float
    seconds: dict[Stage, float] = field(default_factory=dict)

    def move_to(self, stage: Stage, now: float) -> None:
        self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self.since
        self.stage, self.since = stage, now


class MetricsRecorder:
    """Turns job events, batches and queue status into Prometheus metrics in its own registry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._stages: dict[str, _StageClock] = {}
        self.queue_depth = Gauge("loopjam_queue_depth", "Jobs waiting in the queue.", registry=self.registry)
        self.jobs_running = Gauge("loopjam_jobs_running", "Jobs being worked on.", registry=self.registry)
        self.workers_alive = Gauge("loopjam_workers_alive", "Worker processes alive.", registry=self.registry)
        self.jobs = Counter(
            "loopjam_jobs", "Jobs finished, by final status.", ["status"], registry=self.registry
        )
        self.verdicts = Counter(
            "loopjam_loop_verdicts", "Delivered loops, by the loop engine's verdict.", ["verdict"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "loopjam_batch_size", "Jobs per generate batch.", buckets=BATCH_SIZE_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "loopjam_batch_seconds", "Wall seconds per batch, generation and looping together.",
            buckets=GENERATION_SECONDS_BUCKETS, registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "loopjam_generation_seconds", "Seconds a delivered job spent generating audio (retries included).",
            buckets=GENERATION_SECONDS_BUCKETS, registry=self.registry,
        )
        self.event_loop_lag = Gauge(
            "loopjam_event_loop_lag_max_seconds", "The longest stall of the bot's event loop since the previous scrape.",
            registry=self.registry,
        )
        self.loop_seconds = Histogram(
            "loopjam_loop_seconds", "Seconds a delivered job spent in the loop engine.",
            buckets=LOOP_SECONDS_BUCKETS, registry=self.registry,
        )
        for status in FINAL_STATUSES:
            self.jobs.labels(status=status)
        for verdict in VERDICTS:
            self.verdicts.labels(verdict=verdict)

    # --- feeding ------------------------------------------------------------------------------

    def on_event(self, event: JobEvent) -> None:
        """The `QueueService` listener: every job event passes through here."""
        if isinstance(event, JobProgress):
            self._track_stage(event)
        elif isinstance(event, JobDone):
            self.jobs.labels(status="done").inc()
            self._observe_stage_seconds(event.job_id)
            for report in event.reports:  # one per loop delivered (a request may ask for variations)
                if report.get("verdict") is not None:
                    self.verdicts.labels(verdict=str(report["verdict"])).inc()
        elif isinstance(event, JobFailed):
            self.jobs.labels(status="failed").inc()
            self._stages.pop(event.job_id, None)
        elif isinstance(event, JobCancelled):
            self.jobs.labels(status="cancelled").inc()
            self._stages.pop(event.job_id, None)

    def on_batch(self, size: int, seconds: float) -> None:
        """A worker finished a batch of `size` jobs in `seconds` (the service's `BatchFinished`)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_status(self, status: QueueStatus) -> None:
        self.queue_depth.set(status.depth)
        self.jobs_running.set(status.running)
        self.workers_alive.set(status.workers_alive)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    # --- stage timing -------------------------------------------------------------------------

    def _track_stage(self, event: JobProgress) -> None:
        """Generating and looping are timed; a job back in the queue (its worker died) starts over."""
        if event.stage is Stage.QUEUED:
            self._stages.pop(event.job_id, None)
        if event.stage not in TIMED_STAGES:
            return
        now = self._clock()
        clock = self._stages.get(event.job_id)
        if clock is None:
            self._stages[event.job_id] = _StageClock(event.stage, now)
        elif clock.stage is not event.stage:
            clock.move_to(event.stage, now)

    def _observe_stage_seconds(self, job_id: str) -> None:
        clock = self._stages.pop(job_id, None)
        if clock is None:
            return
        clock.move_to(clock.stage, self._clock())
        self.generation_seconds.observe(clock.seconds.get(Stage.GENERATING, 0.0) + clock.seconds.get(Stage.RETRYING, 0.0))
        self.loop_seconds.observe(clock.seconds.get(Stage.LOOPING, 0.0))


# --- HTTP -------------------------------------------------------------------------------------


def metrics_app(recorder: MetricsRecorder, source: MetricsSource) -> web.Application:
    """`/metrics` (queue status refreshed on each scrape) and `/healthz` (503 without a live worker)."""

    async def metrics(_request: web.Request) -> web.Response:
        recorder.observe_status(await source.status())
        return web.Response(body=recorder.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        status = await source.status()
        healthy = status.workers_alive > 0
        body = {
            "status": "ok" if healthy else "no workers alive",
            "workers_alive": status.workers_alive,
            "depth": status.depth,
        }
        return web.json_response(body, status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def attach(recorder: MetricsRecorder, source: MetricsSource) -> None:
    """Feed `recorder` from the service: every job event and every finished batch."""
    source.add_listener(recorder.on_event)
    source.add_batch_listener(recorder.on_batch)


async def start_metrics_server(
    settings: MetricsSettings, service: MetricsSource, *, event_loop_lag: Callable[[], float] | None = None
) -> web.AppRunner | None:
    """Serve `/metrics` and `/healthz` on `settings.host:port`; None (nothing started) when disabled.

    The caller keeps the runner and awaits `runner.cleanup()` at shutdown.
    """
    if not settings.enabled:
        return None
    recorder = MetricsRecorder()
    attach(recorder, service)
    if event_loop_lag is not None:  # read on each scrape
        recorder.event_loop_lag.set_function(event_loop_lag)
    runner = web.AppRunner(metrics_app(recorder, service), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.port)
    return runner
