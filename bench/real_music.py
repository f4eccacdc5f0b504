"""The loop engine on the real-music corpus (tests/support/real_corpus.toml): issue #13's table.

    PYTHONPATH=$PWD .venv/bin/python -m bench.real_music

Fetches the excerpts (apt-get download, cached), loops each file as `loopjam loopify` does
(`loop_file`, 4 bars) at its annotated tempo and, for a few, at a request 4-5 % off it, and
measures the loop with the rendered corpus's independent measures (tests/support/corpus.py); "spread"
is the grid spread as three readers of each beat agree, "near" the same from the nearest onsets alone
(the measure before), "grid" the report's own grid error (median, ms), and "smear" how much slower the
loop's attacks rise than the source's (`loop_smear`; 1 is as sharp).
Goals (issue #13): start within 40 ms of a true downbeat, grid spread < 15 ms, drift < 6 ms/bar,
seam < 1.5 (the wrap's flux against the loop's other downbeats' or the source's own where the loop
was cut, whichever is larger), and not unusable.
"""

from __future__ import annotations

import time

import numpy as np
from corpus import (
    GOAL_DRIFT_MS_PER_BAR,
    GOAL_SEAM_RATIO,
    GOAL_SPREAD_MS,
    GOAL_START_MS,
    LoopMeasures,
    measure_loop,
)
from real_corpus import EXCERPTS, OFF_TEMPO, Excerpt, fetch_all, loop_smear, loop_source

from generation.loop import LoopResult
from generation.loop.source import loop_file
from generation.shape import LoopShape

BARS = 4


def meets_goals(m: LoopMeasures, result: LoopResult) -> bool:
    return (
        abs(m.start_error_ms) < GOAL_START_MS and m.grid_deviation_ms < GOAL_SPREAD_MS
        and abs(m.drift_ms_per_bar) < GOAL_DRIFT_MS_PER_BAR and m.seam_ratio < GOAL_SEAM_RATIO
        and result.report.verdict != "unusable"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(excerpt: Excerpt, path, bpm: float) -> str:
    result = loop_file(path, LoopShape(bpm, BARS, excerpt.beats_per_bar))
    m = measure_loop(
        result.audio, result.sample_rate, BARS, excerpt.beats_per_bar,
        result.report.source_start_seconds, np.array(excerpt.downbeats), source=loop_source(excerpt, path, result),
    )
    report = result.report
    goals = "ok" if meets_goals(m, result) else "MISS"
    smear = loop_smear(excerpt, path, result)
    return (
        f"{excerpt.name:20s} {bpm:7.2f} {excerpt.bpm:7.2f} {report.source_bpm:7.2f} {m.start_error_ms:+8.1f}"
        f" {m.grid_deviation_ms:7.1f} {m.nearest_onset_deviation_ms:6.1f} {m.drift_ms_per_bar:+7.2f} {m.seam_ratio:6.2f} {_ms(report.grid_error_ms):>6s} {smear:6.2f}"
        f"  {report.verdict:9s} {goals:5s}"
        f" {report.reason_code or ''}"
    )


def main() -> None:
    start = time.perf_counter()
    files = fetch_all()
    print(f"corpus ready in {time.perf_counter() - start:.1f} s ({len(files)} excerpts)")
    print(f"{'excerpt':20s} {'asked':>7s} {'source':>7s} {'found':>7s} {'start ms':>8s} {'spread':>7s} {'near':>6s}"
          f" {'drift/b':>7s} {'seam':>6s} {'grid':>6s} {'smear':>6s}  {'verdict':9s} goals reason")
    for excerpt in EXCERPTS:
        print(row(excerpt, files[excerpt.name], excerpt.bpm), flush=True)
    for excerpt in EXCERPTS:
        if excerpt.name in OFF_TEMPO:
            print(row(excerpt, files[excerpt.name], round(excerpt.bpm * OFF_TEMPO[excerpt.name], 2)), flush=True)


if __name__ == "__main__":
    main()
