"""The CPU oneDNN stall: generation time at new lengths with oneDNN on and off (tiny model).

    .venv/bin/python bench/onednn.py

Each setting runs in its own process (oneDNN's kernel cache is per process).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time, torch
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
engine = MusicGenEngine.load(sys.argv[1], "cpu")
torch.backends.mkldnn.enabled = sys.argv[2] == "on"
for seconds in (6.0, 6.0, 9.0, 12.0):
    started = time.perf_counter()
    engine.generate([GenerationRequest("groove", seconds, 1)], SamplingParams())
    print(f"oneDNN {sys.argv[2]:3s}  {seconds:4.1f} s of audio: {time.perf_counter() - started:6.2f} s", flush=True)
"""


def main() -> None:
    from generation.model import TINY, write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = write_random_checkpoint(Path(tmp) / "tiny", TINY)
        for setting in ("on", "off"):
            subprocess.run([sys.executable, "-c", CHILD, str(model), setting], check=True)


if __name__ == "__main__":
    main()
