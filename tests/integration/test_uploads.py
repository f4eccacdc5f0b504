"""Files uploaded to loop: bounded memory whatever their header declares, a worker that checks
them itself, and no upload kept once its job is over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from bot_helpers import NoWorkers
from corpus import Groove, fluidsynth_available, render
from queue_helpers import BROKEN_MODEL, final_event, migrated_database, tiny_settings
from upload_files import bomb, measure_loopify, surround

from generation.config import GenerationSettings, LoopSettings
from generation.jobs import Accepted, JobCancelled, JobRequest, QueueService
from generation.jobs.backend import WorkFailed, WorkItem, WorkProgress
from generation.jobs.runner import BatchRunner, WorkerConfig
from generation.shape import LoopShape
from generation.storage import UPLOADS_DIR

ROOT = Path(__file__).resolve().parents[2]
MAX_PEAK_BYTES = 1024**3
BOMB_REFUSAL = "is sampled at 655,350 Hz; the limit is 192,000 Hz."


@pytest.mark.timeout(240)
@pytest.mark.skipif(not fluidsynth_available(), reason="the 15 s clip is rendered with FluidSynth")
def test_loopify_peak_memory_stays_under_1_gb_and_the_bomb_is_refused(tmp_path: Path) -> None:
    clip = render(Groove("clip15", 128.0, source_bars=8, sample_rate=44100), tmp_path)  # 15 s of music, then its tail
    files = {
        "bomb": bomb(tmp_path / "bomb.flac"),
        "15 s clip, 44.1 kHz stereo": tmp_path / "clip15.wav",
        "6 channels at 96 kHz": surround(tmp_path / "six.flac", clip.audio, clip.sample_rate),
    }
    runs = [[str(path), "--bpm", "128", "--bars", "2", "--out", str(tmp_path / f"loop{i}.wav"), "--json"]
            for i, path in enumerate(files.values())]

    results = dict(zip(files, measure_loopify(runs, ROOT)))

    for name, result in results.items():
        print(f"loopjam loopify, {name} ({files[name].stat().st_size // 1024} KiB): exit {result.returncode}, "
              f"peak RSS {result.peak_mib:.0f} MiB")
    refused = results["bomb"]
    assert refused.returncode == 2 and refused.stderr.strip() == f"Error: {files['bomb']} {BOMB_REFUSAL}"
    assert not (tmp_path / "loop0.wav").exists()
    for name in list(files)[1:]:
        accepted = results[name]
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.peak_rss_bytes < MAX_PEAK_BYTES, f"{name}: {accepted.peak_mib:.0f} MiB"
    made = json.loads(results["6 channels at 96 kHz"].stdout.strip().splitlines()[-1])
    info = sf.info(made["path"])
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, LoopShape(128.0, 2, 4).samples(48000))


def test_the_worker_checks_the_header_itself_before_decoding(tmp_path: Path) -> None:
    """A job that reached the worker some other way than through the bot's checks is refused all the same."""
    runner = BatchRunner(WorkerConfig("w", BROKEN_MODEL, "cpu", GenerationSettings(), LoopSettings(processes=1), tmp_path))
    item = WorkItem(job_id="bomb0001", model=BROKEN_MODEL, prompt_sent="loopify: bomb.flac",
                    shape=LoopShape(120.0, 1), temperature=1.0, top_k=250, top_p=0.0, cfg_coef=3.0, loop_ids=("bomb0001",),
                    seeds=(0,), source_audio=str(bomb(tmp_path / "bomb.flac")))
    events: list[object] = []
    try:
        runner.run([item], events.append, set())
    finally:
        runner.close()
    assert events == [WorkProgress(("bomb0001",), "looping", 0.0), WorkFailed("bomb0001", f"That file {BOMB_REFUSAL}")]


async def test_a_cancelled_loopify_leaves_no_upload(tmp_path: Path) -> None:
    database = migrated_database(tmp_path)
    service = QueueService(tiny_settings(tmp_path / "model", tmp_path), database, backend=NoWorkers())
    await service.start()
    try:
        upload = tmp_path / UPLOADS_DIR / "1234.wav"
        upload.parent.mkdir()
        sf.write(str(upload), [[0.1, 0.1]] * 44100, 44100)
        accepted = await service.submit(JobRequest(user_id=1, prompt="loopify: take.wav", shape=LoopShape(120.0, 1),
                                                   source_audio=str(upload)))
        assert isinstance(accepted, Accepted) and upload.exists()
        events = service.subscribe(accepted.job_id)
        assert (await service.cancel(accepted.job_id, user_id=1, guild_id=None)).ok
        assert isinstance(await final_event(service, accepted.job_id, events), JobCancelled)
        assert not upload.exists()
    finally:
        await service.stop()
        database.dispose()
