"""Jam benchmark, key part: key accuracy over the 24-key corpus (and a drums-only groove), detection
and pitch-shift time per 4-bar, 32 kHz stereo loop.

    .venv/bin/python -m bench.jam

Renders the corpus with FluidSynth (tests/support/key_corpus.py); detection runs on each groove's
first 4 bars, timed warm (median of RUNS per loop); the pitch shift moves each loop by SHIFTS semitones.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from key_corpus import DRUMS_ONLY, KEY_CORPUS, KeyRendered, render_key_groove

from generation.music import detect_key, pitch_shift_loop

RUNS = 3
LOOP_BARS = 4
SHIFTS = (-6, 3)


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def ms(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds) * 1000:6.1f} ms, max {max(seconds) * 1000:6.1f} ms"


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        renders: list[KeyRendered] = [render_key_groove(groove, Path(directory)) for groove in [*KEY_CORPUS, DRUMS_ONLY]]
        print(f"rendered {len(renders)} grooves of {KEY_CORPUS[0].bars} bars in {time.perf_counter() - started:.1f} s")
    loops = [np.ascontiguousarray(rendered.bars(LOOP_BARS)) for rendered in renders]
    detect_key(loops[0], renders[0].sample_rate)  # first call: imports and caches

    print(f"\n{'groove':14s} {'band':8s} {'bpm':>4s}  {'truth':9s}  {'detected':9s} {'conf':>5s}")
    detection: list[float] = []
    keys_right = drums_right = 0
    for rendered, loop in zip(renders, loops):
        groove = rendered.groove
        times = []
        for _ in range(RUNS):
            estimate, seconds = timed(detect_key, loop, rendered.sample_rate)
            times.append(seconds)
        detection.append(statistics.median(times))
        correct = estimate.key == groove.key
        keys_right += correct and groove.key is not None
        drums_right += correct and groove.key is None
        truth = groove.key.name if groove.key else "no key"
        found = estimate.key.name if estimate.key else "no key"
        band = groove.band.name if groove.band else "drums"
        print(f"{groove.name:14s} {band:8s} {groove.bpm:4.0f}  {truth:9s}  {found:9s} {estimate.confidence:5.2f}  {'ok' if correct else 'WRONG'}")
    print(f"\nkeys right (tonic and mode): {keys_right}/{len(KEY_CORPUS)}; drums-only as no key: {drums_right}/1")
    seconds = [loop.shape[1] / r.sample_rate for r, loop in zip(renders, loops)]
    print(f"loops: {LOOP_BARS} bars, {min(seconds):.1f}-{max(seconds):.1f} s, {loops[0].shape[0]} channels, {renders[0].sample_rate} Hz")
    print(f"detect_key per loop:      {ms(detection)}")

    for semitones in SHIFTS:
        pitch_shift_loop(loops[0], renders[0].sample_rate, semitones)  # first call: measures Rubber Band's latency
        shifting = [timed(pitch_shift_loop, loop, r.sample_rate, semitones)[1] for r, loop in zip(renders[:8], loops[:8])]
        print(f"pitch shift {semitones:+d} per loop:  {ms(shifting)} (8 loops)")


if __name__ == "__main__":
    main()
