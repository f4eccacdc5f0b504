"""Beat-by-beat warping, like a DAW's warp markers: each beat of the window moved onto the exact grid.

One stretch ratio per loop cannot straighten a tempo that wavers inside the window (a live player,
the model's own drift). Here every beat of the window is a marker: its source time is mapped to
its place on the requested grid. Beats the tracker places a few ms off a steady grid are not
followed (a dead band), so a steady source is stretched by one ratio, as before. A window that is
warped is cut at its markers into runs of beats that share one ratio, and Rubber Band stretches each
run at its own fixed ratio: a fixed ratio lands every marker exactly, where one call given a ratio
per sample lands them 2-15 ms off (it applies a change with a lag). Runs are joined by a short
crossfade that ends just before the next run's first marker, on the beat's attack, so no attack is
ever crossfaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pedalboard

WARP_DEAD_BAND_S = 0.004  # a beat this close to the window's straight grid stays on it: tracker noise, not drift
# A window whose beats all sit this close to a straight grid is stretched at one ratio: tracker
# noise, not drift (following it made the real corpus's steady rock worse).
WARP_MIN_S = 0.01
MAX_BEAT_WARP = 0.1  # one beat is stretched at most this much more or less than the window's period
STRETCH_EPSILON = 1e-4  # closer than this to 1, the stretch is skipped (under 1 ms per 8 s)
# Rubber Band R2 (pedalboard, offline) keeps about this input sample in place: at a ratio r, output
# sample k plays input PIVOT + (k - PIVOT) x r, not k x r (measured on clicks at 32 and 44.1 kHz, r
# 0.9-1.1). Ignoring it puts the loop's first beat up to 3 ms off its start at a 10 % stretch.
RUBBER_BAND_PIVOT = 1150
RUN_CONTEXT_S = 0.05  # audio stretched on each side of a run, so Rubber Band's edges fall outside it
JOIN_FADE_S = 0.006  # the crossfade from one run to the next ...
JOIN_LEAD_S = 0.002  # ... ends this long before the next run's first marker (where that beat's attack starts)


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


def rubber_band_landing(input_sample: float, speed: float) -> int:
    """Where input sample `input_sample` lands in Rubber Band's output at a fixed `speed` (see RUBBER_BAND_PIVOT)."""
    return round(RUBBER_BAND_PIVOT + (input_sample - RUBBER_BAND_PIVOT) / speed)


def _played(segment: np.ndarray, sample_rate: int, speed: float, start: float, length: int) -> np.ndarray:
    """[C, length]: output sample k plays `segment` [C, M] at source sample start + k x speed (zeros outside it).

    Only the source it plays, and RUN_CONTEXT_S on each side, goes through Rubber Band.
    """
    out = np.zeros((segment.shape[0], length), dtype=np.float32)
    if abs(speed - 1.0) <= STRETCH_EPSILON:
        head = round(start)
    else:
        context = round(RUN_CONTEXT_S * sample_rate)
        low = max(0, math.floor(start) - context)
        high = min(segment.shape[1], math.ceil(start + length * speed) + context)
        segment = pedalboard.time_stretch(np.ascontiguousarray(segment[:, low:high]), sample_rate, speed, high_quality=False)
        head = rubber_band_landing(start - low, speed)
    piece = segment[:, max(0, head) : head + length]
    skipped = max(0, -head)  # output before the segment's first sample stays silent
    out[:, skipped : skipped + piece.shape[1]] = piece[:, : length - skipped]
    return out


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

    @property
    def runs(self) -> np.ndarray:
        """[R + 1] marker indices from 0 to B: runs of consecutive beats that one ratio lands, each
        marker within the rounding of both ends (2 samples), greedily from the first."""
        bounds, first = [0], 0
        for last in range(2, len(self.source)):
            speed = (self.source[last] - self.source[first]) / (self.output[last] - self.output[first])
            landed = self.source[first] + speed * (self.output[first : last + 1] - self.output[first])
            if np.abs(landed - self.source[first : last + 1]).max() > 2:
                bounds.append(last - 1)
                first = last - 1
        return np.array([*bounds, len(self.source) - 1])

    def stretch(self, segment: np.ndarray, sample_rate: int, first: int) -> tuple[np.ndarray, int]:
        """Stretch `segment` [C, M] (source samples from `first` on) so each marker lands on its grid line.

        Audio before the first marker goes at the first run's speed, after the last at the last
        one's. Returns the stretched audio and where the first marker landed in it.
        """
        if not self.steady:
            return self._run_by_run(segment, sample_rate, first)
        mean = self.mean_speed
        if abs(mean - 1.0) <= STRETCH_EPSILON:
            return segment, round((self.source[0] - first) / mean)
        # Rubber Band's R3 engine (high_quality=True) drifts ~0.2 % against the nominal ratio inside
        # the buffer; R2 keeps it, so the bar grid stays exact (from where its pivot puts the first marker).
        stretched = pedalboard.time_stretch(segment, sample_rate, mean, high_quality=False)
        return stretched, rubber_band_landing(self.source[0] - first, mean)

    def _run_by_run(self, segment: np.ndarray, sample_rate: int, first: int) -> tuple[np.ndarray, int]:
        """`stretch` for a window of several runs: each run at its own fixed ratio, crossfaded into the
        next over JOIN_FADE_S ending JOIN_LEAD_S before that run's first marker."""
        bounds = self.runs
        source, output = self.source - first, self.output  # source samples from the segment's start
        speeds = np.diff(source[bounds]) / np.diff(output[bounds])  # [R]
        offset = round(source[0] / speeds[0])  # the first marker's place: output k of run r plays ...
        origins = source[bounds[:-1]] - (offset + output[bounds[:-1]]) * speeds  # ... origins[r] + k x speeds[r]
        total = max(0, offset + int(output[-1]) + int((segment.shape[1] - source[-1]) / speeds[-1]))
        fade = max(1, round(JOIN_FADE_S * sample_rate))
        joins = offset + output[bounds[1:-1]] - round(JOIN_LEAD_S * sample_rate)  # [R - 1] where each crossfade ends
        starts, ends = np.r_[0, joins - fade], np.r_[joins, total]
        ramp = np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / fade) ** 2  # in and out sum to one: the runs are one sound
        audio = np.zeros((segment.shape[0], total), dtype=np.float32)
        for run, speed in enumerate(speeds):
            begin, end = int(starts[run]), min(int(ends[run]), total)  # a short source ends inside the window
            if end <= begin:
                break
            piece = _played(segment, sample_rate, float(speed), origins[run] + begin * speed, end - begin)
            if run > 0:
                piece[:, :fade] *= ramp[: piece.shape[1]]
            if run < len(speeds) - 1 and end == ends[run]:
                piece[:, -fade:] *= ramp[::-1]
            audio[:, begin:end] += piece
        return audio, offset
