"""`loopjam generate` and `/loop` (the queue) make the same loops from the same seed, variations included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from queue_helpers import final_event, migrated_database, tiny_settings
from typer.testing import CliRunner

from generation.audio_io import read_audio
from generation.cli import app
from generation.config import GenerationSettings
from generation.jobs import Accepted, JobDone, JobRequest, QueueService
from generation.seeds import VARIATION_SEED_STRIDE, variation_seeds
from generation.shape import LoopShape

SEED = 7
CANDIDATES = 2


def config_file(path: Path, model_dir: Path, data_dir: Path) -> Path:
    """The settings of `tiny_settings` with best-of-2, as a user's config.toml."""
    path.write_text(f"""
[model]
name = "{model_dir}"
allowed = ["{model_dir}"]
device = "cpu"
warmup = false

[generation]
extra_seconds = 0.5
candidates = {CANDIDATES}
retry_budget = 0

[loop]
processes = 1

[storage]
data_dir = "{data_dir}"
""")
    return path


def test_variations_are_spaced_past_every_seed_a_loop_may_try() -> None:
    fields = GenerationSettings.model_fields
    most_tried = max(m.le for m in fields["candidates"].metadata if hasattr(m, "le")) * (
        1 + max(m.le for m in fields["retry_budget"].metadata if hasattr(m, "le"))
    )
    assert VARIATION_SEED_STRIDE >= most_tried
    assert variation_seeds(SEED, 3) == [SEED, SEED + VARIATION_SEED_STRIDE, SEED + 2 * VARIATION_SEED_STRIDE]


async def test_the_cli_and_the_queue_make_the_same_two_variations_from_one_seed(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = config_file(tmp_path / "config.toml", tiny_model_dir, tmp_path / "cli-data")
    result = CliRunner().invoke(app, ["--config", str(config), "generate", "dusty boom bap", "--bpm", "120", "--bars", "1",
                                      "--variations", "2", "--seed", str(SEED), "--out", str(tmp_path / "cli"), "--json"])
    assert result.exit_code == 0, result.output
    from_cli = json.loads(result.output.strip().splitlines()[-1])["files"]

    settings = tiny_settings(tiny_model_dir, tmp_path / "queue-data")
    settings = settings.model_copy(update={"generation": GenerationSettings(extra_seconds=0.5, candidates=CANDIDATES, retry_budget=0)})
    database = migrated_database(tmp_path / "queue-data")
    service = QueueService(settings, database)
    await service.start()
    try:
        accepted = await service.submit(JobRequest(user_id=1, prompt="dusty boom bap", shape=LoopShape(120.0, 1), variations=2, seed=SEED))
        assert isinstance(accepted, Accepted), accepted
        from_queue = await final_event(service, accepted.job_id)
    finally:
        await service.stop()
        database.dispose()
    assert isinstance(from_queue, JobDone), from_queue

    # Each variation delivers one of its own candidates: seed, seed + 1 for the first; 1000 further for the second.
    assert [file["seed"] for file in from_cli] == from_queue.seeds
    for delivered, first in zip(from_queue.seeds, variation_seeds(SEED, 2)):
        assert first <= delivered < first + CANDIDATES
    for file, path in zip(from_cli, from_queue.files):
        cli_audio, cli_rate = read_audio(Path(file["path"]))
        queue_audio, queue_rate = read_audio(path)
        assert cli_rate == queue_rate and cli_audio.shape == queue_audio.shape
        assert np.array_equal(cli_audio, queue_audio)
