"""Loop engine benchmark: a 12 s, 32 kHz stereo groove to a 4-bar loop, per stage, warm.

    .venv/bin/python -m bench.loop_engine

Renders the clip with FluidSynth (tests/corpus.py); reports numba's first-call compile apart,
then the median of 7 warm runs of each stage and of the whole make_loop, with one BLAS thread as
in the loop-engine processes (generation/loop/parallel.py). The whole make_loop's CPU time is
printed too: on a shared machine the wall time counts the other jobs' turns on the cores.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import threadpoolctl
from corpus import Groove, render

from generation.config import LoopSettings
from generation.loop import engine
from generation.loop.analysis import analyse, mono
from generation.loop.grid_error import grid_error_ms
from generation.loop.loudness import normalise
from generation.loop.tempo import downbeat_phase, estimate_tempo, track_beats
from generation.shape import LoopShape

RUNS = 7
BPM, BARS = 92.0, 4
SHAPE = LoopShape(BPM, BARS)


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main() -> None:
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        run()


def run() -> None:
    with tempfile.TemporaryDirectory() as directory:
        rendered = render(Groove("bench", BPM, render_bpm=BPM * 0.96, source_bars=5), Path(directory))
    sr = rendered.sample_rate
    audio = np.ascontiguousarray(rendered.audio[:, : 12 * sr])
    settings = LoopSettings()
    _, cold = timed(engine.make_loop, audio, sr, SHAPE)
    print(f"first call (numba compile + caches): {cold * 1000:.0f} ms")

    stages: dict[str, list[float]] = {}
    for _ in range(RUNS):
        signal = mono(audio)
        analysis, t = timed(analyse, signal, sr); stages.setdefault("analyse (STFT, mel, chroma, flux)", []).append(t)
        tempo, t = timed(estimate_tempo, analysis, BPM, settings.max_stretch); stages.setdefault("tempo", []).append(t)
        beats, t = timed(track_beats, analysis, tempo.beat_period); stages.setdefault("beat tracking", []).append(t)
        (phase, _), t = timed(downbeat_phase, analysis, signal, beats, 4); stages.setdefault("downbeats", []).append(t)
        window, t = timed(engine._fitting_window, analysis, signal, beats, phase, tempo.beat_period, SHAPE)
        stages.setdefault("window scoring", []).append(t)
        grid = engine.LoopGrid(SHAPE, window.beat_period, BPM * window.beat_period / 60, window.start)
        warp = engine._warp(beats, window, grid, sr, SHAPE.samples(sr), analysis.duration)
        cut, t = timed(engine._cut, audio, sr, warp, engine._seam_samples(sr, settings))
        stages.setdefault("warp + cut (Rubber Band)", []).append(t)
        seamed, t = timed(engine._seamed, cut, sr, settings); stages.setdefault("seam crossfade", []).append(t)
        (loop, _), t = timed(normalise, seamed, sr, settings.target_lufs, settings.true_peak_dbtp)
        stages.setdefault("loudness + true-peak limit", []).append(t)
        _, t = timed(grid_error_ms, loop, sr, SHAPE.beats); stages.setdefault("grid error (the loop's onsets)", []).append(t)
        cpu = time.process_time()
        _, t = timed(engine.make_loop, audio, sr, SHAPE); stages.setdefault("whole make_loop", []).append(t)
        stages.setdefault("whole make_loop, CPU time", []).append(time.process_time() - cpu)
    for name, times in stages.items():
        print(f"{name:36s} {statistics.median(times) * 1000:7.1f} ms")
    # Beat by beat, each run of beats that shares a ratio is stretched at it (Rubber Band's offline
    # mode, as one ratio is): about as dear as one ratio, and a third dearer than one real-time call.
    print("stretch:", "one ratio" if warp.steady else f"beat by beat ({len(warp.runs) - 1} runs at one ratio each)")


if __name__ == "__main__":
    main()
