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


def test_generate_writes_valid_audio_offline(tmp_path: Path) -> None:
    """The issue's own acceptance command, through the installed entry point's module."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([*LOOPJAM, "model", "tiny", str(tmp_path / "tiny-model")], check=True, env=env, capture_output=True)
    run = subprocess.run(
        [*LOOPJAM, "generate", "lofi piano", "--bpm", "60.23", "--bars", "2", "--model", str(tmp_path / "tiny-model"),
         "--out", str(tmp_path / "out"), "--json", "--seed", "42"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    described = json.loads(run.stdout.strip().splitlines()[-1])
    (file,) = described["files"]
    assert file["prompt"] == "lofi piano, 60.23 bpm" and file["seed"] == 42 and file["bpm"] == 60.23
    info = sf.info(file["path"])
    assert info.samplerate == file["sample_rate"] == 32000
    assert info.frames == file["samples"] > 0
    data, _ = sf.read(file["path"])
    assert abs(data).max() > 0.0


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
