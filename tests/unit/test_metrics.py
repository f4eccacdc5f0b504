"""The metrics endpoint: real job events in, a real scrape of `/metrics` and `/healthz` out."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port
from prometheus_client.parser import text_string_to_metric_families

from generation.config import MetricsSettings
from generation.jobs.api import JobCancelled, JobDone, JobEvent, JobFailed, JobProgress, QueueStatus, Stage
from generation.metrics import MetricsRecorder, metrics_app, start_metrics_server

ROOT = Path(__file__).resolve().parents[2]


class FakeService:
    """Stands in for `QueueService`: a settable status and the listeners it was given."""

    def __init__(self, status: QueueStatus) -> None:
        self.current = status
        self.listeners: list[Callable[[JobEvent], object]] = []
        self.batch_listeners: list[Callable[[int, float], object]] = []

    def add_listener(self, listener: Callable[[JobEvent], object]) -> None:
        self.listeners.append(listener)

    def add_batch_listener(self, listener: Callable[[int, float], object]) -> None:
        self.batch_listeners.append(listener)

    async def status(self) -> QueueStatus:
        return self.current


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def queue_status(depth: int = 0, running: int = 0, workers_alive: int = 1) -> QueueStatus:
    return QueueStatus(depth=depth, running=running, workers_alive=workers_alive, models=["tiny"])


def done(job_id: str, verdict: str = "good") -> JobDone:
    return JobDone(job_id, [Path(f"/data/loops/{job_id}.wav")], {"verdict": verdict, "reason": None}, seed=1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[MetricsRecorder, FakeService], Awaitable[TestClient]]]:
    """Starts a test server for a recorder and a service; closes them all at the end."""
    clients: list[TestClient] = []

    async def start(recorder: MetricsRecorder, service: FakeService) -> TestClient:
        client = TestClient(TestServer(metrics_app(recorder, service)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(await response.text())


async def test_final_events_count_jobs_by_status_and_verdicts(serve) -> None:
    recorder = MetricsRecorder()
    for event in (done("a"), done("b", "usable"), done("c"), JobFailed("d", "no"), JobCancelled("e")):
        recorder.on_event(event)
    client = await serve(recorder, FakeService(queue_status()))

    values = await scrape(client)

    assert values["loopjam_jobs_total", (("status", "done"),)] == 3
    assert values["loopjam_jobs_total", (("status", "failed"),)] == 1
    assert values["loopjam_jobs_total", (("status", "cancelled"),)] == 1
    assert values["loopjam_loop_verdicts_total", (("verdict", "good"),)] == 2
    assert values["loopjam_loop_verdicts_total", (("verdict", "usable"),)] == 1
    assert values["loopjam_loop_verdicts_total", (("verdict", "unusable"),)] == 0


async def test_every_loop_of_a_request_with_variations_counts_its_verdict(serve) -> None:
    recorder = MetricsRecorder()
    reports = [{"verdict": "good"}, {"verdict": "unusable"}, {"verdict": "good"}]
    files = [Path(f"/data/loops/{loop_id}.wav") for loop_id in ("a", "a2", "a3")]
    recorder.on_event(JobDone("a", files, reports[0], 1, seeds=[1, 2, 3], reports=reports, loop_ids=["a", "a2", "a3"]))
    client = await serve(recorder, FakeService(queue_status()))

    values = await scrape(client)

    assert values["loopjam_jobs_total", (("status", "done"),)] == 1
    assert values["loopjam_loop_verdicts_total", (("verdict", "good"),)] == 2
    assert values["loopjam_loop_verdicts_total", (("verdict", "unusable"),)] == 1


async def test_status_is_read_on_every_scrape(serve) -> None:
    service = FakeService(queue_status(depth=3, running=2, workers_alive=1))
    client = await serve(MetricsRecorder(), service)

    first = await scrape(client)
    service.current = queue_status(depth=7, running=0, workers_alive=2)
    second = await scrape(client)

    assert (first["loopjam_queue_depth", ()], first["loopjam_jobs_running", ()], first["loopjam_workers_alive", ()]) == (3, 2, 1)
    assert (second["loopjam_queue_depth", ()], second["loopjam_jobs_running", ()], second["loopjam_workers_alive", ()]) == (7, 0, 2)


async def test_generation_and_loop_seconds_follow_stage_changes_across_a_retry(serve) -> None:
    clock = FakeClock()
    recorder = MetricsRecorder(clock)
    timeline = [
        (0.0, JobProgress("a", Stage.GENERATING, 0.0)),
        (1.0, JobProgress("a", Stage.GENERATING, 50.0)),
        (3.0, JobProgress("a", Stage.LOOPING, 0.0)),
        (4.0, JobProgress("a", Stage.RETRYING, 0.0)),  # a retry round: generating too
        (6.0, JobProgress("a", Stage.LOOPING, 0.0)),
        (6.5, JobProgress("a", Stage.LOOPING, 100.0)),
        (6.5, done("a")),
        (9.0, JobProgress("a", Stage.UPLOADING, 0.0)),  # the bot's upload is not timed
    ]
    for now, event in timeline:
        clock.now = now
        recorder.on_event(event)
    client = await serve(recorder, FakeService(queue_status()))

    values = await scrape(client)

    assert values["loopjam_generation_seconds_count", ()] == 1
    assert values["loopjam_generation_seconds_sum", ()] == pytest.approx(5.0)
    assert values["loopjam_loop_seconds_count", ()] == 1
    assert values["loopjam_loop_seconds_sum", ()] == pytest.approx(1.5)


async def test_failed_cancelled_and_requeued_jobs_are_not_timed(serve) -> None:
    clock = FakeClock()
    recorder = MetricsRecorder(clock)
    recorder.on_event(JobProgress("failed", Stage.GENERATING, 0.0))
    recorder.on_event(JobProgress("cancelled", Stage.GENERATING, 0.0))
    recorder.on_event(JobProgress("requeued", Stage.GENERATING, 0.0))
    clock.now = 10.0
    recorder.on_event(JobFailed("failed", "the model fell over"))
    recorder.on_event(JobCancelled("cancelled"))
    recorder.on_event(JobProgress("requeued", Stage.QUEUED, 0.0, position=1))  # its worker died
    clock.now = 20.0
    recorder.on_event(JobProgress("requeued", Stage.GENERATING, 0.0))
    clock.now = 22.0
    recorder.on_event(done("requeued"))
    client = await serve(recorder, FakeService(queue_status()))

    values = await scrape(client)

    assert values["loopjam_generation_seconds_count", ()] == 1
    assert values["loopjam_generation_seconds_sum", ()] == pytest.approx(2.0)


async def test_batches_fill_the_size_and_seconds_histograms(serve) -> None:
    recorder = MetricsRecorder()
    for size, seconds in ((8, 12.0), (2, 3.0), (1, 0.4)):
        recorder.on_batch(size, seconds)
    client = await serve(recorder, FakeService(queue_status()))

    values = await scrape(client)

    assert values["loopjam_batch_size_count", ()] == 3
    assert values["loopjam_batch_size_sum", ()] == 11
    assert values["loopjam_batch_size_bucket", (("le", "2.0"),)] == 2
    assert values["loopjam_batch_size_bucket", (("le", "8.0"),)] == 3
    assert values["loopjam_batch_seconds_sum", ()] == pytest.approx(15.4)
    assert values["loopjam_batch_seconds_bucket", (("le", "0.5"),)] == 1


async def test_recorders_have_their_own_registries(serve) -> None:
    busy, idle = MetricsRecorder(), MetricsRecorder()
    busy.on_event(JobFailed("a", "no"))

    busy_values = await scrape(await serve(busy, FakeService(queue_status())))
    idle_values = await scrape(await serve(idle, FakeService(queue_status())))

    assert busy_values["loopjam_jobs_total", (("status", "failed"),)] == 1
    assert idle_values["loopjam_jobs_total", (("status", "failed"),)] == 0


@pytest.mark.parametrize(
    ("workers_alive", "expected_status", "expected_body"),
    [
        (2, 200, {"status": "ok", "workers_alive": 2, "depth": 4}),
        (0, 503, {"status": "no workers alive", "workers_alive": 0, "depth": 4}),
    ],
)
async def test_healthz_needs_a_live_worker(serve, workers_alive: int, expected_status: int, expected_body: dict) -> None:
    client = await serve(MetricsRecorder(), FakeService(queue_status(depth=4, workers_alive=workers_alive)))

    response = await client.get("/healthz")

    assert response.status == expected_status
    assert await response.json() == expected_body


async def test_server_is_off_by_default() -> None:
    service = FakeService(queue_status())

    assert MetricsSettings().enabled is False
    assert await start_metrics_server(MetricsSettings(), service) is None
    assert service.listeners == [] and service.batch_listeners == []


async def test_enabled_server_listens_and_is_fed_by_the_service() -> None:
    service = FakeService(queue_status(depth=1, workers_alive=1))
    settings = MetricsSettings(enabled=True, host="127.0.0.1", port=unused_port())
    runner = await start_metrics_server(settings, service)
    assert runner is not None
    try:
        for listener in service.listeners:
            listener(done("a"))
        for listener in service.batch_listeners:
            listener(4, 2.5)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{settings.port}/metrics") as response:
                values = samples(await response.text())
            async with session.get(f"http://127.0.0.1:{settings.port}/healthz") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()

    assert values["loopjam_jobs_total", (("status", "done"),)] == 1
    assert values["loopjam_batch_size_sum", ()] == 4
    assert values["loopjam_queue_depth", ()] == 1


def test_importing_metrics_loads_neither_torch_nor_discord() -> None:
    code = "import sys, generation.metrics; print(sorted({'torch', 'discord'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
