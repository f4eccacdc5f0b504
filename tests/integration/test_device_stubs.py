"""bench/device_stubs stand in for xformers, av and spacy on a lent GPU machine (bench/gpu_check.sh):
with them in place of the real packages, both decoders give the tokens they give with the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "bench" / "device_stubs"
TOKENS_SCRIPT = """
import json

import av
import spacy
import xformers.ops

from bench.gpu import build_engine
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.model import TINY

fast = build_engine(TINY, "cpu")
eager = MusicGenEngine(fast.model, fast.name, "audiocraft")
requests = [GenerationRequest(f"dusty boom bap drums, take {i}", 1.0, seed=i) for i in range(2)]
tokens = {name: engine.generate_tokens(requests, SamplingParams()).codes.tolist()
          for name, engine in (("eager", eager), ("fast", fast))}
print(json.dumps({"modules": [module.__file__ for module in (av, spacy, xformers.ops)], **tokens}))
"""


def decoding_with(*path: Path) -> subprocess.Popen[str]:
    """A fresh interpreter, with `path` first on sys.path, printing both decoders' tokens for two
    tiny-model requests (one torch thread each: the two interpreters run side by side)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", TOKENS_SCRIPT], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def tokens_of(process: subprocess.Popen[str]) -> dict[str, list]:
    out, err = process.communicate(timeout=200)
    assert process.returncode == 0, err
    return json.loads(out.splitlines()[-1])


@pytest.mark.timeout(240)
def test_the_stubs_decode_the_tokens_the_real_packages_do() -> None:
    runs = decoding_with(ROOT, STUBS), decoding_with(ROOT)
    try:
        stubbed, real = map(tokens_of, runs)
    finally:
        for run in runs:
            run.kill()  # only one that failed or timed out is still running
            run.wait()

    assert all(Path(file).is_relative_to(STUBS) for file in stubbed["modules"]), stubbed["modules"]
    assert not any(Path(file).is_relative_to(STUBS) for file in real["modules"]), real["modules"]
    assert stubbed["eager"] == real["eager"]
    assert stubbed["fast"] == real["fast"]
