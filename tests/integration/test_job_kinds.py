"""Job kinds through the real worker process and the tiny model: replay, variation, variations=N, loopify, formats.

One service (one worker spawn, `worker_service`, shared with test_jam_jobs) serves the module; each
test uses its own user ids, so the rate limit of 2 requests per user applies to each test alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from queue_helpers import BROKEN_MODEL, final_event, migrated_database, tiny_settings
from sqlalchemy import update

from generation.audio_io import read_audio, write_audio
from generation.jobs import Accepted, JobDone, JobFailed, JobKind, JobRequest, QueueService, RefusalKind, Refused
from generation.jobs.backend import BatchFinished, EventSink, MadeLoop, Opening, WorkDone, WorkerReady, WorkItem
from generation.jobs.runner import SILENT_SOURCE
from generation.prompts import UNREADABLE_SOURCE
from generation.shape import LoopShape
from generation.storage import UPLOADS_DIR, Generation, GenerationKind, get_generation, list_request_group

pytestmark = pytest.mark.asyncio(loop_scope="session")  # where `worker_service` runs
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def loop(user_id: int, **changes: object) -> JobRequest:
    """One bar at 120 BPM unless changed: about a second per candidate on CPU."""
    return JobRequest(user_id=user_id, **{"prompt": "dusty boom bap", "shape": LoopShape(120.0, 1), **changes})  # type: ignore[arg-type]


@pytest.fixture
def service(worker_service: QueueService) -> QueueService:
    return worker_service


async def finish(service: QueueService, request: JobRequest) -> JobDone:
    accepted = await service.submit(request)
    assert isinstance(accepted, Accepted), accepted
    done = await final_event(service, accepted.job_id)
    assert isinstance(done, JobDone), done
    return done


def stored(service: QueueService, short_id: str) -> Generation:
    with service.database.session() as session:
        row = get_generation(session, short_id)
    assert row is not None
    return row


def clicks(path: Path, bpm: float, bars: int, sample_rate: int = 44100) -> Path:
    """A stereo click track in 4/4: loud low clicks on downbeats, quieter high ones on the other beats."""
    beat = 60.0 / bpm
    audio = np.zeros((2, round(bars * 4 * beat * sample_rate)), dtype=np.float32)
    t = np.arange(round(0.04 * sample_rate)) / sample_rate
    for index in range(bars * 4):
        downbeat = index % 4 == 0
        click = (0.9 if downbeat else 0.4) * np.sin(2 * np.pi * (800 if downbeat else 1600) * t) * np.exp(-t * 90)
        start = round(index * beat * sample_rate)
        audio[:, start : start + len(click)] += click[: audio.shape[1] - start]
    return write_audio(path, audio, sample_rate)


async def test_replay_reproduces_the_delivered_loop_sample_for_sample(service: QueueService) -> None:
    # With the tiny model here, seed 3's second candidate (4) wins: what users heard is not the seed asked for.
    original = await finish(service, loop(1, seed=3))
    row = stored(service, original.job_id)
    assert row.seed == original.seed  # the delivered candidate's, which /replay passes back
    replay = await finish(service, loop(1, seed=row.seed, exact_seed=True, kind=JobKind.REPLAY,
                                        parent_loop_id=original.job_id))
    heard, rate = read_audio(original.files[0])
    again, _ = read_audio(replay.files[0])
    assert heard.shape == (1, LoopShape(120.0, 1, 4).samples(rate))
    np.testing.assert_array_equal(again, heard)
    replayed = stored(service, replay.job_id)
    assert (replayed.kind, replayed.parent_id, replayed.seed) == (GenerationKind.REPLAY, row.id, row.seed)


async def test_a_variation_continues_its_parent_at_the_exact_length(service: QueueService) -> None:
    parent = await finish(service, loop(2, seed=11))
    # The parent's tempo and length win over the request's: the variation is cut on its grid.
    variation = await finish(service, loop(2, kind=JobKind.VARIATION, parent_loop_id=parent.job_id, shape=LoopShape(90.0, 4)))
    audio, rate = read_audio(variation.files[0])
    assert audio.shape == (1, LoopShape(120.0, 1, 4).samples(rate))
    assert not np.array_equal(audio, read_audio(parent.files[0])[0])
    parent_row, row = stored(service, parent.job_id), stored(service, variation.job_id)
    assert (row.kind, row.parent_id, row.bpm, row.bars) == (GenerationKind.VARIATION, parent_row.id, 120.0, 1)

    # After the retention sweep took the parent's audio, the worker makes the parent again from its seed.
    parent.files[0].unlink()
    with service.database.session() as session:
        session.execute(update(Generation).where(Generation.id == parent_row.id).values(audio_path=None))
    again = await finish(service, loop(3, kind=JobKind.VARIATION, parent_loop_id=parent.job_id))
    assert read_audio(again.files[0])[0].shape == (1, LoopShape(120.0, 1, 4).samples(rate))


async def test_three_variations_are_one_request_in_flac_with_waveforms(service: QueueService) -> None:
    first = await service.submit(loop(4, variations=3, audio_format="flac", seed=500))
    second = await service.submit(loop(4, variations=3))
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    # 6 loops so far, but 2 requests: the limit of 2 per window is reached only now.
    # Both subscribed now: the two finish in one batch, so the second may be done while the first's event is read.
    first_events, second_events = service.subscribe(first.job_id), service.subscribe(second.job_id)
    assert (await service.submit(loop(4))).reason is RefusalKind.RATE_LIMITED
    done = await final_event(service, first.job_id, first_events)
    assert isinstance(done, JobDone) and isinstance(await final_event(service, second.job_id, second_events), JobDone)

    assert len(done.files) == len(done.seeds) == len(done.reports) == 3
    assert (done.seed, done.report) == (done.seeds[0], done.reports[0])
    for path in done.files:
        assert path.suffix == ".flac" and sf.info(str(path)).format == "FLAC"
        assert path.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    with service.database.session() as session:
        rows = list_request_group(session, first.job_id)
    assert [row.short_id for row in rows] == done.loop_ids and done.loop_ids[0] == first.job_id
    assert {row.request_group for row in rows} == {first.job_id}
    assert [row.seed for row in rows] == done.seeds  # the delivered candidates' seeds
    assert all(seed - (500 + 1000 * k) in (0, 1) for k, seed in enumerate(done.seeds))  # best of 2 each


async def test_loopify_loops_an_upload_to_the_exact_length_without_a_model(service: QueueService, tmp_path: Path) -> None:
    source = clicks(tmp_path / "groove.wav", bpm=100.0, bars=6)
    # The model named cannot even load: a loopify never asks for one.
    done = await finish(service, loop(5, prompt="loopify: groove.wav", shape=LoopShape(100.0, 2), source_audio=str(source),
                                      model=BROKEN_MODEL))
    audio, rate = read_audio(done.files[0])
    assert (rate, audio.shape) == (44100, (2, LoopShape(100.0, 2, 4).samples(44100)))
    assert done.files[0].with_suffix(".png").is_file()
    row = stored(service, done.job_id)
    assert (row.kind, row.seed, row.prompt) == (GenerationKind.LOOPIFY, 0, "loopify: groove.wav")

    # A variation of it continues the upload's loop with the model, at the model's rate and channels.
    variation = await finish(service, loop(5, kind=JobKind.VARIATION, parent_loop_id=done.job_id))
    audio, rate = read_audio(variation.files[0])
    assert (rate, audio.shape) == (32000, (1, LoopShape(100.0, 2, 4).samples(32000)))


async def test_an_upload_is_deleted_once_its_job_is_done_or_failed(service: QueueService) -> None:
    uploads = Path(service.settings.storage.data_dir) / UPLOADS_DIR
    uploads.mkdir(exist_ok=True)
    groove = clicks(uploads / "1001.wav", bpm=100.0, bars=6)
    silent = write_audio(uploads / "1002.wav", np.zeros((1, 4 * 44100), dtype=np.float32), 44100)

    await finish(service, loop(7, prompt="loopify: groove.wav", shape=LoopShape(100.0, 2), source_audio=str(groove)))
    assert not groove.exists()

    accepted = await service.submit(loop(7, prompt="loopify: silence.wav", source_audio=str(silent)))
    assert isinstance(accepted, Accepted)
    assert await final_event(service, accepted.job_id) == JobFailed(accepted.job_id, SILENT_SOURCE)
    assert not silent.exists()


async def test_requests_the_queue_cannot_make_are_refused_with_what_to_change(service: QueueService, tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are not samples")
    too_long = write_audio(tmp_path / "long.wav", np.zeros((1, 660 * 8000), dtype=np.float32), 8000)
    refusals = {
        "not audio": (loop(6, source_audio=str(not_audio)), UNREADABLE_SOURCE),
        "missing file": (loop(6, source_audio=str(tmp_path / "gone.wav")), UNREADABLE_SOURCE),
        "too long": (loop(6, source_audio=str(too_long)), "That file is 11.0 minutes long; the limit is 10 minutes."),
        "variations": (loop(6, variations=5), "Variations must be between 1 and 4, not 5."),
        "format": (loop(6, audio_format="mp3"), "The format must be one of wav, flac, ogg, not 'mp3'."),
        "no file": (loop(6, kind=JobKind.LOOPIFY), "A loopify needs an uploaded audio file."),
        "no parent": (loop(6, kind=JobKind.VARIATION), "A variation needs the id of the loop to vary."),
        "unknown parent": (loop(6, kind=JobKind.REROLL, parent_loop_id="nope"), "There is no loop with the id 'nope'."),
    }
    for case, (request, message) in refusals.items():
        assert await service.submit(request) == Refused(RefusalKind.INVALID, message), case


class SecondCandidateBackend:
    """A backend whose one worker delivers every loop's second candidate (seed + 1), as best-of-N may."""

    stops_its_batches = False

    def __init__(self) -> None:
        self.sink: EventSink | None = None

    async def start(self, sink: EventSink) -> None:
        self.sink = sink
        sink(WorkerReady("fake", 1, "tiny"))

    async def stop(self) -> None: ...
    def next_batch_key(self) -> str | None: return "fake"
    def cancel(self, job_id: str) -> None: ...
    def workers_alive(self) -> int: return 1
    def running(self) -> int: return 0
    def models(self) -> list[str]: return ["tiny"]
    def openings(self) -> list[Opening]: return []
    def resumed(self) -> dict[str, tuple[str, ...]]: return {}

    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None:
        assert self.sink is not None
        for item in batch:
            loops = tuple(MadeLoop(loop_id, f"loops/{loop_id}.wav", {"verdict": "usable"}, seed + 1)
                          for loop_id, seed in zip(item.loop_ids, item.seeds))
            self.sink(WorkDone(item.job_id, loops))
        self.sink(BatchFinished(batch_key, len(batch), 0.01))


async def test_the_history_keeps_the_seed_of_the_candidate_delivered(tmp_path: Path) -> None:
    database = migrated_database(tmp_path)
    service = QueueService(tiny_settings(tmp_path / "model", tmp_path), database, backend=SecondCandidateBackend())
    await service.start()
    try:
        accepted = await service.submit(loop(1, seed=40, variations=2))
        assert isinstance(accepted, Accepted)
        done = await final_event(service, accepted.job_id)
        assert isinstance(done, JobDone) and done.seeds == [41, 1041] and done.seed == 41
        with database.session() as session:
            assert [row.seed for row in list_request_group(session, accepted.job_id)] == [41, 1041]
    finally:
        await service.stop()
        database.dispose()


async def test_the_contract_names_the_same_kinds_as_the_history() -> None:
    """`JobKind` (the plain contract) becomes `GenerationKind` (the history's) by value at the storage boundary."""
    assert [kind.value for kind in JobKind] == [kind.value for kind in GenerationKind]
