"""Beat-by-beat warping, like a DAW's warp markers: each beat of the window moved onto the exact grid.

One stretch ratio per loop cannot straighten a tempo that wavers inside the window (a live player,
the model's own drift). Here every beat of the window is a marker: its source time is mapped to
its place on the requested grid, and Rubber Band stretches each beat by its own ratio (pedalboard's
`time_stretch` takes a ratio per input sample). Beats the tracker places a few ms off a steady grid
are not followed (a dead band), so a steady source is stretched by one ratio, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pedalboard

WARP_DEAD_BAND_S = 0.004  # a beat this close to the window's straight grid stays on it: tracker noise, not drift
# A window whose beats all sit this close to a straight grid is stretched at one ratio, exactly:
# Rubber Band lands beats 2-5 ms off when the ratio varies (it applies a change with a lag), so
# warping small deviations costs more than it gains (the real corpus's steady rock got worse).
WARP_MIN_S = 0.01
MAX_BEAT_WARP = 0.1  # one beat is stretched at most this much more or less than the window's period
STRETCH_EPSILON = 1e-4  # closer than this to 1, the stretch is skipped (under 1 ms per 8 s)
# Rubber Band R2 (pedalboard, offline) keeps about this input sample in place: at a ratio r, output
# sample k plays input PIVOT + (k - PIVOT) x r, not k x r (measured on clicks at 32 and 44.1 kHz, r
# 0.9-1.1). Ignoring it puts the loop's first beat up to 3 ms off its start at a 10 % stretch.
RUBBER_BAND_PIVOT = 1150


def markers(beat_times: np.ndarray, start: float, period: float, beats: int) -> np.ndarray:
    """[beats + 1] source times of the window's beats and of the beat after it, the first at `start`.

    `beat_times` are the tracked beats from the window's first on ([>= 1] seconds; missing ones
    continue at `period`). The markers are a straight grid of `period` from `start` (where the
    first beat's attack starts) plus the beats' own deviations from their straight line, when one
    is past WARP_MIN_S: the deviations under the dead band are dropped, and no beat is warped by
    more than MAX_BEAT_WARP.
    """
    index = np.arange(beats + 1)
    own = np.asarray(beat_times[: beats + 1], dtype=float)
    if len(own) < beats + 1:
        own = np.r_[own, own[-1] + period * np.arange(1, beats + 2 - len(own))]
    slope, intercept = np.polyfit(index, own, 1)
    residual = own - (intercept + slope * index)
    if np.abs(residual).max() < WARP_MIN_S:
        residual = np.zeros_like(residual)
    kept = np.sign(residual) * np.maximum(np.abs(residual) - WARP_DEAD_BAND_S, 0.0)
    lengths = np.clip(np.diff(period * index + kept), period * (1 - MAX_BEAT_WARP), period * (1 + MAX_BEAT_WARP))
    return start + np.r_[0.0, np.cumsum(lengths)]


@dataclass(frozen=True)
class Warp:
    """Where the window's beats are, in source samples, and where they go, in output samples."""

    source: np.ndarray  # [B + 1] int, increasing
    output: np.ndarray  # [B + 1] int, from 0 to the loop's length

    @classmethod
    def onto_grid(cls, marker_seconds: np.ndarray, sample_rate: int, samples: int) -> Warp:
        """Markers (source seconds [B + 1]) onto an even grid of B beats over `samples` output samples."""
        beats = len(marker_seconds) - 1
        source = np.rint(np.asarray(marker_seconds) * sample_rate).astype(np.int64)
        return cls(source=source, output=np.rint(np.arange(beats + 1) * samples / beats).astype(np.int64))

    @property
    def speeds(self) -> np.ndarray:
        """[B] source samples per output sample of each beat (> 1: played faster)."""
        return np.diff(self.source) / np.diff(self.output)

    @property
    def mean_speed(self) -> float:
        return float((self.source[-1] - self.source[0]) / (self.output[-1] - self.output[0]))

    @property
    def steady(self) -> bool:
        """Whether one ratio puts every beat on the grid, up to the rounding of both ends."""
        return bool(np.all(np.abs(np.diff(self.source) - self.mean_speed * np.diff(self.output)) <= 2))

    def landing(self, first: int, speed: float) -> int:
        """Where the first marker lands in Rubber Band's output of source samples from `first` on,
        played at `speed` where it lies (see RUBBER_BAND_PIVOT)."""
        return round(RUBBER_BAND_PIVOT + (self.source[0] - first - RUBBER_BAND_PIVOT) / speed)

    def stretch(self, segment: np.ndarray, sample_rate: int, first: int) -> tuple[np.ndarray, int]:
        """Stretch `segment` [C, M] (source samples from `first` on) with each beat's own ratio.

        Audio before the first marker goes at the first beat's speed, after the last at the last
        one's. Returns the stretched audio and where the first marker landed in it.
        """
        speeds, mean = self.speeds, self.mean_speed
        if self.steady:
            if abs(mean - 1.0) <= STRETCH_EPSILON:
                return segment, round((self.source[0] - first) / mean)
            # Rubber Band's R3 engine (high_quality=True) drifts ~0.2 % against the nominal ratio inside
            # the buffer; R2 keeps it, so the bar grid stays exact (from where `landing` says).
            return pedalboard.time_stretch(segment, sample_rate, mean, high_quality=False), self.landing(first, mean)
        beat = np.searchsorted(self.source, first + np.arange(segment.shape[1]), side="right") - 1
        factor = np.ascontiguousarray(speeds[np.clip(beat, 0, len(speeds) - 1)], dtype=np.float64)
        return pedalboard.time_stretch(segment, sample_rate, factor, high_quality=False), self.landing(first, speeds[0])
