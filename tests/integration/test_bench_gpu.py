"""`python -m bench.gpu` still runs: its CPU smoke mode prints the lines a GPU run would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE_COMMAND = [
    sys.executable, "-m", "bench.gpu", "--device", "cpu", "--tiny", "--seconds", "1",
    "--repeats", "1", "--bars", "1", "--candidates", "1", "--retries", "0",
]
SMOKE_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
"""One torch thread: on a busy 2-core machine, spinning thread pools made this run take 25 to 100 s."""
NUMBERS = ("batch", "audio_s", "wall_s", "audio_s_per_s")


def result_pairs(line: str) -> dict[str, str]:
    """`engine batch=8 wall_s=0.1 ...  goal: ...` -> {"batch": "8", "wall_s": "0.1", ...}."""
    fields = line.split("  goal:")[0].split()[1:]
    assert all("=" in field for field in fields), line
    return dict(field.split("=", 1) for field in fields)


@pytest.mark.timeout(120)
def test_cpu_smoke_run_prints_every_measurement() -> None:
    result = subprocess.run(SMOKE_COMMAND, cwd=ROOT, env=SMOKE_ENV, capture_output=True, text=True, timeout=110)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("bench.gpu: tiny shape")
    results = [(line.split()[0], result_pairs(line)) for line in lines[1:]]
    assert [(label, pairs["batch"]) for label, pairs in results] == [
        ("engine", "1"), ("engine", "8"), ("engine", "16"), ("worker", "8"),
    ]
    for label, pairs in results:
        assert all(float(pairs[key]) > 0 for key in NUMBERS), (label, pairs)
        assert pairs["peak_gpu_gb"] == "n/a"
    worker = results[-1][1]
    assert (worker["candidates"], worker["rounds"]) == ("8", "1")
    assert [line for line in lines if "goal: musicgen-small at batch 8 under 8 GB" in line] == [lines[2], lines[4]]
