"""Rubber Band through `Warp.stretch`: the window's first beat lands where the loop is cut."""

from __future__ import annotations

import numpy as np
import pytest

from generation.loop.warp import Warp

RATE = 44100
BEAT = 0.5  # seconds between the source's clicks
BEATS = 8
LEAD = 4000  # source samples before the first beat in the stretched segment, as the engine cuts it


def click_track(beat_seconds: np.ndarray) -> np.ndarray:
    """[1, T] a 1 ms click at each of `beat_seconds`."""
    audio = np.zeros((1, round(beat_seconds[-1] * RATE) + RATE), dtype=np.float32)
    for position in np.rint(beat_seconds * RATE).astype(np.int64):
        audio[0, position : position + 44] = 1.0
    return audio


def click_at(audio: np.ndarray, near: int) -> int:
    """The sample where the click nearest `near` rises past half its height."""
    around = np.abs(audio[0, near - 1000 : near + 1000])
    return near - 1000 + int(np.flatnonzero(around > 0.5 * around.max())[0])


@pytest.mark.parametrize("speed", [0.9, 0.955, 1.05, 1.1])
@pytest.mark.parametrize(
    ("wave_s", "tolerance_ms"),
    [(0.0, 0.25), (0.015, 1.5)],
    ids=["one ratio", "beat by beat"],  # a 15 ms tempo wave gives each beat its own ratio
)
def test_the_first_beat_lands_where_the_loop_starts(speed: float, wave_s: float, tolerance_ms: float) -> None:
    index = np.arange(BEATS + 1)
    beats = 0.3 + BEAT * index + wave_s * np.sin(2 * np.pi * index / BEATS)
    warp = Warp.onto_grid(beats, RATE, round(BEATS * BEAT / speed * RATE))
    assert warp.steady == (wave_s == 0)
    first = int(warp.source[0]) - LEAD

    stretched, offset = warp.stretch(click_track(beats)[:, first:], RATE, first)

    # Rubber Band's pivot (about 1150 input samples stay in place) put it up to 4 ms off before.
    assert abs(click_at(stretched, offset) - offset) <= tolerance_ms / 1000 * RATE
