"""Jam benchmark: key accuracy and speed, and an 8-layer, 4-bar mix at 32 kHz stereo.

    .venv/bin/python -m bench.jam

Keys: renders the 24-key corpus and a drums-only groove with FluidSynth (tests/support/key_corpus.py),
prints each groove's detected key, the accuracy, and detection and pitch-shift time per 4-bar loop
(goal: detection < 100 ms). Mix: renders one groove's drums, bass and keys apart
(tests/support/corpus.py), cuts them to exact 4-bar loops on a true downbeat and layers 8 of them (the
three stems, the whole groove and bar-rotated copies), as the Discord worker layers stored loops: no
layer needs the loop engine's cut. Prints the median of several warm runs (goal < 0.5 s).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from corpus import BASS, DRUMS, KEYS, Groove, render
from key_corpus import DRUMS_ONLY, KEY_CORPUS, KeyRendered, render_key_groove

from generation.config import LoopSettings
from generation.jam import Layer, LayerOrigin, mix_layers, stems
from generation.music.detect import detect_key
from generation.music.shift import pitch_shift_loop
from generation.shape import LoopShape

KEY_RUNS = 3
LOOP_BARS = 4
SHIFTS = (-6, 3)
RUNS = 7
MIX_SHAPE = LoopShape(92.0, 4)
MIX_LAYERS = 8

def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def ms(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds) * 1000:6.1f} ms, max {max(seconds) * 1000:6.1f} ms"


def key_figures() -> None:
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
        for _ in range(KEY_RUNS):
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


def mix_layers_input() -> list[Layer]:
    """8 exact 4-bar loops [2, N] at 32 kHz: drums, bass, keys, the whole groove, then the same a bar or two later."""
    groove = Groove("jam-bench", MIX_SHAPE.bpm, source_bars=6)
    with tempfile.TemporaryDirectory() as directory:
        parts = [render(groove, Path(directory), channel) for channel in (DRUMS, BASS, KEYS, None)]
    rate = groove.sample_rate
    samples, bar = MIX_SHAPE.samples(rate), MIX_SHAPE.samples(rate) // MIX_SHAPE.bars
    start = round(parts[0].downbeat_times[1] * rate)
    loops = [part.audio[:, start : start + samples] for part in parts]
    loops += [np.roll(loop, bar * (1 + index % 2), axis=1) for index, loop in enumerate(loops)]
    return [Layer(loop, rate, LayerOrigin(file=f"layer{index}.wav")) for index, loop in enumerate(loops[:MIX_LAYERS])]


def median_seconds(fn) -> tuple[float, float]:
    """(median wall time, median CPU time of this process) of RUNS calls; on a shared machine the CPU time
    is what the call would take on an idle core."""
    walls, cpus = [], []
    for _ in range(RUNS):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def mix_figures() -> None:
    layers = mix_layers_input()
    settings = LoopSettings()
    start = time.perf_counter()
    mix_layers(layers, MIX_SHAPE, settings)
    print(f"first mix (imports, caches): {(time.perf_counter() - start) * 1000:.0f} ms")
    rate = layers[0].sample_rate
    print(f"{len(layers)} layers x {MIX_SHAPE.bars} bars at {MIX_SHAPE.bpm:g} BPM ({MIX_SHAPE.seconds:.2f} s), {rate} Hz stereo, "
          f"median of {RUNS}:")
    cases = {
        "mix": lambda: mix_layers(layers, MIX_SHAPE, settings),
        "mix --duck": lambda: mix_layers(layers, MIX_SHAPE, settings, duck=True),
        "mix --duck, stems ready to write": lambda: stems(mix_layers(layers, MIX_SHAPE, settings, duck=True), "wav", -1.0),
    }
    for name, case in cases.items():
        wall, cpu = median_seconds(case)
        print(f"  {name:34s} {wall * 1000:7.1f} ms wall, {cpu * 1000:7.1f} ms CPU   (goal < 500 ms)")


def main() -> None:
    key_figures()
    print()
    mix_figures()


if __name__ == "__main__":
    main()
