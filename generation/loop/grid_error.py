"""How far a finished loop's onsets sit from its beat grid, measured on the loop itself.

The loop is played as it repeats (its tail before its head, its head after its tail); at every
beat of the requested grid the strongest onset nearby is found, and the error is the median of
their deviations from their own median offset. The offset itself is left out: flux peaks lag
the attacks the loop is cut on by a constant few ms, and a constant lag is not a wandering grid.
"""

from __future__ import annotations

import librosa
import numpy as np

from .analysis import mono

HOP_S = 0.0025  # onset frames 2.5 ms apart, peaks refined between them
SEARCH_S = 0.06  # an onset belongs to a grid beat when this close (and within a quarter beat)
WRAP_S = 0.25  # audio played around the loop, so its first beat is heard after its last
N_MELS = 64
MIN_FOUND = 0.5  # fewer beats with an onset than this: no grid to judge (pads, a drone)


def _refined(values: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """[P] sub-frame positions of peaks at `peaks` (frame indices) by parabolic interpolation."""
    inner = np.clip(peaks, 1, len(values) - 2)
    left, centre, right = values[inner - 1], values[inner], values[inner + 1]
    curvature = left - 2 * centre + right
    shift = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    return inner + np.clip(shift, -0.5, 0.5)


def grid_error_ms(loop: np.ndarray, sample_rate: int, beats: int) -> float | None:
    """Median deviation (ms) of the onsets of `loop` [C, N] from its grid of `beats` even beats.

    None when fewer than half the beats have an onset near them.
    """
    signal = mono(loop)
    length = len(signal)
    wrap = min(length, round(WRAP_S * sample_rate))
    played = np.concatenate([signal[length - wrap :], signal, signal[:wrap]])
    hop = max(1, round(HOP_S * sample_rate))
    envelope = librosa.onset.onset_strength(y=played, sr=sample_rate, hop_length=hop, n_mels=N_MELS)
    beat_samples = length / beats
    grid = (wrap + beat_samples * np.arange(beats)) / hop  # frame positions of the grid's beats
    radius = max(1, int(min(SEARCH_S * sample_rate, beat_samples / 4) / hop))
    offsets = np.arange(-radius, radius + 1)
    frames = np.clip(np.rint(grid).astype(int)[:, None] + offsets, 0, len(envelope) - 1)
    strongest = envelope[frames].argmax(axis=1)
    peaks = frames[np.arange(beats), strongest]
    # A peak at the search's edge is the slope of an onset outside it; a weak one is no onset.
    found = (strongest > 0) & (strongest < 2 * radius) & (envelope[peaks] > envelope.mean())
    if found.sum() < max(2, MIN_FOUND * beats):
        return None
    deviation = (_refined(envelope, peaks[found]) - grid[found]) * hop / sample_rate * 1000
    return float(np.median(np.abs(deviation - np.median(deviation))))
