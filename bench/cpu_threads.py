"""CPU generation time with torch using every core or one less, oneDNN on or off (tiny model).

    .venv/bin/python -m bench.cpu_threads

Each setting runs in its own process, while a second process keeps one core busy (as the bot,
the loop engine or another worker does in production). Prints seconds per generation at new
lengths.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time, torch
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
engine = MusicGenEngine.load(sys.argv[1], "cpu")
torch.set_num_threads(int(sys.argv[2]))
torch.backends.mkldnn.enabled = sys.argv[3] == "on"
timings = []
for seconds in (6.0, 6.5, 9.0, 12.0):
    started = time.perf_counter()
    engine.generate([GenerationRequest("groove", seconds, 1)], SamplingParams())
    timings.append(time.perf_counter() - started)
print(f"threads {sys.argv[2]}, oneDNN {sys.argv[3]:3s}: " + ", ".join(f"{t:6.2f}" for t in timings)
      + "  s for 6, 6.5, 9 and 12 s of audio", flush=True)
"""


def keep_one_core_busy(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def main() -> None:
    from generation.model import TINY, write_random_checkpoint

    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        model = write_random_checkpoint(Path(tmp) / "tiny", TINY)
        for threads in (cores, max(1, cores - 1)):
            for onednn in ("on", "off"):
                busy = multiprocessing.Process(target=keep_one_core_busy, args=(600,))
                busy.start()
                try:
                    subprocess.run([sys.executable, "-c", CHILD, str(model), str(threads), onednn], check=True, timeout=900)
                finally:
                    busy.terminate()


if __name__ == "__main__":
    main()
