"""Jam benchmark: an 8-layer, 4-bar mix at 32 kHz stereo (goal: under 0.5 s on the dev machine).

    .venv/bin/python -m bench.jam

Renders one groove's drums, bass and keys apart with FluidSynth (tests/support/corpus.py), cuts
them to exact 4-bar loops on a true downbeat and layers 8 of them (the three stems, the whole
groove and bar-rotated copies), as the Discord worker will layer stored loops: no layer needs
the loop engine's cut. Prints the median of several warm runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from corpus import BASS, DRUMS, KEYS, Groove, render

from generation.config import LoopSettings
from generation.jam import Layer, LayerOrigin, mix_layers, stems
from generation.shape import LoopShape

RUNS = 7
MIX_SHAPE = LoopShape(92.0, 4)
MIX_LAYERS = 8


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
    mix_figures()


if __name__ == "__main__":
    main()
