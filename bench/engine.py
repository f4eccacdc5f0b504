"""Engine throughput on CPU with the tiny model: batch 1 versus batch 8.

    .venv/bin/python -m bench.engine [--seconds 4] [--repeats 3]

Prints wall seconds per second of generated audio at each batch size and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.model import TINY, write_random_checkpoint


def seconds_per_audio_second(engine: MusicGenEngine, batch: int, seconds: float, repeats: int) -> float:
    timings = []
    for repeat in range(repeats):
        requests = [GenerationRequest(f"groove {i}", seconds, seed=repeat * 100 + i) for i in range(batch)]
        started = time.perf_counter()
        engine.generate(requests, SamplingParams())
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) / (batch * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per request")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = MusicGenEngine.load(str(write_random_checkpoint(Path(tmp) / "tiny", TINY)), "cpu")
        warm = engine.warm_up()
        print(f"tiny model on {engine.device}, {engine.parameter_count():,} parameters; warm-up {warm:.2f} s")
        single = seconds_per_audio_second(engine, 1, args.seconds, args.repeats)
        batched = seconds_per_audio_second(engine, 8, args.seconds, args.repeats)
    print(f"batch 1: {single:.4f} s per second of audio ({1 / single:.1f}x real time)")
    print(f"batch 8: {batched:.4f} s per second of audio ({1 / batched:.1f}x real time)")
    print(f"batching speed-up (batch 1 / batch 8 time per audio second): {single / batched:.2f}x")


if __name__ == "__main__":
    main()
