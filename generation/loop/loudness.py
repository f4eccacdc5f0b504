"""Loudness: -14 LUFS integrated (ITU-R BS.1770 via pyloudnorm) under a true-peak ceiling."""

from __future__ import annotations

import functools
import math

import numpy as np
import pyloudnorm
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

TRUE_PEAK_OVERSAMPLING = 4
LIMITER_WINDOW_S = 0.005  # gain dips last about twice this: short enough not to pump
LIMITER_MARGIN_DB = 0.2  # the smoothed gain can let inter-sample peaks creep up a little
LIMITER_PASSES = 3
CHUNK = 1 << 16  # samples interpolated at a time: bounds the gathered windows' memory


@functools.cache
def _interpolator() -> np.ndarray:
    """[2 R + 1, TRUE_PEAK_OVERSAMPLING] resample_poly's 4x filter, one column per phase.

    Row k, column p weighs sample m - R + k in the value at m + p / TRUE_PEAK_OVERSAMPLING: read
    from resample_poly's own impulse response, so this is its measure, computed only where needed.
    """
    centre = 64  # further from the ends than the filter reaches
    response = resample_poly(np.eye(1, 2 * centre + 1, centre)[0], TRUE_PEAK_OVERSAMPLING, 1)
    phases = response.reshape(-1, TRUE_PEAK_OVERSAMPLING)  # row m: the values at m + p / 4
    used = np.flatnonzero(np.abs(phases).max(axis=1) > 0)
    reach = int(max(centre - used[0], used[-1] - centre))
    return phases[centre - reach : centre + reach + 1][::-1].copy()


def _nearby_max(level: np.ndarray, reach: int) -> np.ndarray:
    """[N] the largest of `level` [N] within `reach` samples either side of each, read circularly.

    By doubling spans (a max of two maxima), a few passes over the loop: maximum_filter1d takes 20x longer here.
    """
    window, span = 2 * reach + 1, 1
    most = np.concatenate([level[-reach:], level, level[:reach]])  # most[i]: the max of [i, i + span) of this
    while 2 * span <= window:
        most, span = np.maximum(most[:-span], most[span:]), 2 * span
    return np.maximum(most[: len(level)], most[window - span : window - span + len(level)])


def _sample_peaks(audio: np.ndarray, floor: float) -> np.ndarray:
    """[N] oversampled peak around each sample over all channels, the loop [C, N] read circularly.

    Exact where it can exceed `floor`; elsewhere an upper bound no higher than `floor` (the
    filter's absolute sum times the loudest sample it reaches), which is all a comparison with
    the floor needs. Loud passages are a small part of a loop, so little is interpolated.
    """
    taps = _interpolator().astype(np.result_type(audio, np.float32))
    reach = taps.shape[0] // 2
    level = np.abs(audio).max(axis=0)
    peaks = _nearby_max(level, reach) * np.abs(taps).sum(axis=0).max()
    wrapped = np.concatenate([audio[:, -reach:], audio, audio[:, :reach]], axis=1)
    around = sliding_window_view(wrapped, 2 * reach + 1, axis=1)  # [C, N, 2 R + 1], a view
    loud = np.flatnonzero(peaks > floor)
    for part in np.split(loud, range(CHUNK, len(loud), CHUNK)):
        peaks[part] = np.abs(around[:, part] @ taps).max(axis=(0, 2))
    return peaks


def true_peak_dbtp(audio: np.ndarray, above_dbtp: float | None = None) -> float:
    """Oversampled peak of a loop [C, N] in dBTP, measured across its wrap.

    With `above_dbtp`, exact only when the peak is above it (otherwise a value no higher than it):
    all a comparison with a ceiling needs, and only the loud passages are interpolated.
    """
    floor = float(np.abs(audio).max(initial=0.0)) if above_dbtp is None else 10 ** (above_dbtp / 20)
    peak = float(_sample_peaks(audio, floor).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of [C, N]; loops shorter than one 400 ms block are measured tiled."""
    block = int(0.4 * sample_rate) + 1
    measured = np.tile(audio, (1, -(-block // audio.shape[1]))) if audio.shape[1] < block else audio
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(measured.T.astype(np.float64)))


def limit(audio: np.ndarray, sample_rate: int, ceiling_dbtp: float) -> np.ndarray:
    """Hold [C, N]'s true peak under the ceiling with a look-ahead gain (circular, so the wrap too).

    The needed gain is min-filtered then averaged over the same span, so around every peak the
    gain is already down when the peak arrives and recovers smoothly after it.
    """
    ceiling = 10 ** ((ceiling_dbtp - LIMITER_MARGIN_DB) / 20)
    span = max(3, round(LIMITER_WINDOW_S * sample_rate))
    needed = np.minimum(1.0, ceiling / np.maximum(_sample_peaks(audio, ceiling), 1e-12))
    if needed.min() >= 1.0:
        return audio
    gain = uniform_filter1d(minimum_filter1d(needed, 2 * span + 1, mode="wrap"), 2 * span + 1, mode="wrap")
    return (audio * gain).astype(np.float32, copy=False)


def normalise(audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_dbtp: float) -> tuple[np.ndarray, float]:
    """Bring [C, N] to `target_lufs` with its true peak under the ceiling; returns (audio, LUFS).

    Limiting lowers the loudness a little, so gain and limiter alternate a few passes. A gain
    alone moves the loudness by exactly itself, so only a limited loop is measured again.
    """
    loudness = integrated_lufs(audio, sample_rate)
    if not math.isfinite(loudness):
        return audio, loudness
    out = audio
    for _ in range(LIMITER_PASSES):
        scaled = out * np.float32(10 ** ((target_lufs - loudness) / 20))
        out = limit(scaled, sample_rate, ceiling_dbtp)
        loudness = target_lufs if out is scaled else integrated_lufs(out, sample_rate)
        if abs(loudness - target_lufs) < 0.1:
            break
    overshoot = true_peak_dbtp(out, above_dbtp=ceiling_dbtp) - ceiling_dbtp
    if overshoot > 0:  # never leave a loop over the ceiling, even if that costs loudness
        out = out * np.float32(10 ** (-overshoot / 20))
        loudness -= overshoot
    return out.astype(np.float32, copy=False), loudness
