"""How far a finished loop's onsets sit from its beat grid, measured on the loop itself.

Around every beat of the requested grid (the loop read as it repeats, so its first beat follows
its last) the strongest onset is found, and the error is the median of their deviations from
their own median offset. The offset itself is left out: flux peaks lag the attacks the loop is
cut on by a constant few ms, and a constant lag is not a wandering grid. Only the audio around
the beats is analysed, a few tenths of the loop.
"""

from __future__ import annotations

import librosa
import numpy as np

from .analysis import mono

HOP_S = 0.0025  # onset frames 2.5 ms apart, peaks refined between them
SEARCH_S = 0.06  # an onset belongs to a grid beat when this close (and within a quarter beat)
N_FFT = 1024
N_MELS = 64
MIN_FOUND = 0.5  # fewer beats with an onset than this: no grid to judge (pads, a drone)


def grid_error_ms(loop: np.ndarray, sample_rate: int, beats: int) -> float | None:
    """Median deviation (ms) of the onsets of `loop` [C, N] from its grid of `beats` even beats.

    None when fewer than half the beats have an onset near them.
    """
    signal = mono(loop)
    beat_samples = len(signal) / beats
    hop = max(1, round(HOP_S * sample_rate))
    reach = max(hop, int(min(SEARCH_S * sample_rate, beat_samples / 4)))  # samples searched either side
    grid = beat_samples * np.arange(beats)
    first = np.rint(grid).astype(int) - reach - N_FFT
    snippets = np.take(signal, first[:, None] + np.arange(2 * (reach + N_FFT)), mode="wrap")  # [beats, L], wrapping
    envelope = librosa.onset.onset_strength(y=snippets, sr=sample_rate, hop_length=hop, n_fft=N_FFT, n_mels=N_MELS)
    centre = (grid - first) / hop  # each beat's frame in its snippet
    radius = reach // hop
    frames = np.rint(centre).astype(int)[:, None] + np.arange(-radius, radius + 1)
    values = np.take_along_axis(envelope, frames, axis=1)  # [beats, 2 radius + 1]
    strongest = values.argmax(axis=1)
    rows = np.arange(beats)
    # A peak at the search's edge is the slope of an onset outside it; a weak one is no onset.
    found = (strongest > 0) & (strongest < 2 * radius) & (values[rows, strongest] > envelope.mean())
    if found.sum() < max(2, MIN_FOUND * beats):
        return None
    rows, peak = rows[found], strongest[found]
    left, middle, right = values[rows, peak - 1], values[rows, peak], values[rows, peak + 1]
    curvature = left - 2 * middle + right
    shift = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    deviation = (frames[rows, peak] + np.clip(shift, -0.5, 0.5) - centre[rows]) * hop / sample_rate * 1000
    return float(np.median(np.abs(deviation - np.median(deviation))))
