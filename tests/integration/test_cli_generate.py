"""`loopjam generate` and `loopjam model`, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from generation.cli import app

LOOPJAM = [sys.executable, "-m", "generation"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lofi", "--bpm", "39.9"], "BPM must be between 40 and 240, not 39.9"),
        (["lofi", "--bpm", "240.5"], "BPM must be between 40 and 240, not 240.5"),
        (["lofi", "--bpm", "90", "--bars", "3"], "Bars must be one of 1, 2, 4, 8, not 3"),
        (["lofi", "--bpm", "90", "--beats-per-bar", "5"], "Beats per bar must be one of 2, 3, 4, 6, 7, not 5"),
        (["   ", "--bpm", "90"], "The prompt is empty"),
        (["x" * 501, "--bpm", "90"], "The prompt is 501 characters long; the limit is 500"),
        (["lofi", "--bpm", "90", "--model", "facebook/musicgen-huge"], "Unknown model 'facebook/musicgen-huge'"),
        (["lofi", "--bpm", "90", "--format", "aiff"], "Unknown format 'aiff'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", *args, "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()


GENERATE = ["generate", "lofi piano", "--bpm", "60.23", "--bars", "2", "--json"]


def delivered_file(stdout: str) -> dict:
    (file,) = json.loads(stdout.strip().splitlines()[-1])["files"]
    return file


def test_generate_writes_an_exact_loop_offline_and_its_seed_replays_it(tmp_path: Path) -> None:
    """The issue's own acceptance commands (a separate process, offline), then a replay of the delivered seed."""
    made = CliRunner().invoke(app, ["model", "tiny", str(tmp_path / "tiny-model")])
    assert made.exit_code == 0, made.output
    run = subprocess.run(
        [*LOOPJAM, *GENERATE, "--model", str(tmp_path / "tiny-model"), "--out", str(tmp_path / "out"), "--seed", "42"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    file = delivered_file(run.stdout)

    assert file["prompt"] == "lofi piano, 60.23 bpm" and file["bpm"] == 60.23
    # Best-of-N: the delivered seed is one of this request's candidates (2 per round, 3 rounds).
    assert 42 <= file["seed"] < 48
    info = sf.info(file["path"])
    assert info.samplerate == file["sample_rate"] == 32000
    assert info.frames == file["samples"] == round(2 * 4 * 60 / 60.23 * 32000)
    assert file["verdict"] in {"good", "usable", "unusable"} and file["loudness_lufs"] is not None
    data, _ = sf.read(file["path"])
    assert abs(data).max() > 0.0

    # The replay runs in this process: the same command, without a second start of torch.
    replayed_run = CliRunner().invoke(app, [
        *GENERATE, "--model", str(tmp_path / "tiny-model"), "--out", str(tmp_path / "replay"), "--seed", str(file["seed"]), "--exact",
    ])
    assert replayed_run.exit_code == 0, replayed_run.output
    replay = delivered_file(replayed_run.stdout)
    assert replay["seed"] == file["seed"]
    replayed, _ = sf.read(replay["path"])
    assert (replayed == data).all()


def test_model_info_describes_the_model(tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(app, ["model", "info", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "sample rate: 32000 Hz" in result.output
    assert "frame rate:  50 Hz" in result.output
    assert "device:      cpu" in result.output
    count = int(result.output.split("parameters:")[1].split()[0].replace(",", ""))
    assert 100_000 < count < 2_000_000


def test_help_lists_every_command_with_a_line() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("generate", "model"):
        line = next(line for line in result.output.splitlines() if f" {command} " in line)
        assert len(line.split(command, 1)[1].strip(" │")) > 10
