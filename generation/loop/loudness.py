"""Loudness: -14 LUFS integrated (ITU-R BS.1770 via pyloudnorm) under a true-peak ceiling."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

TRUE_PEAK_OVERSAMPLING = 4
WRAP_CONTEXT = 64  # samples from the other end, so the peak across the wrap counts too
LIMITER_WINDOW_S = 0.005  # gain dips last about twice this: short enough not to pump
LIMITER_MARGIN_DB = 0.2  # the smoothed gain can let inter-sample peaks creep up a little
LIMITER_PASSES = 3


def true_peak_dbtp(audio: np.ndarray) -> float:
    """Oversampled peak of a loop [C, N] in dBTP, measured across its wrap."""
    wrapped = np.concatenate([audio[:, -WRAP_CONTEXT:], audio, audio[:, :WRAP_CONTEXT]], axis=1)
    peak = float(np.max(np.abs(resample_poly(wrapped, TRUE_PEAK_OVERSAMPLING, 1, axis=1))))
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of [C, N]; loops shorter than one 400 ms block are measured tiled."""
    block = int(0.4 * sample_rate) + 1
    measured = np.tile(audio, (1, -(-block // audio.shape[1]))) if audio.shape[1] < block else audio
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(measured.T.astype(np.float64)))


def _sample_peaks(audio: np.ndarray) -> np.ndarray:
    """[N] oversampled peak around each sample over all channels (the loop read circularly)."""
    wrapped = np.concatenate([audio[:, -WRAP_CONTEXT:], audio, audio[:, :WRAP_CONTEXT]], axis=1)
    over = np.abs(resample_poly(wrapped, TRUE_PEAK_OVERSAMPLING, 1, axis=1)).max(axis=0)
    per_sample = over.reshape(-1, TRUE_PEAK_OVERSAMPLING).max(axis=1)
    return per_sample[WRAP_CONTEXT:-WRAP_CONTEXT]


def limit(audio: np.ndarray, sample_rate: int, ceiling_dbtp: float) -> np.ndarray:
    """Hold [C, N]'s true peak under the ceiling with a look-ahead gain (circular, so the wrap too).

    The needed gain is min-filtered then averaged over the same span, so around every peak the
    gain is already down when the peak arrives and recovers smoothly after it.
    """
    ceiling = 10 ** ((ceiling_dbtp - LIMITER_MARGIN_DB) / 20)
    span = max(3, round(LIMITER_WINDOW_S * sample_rate))
    needed = np.minimum(1.0, ceiling / np.maximum(_sample_peaks(audio), 1e-12))
    if needed.min() >= 1.0:
        return audio
    gain = uniform_filter1d(minimum_filter1d(needed, 2 * span + 1, mode="wrap"), 2 * span + 1, mode="wrap")
    return (audio * gain).astype(np.float32)


def normalise(audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_dbtp: float) -> tuple[np.ndarray, float]:
    """Bring [C, N] to `target_lufs` with its true peak under the ceiling; returns (audio, LUFS).

    Limiting lowers the loudness a little, so gain and limiter alternate a few passes.
    """
    loudness = integrated_lufs(audio, sample_rate)
    if not math.isfinite(loudness):
        return audio, loudness
    out = audio
    for _ in range(LIMITER_PASSES):
        out = limit(out * np.float32(10 ** ((target_lufs - loudness) / 20)), sample_rate, ceiling_dbtp)
        loudness = integrated_lufs(out, sample_rate)
        if abs(loudness - target_lufs) < 0.1:
            break
    overshoot = true_peak_dbtp(out) - ceiling_dbtp
    if overshoot > 0:  # never leave a loop over the ceiling, even if that costs loudness
        out = out * np.float32(10 ** (-overshoot / 20))
        loudness -= overshoot
    return out.astype(np.float32), loudness
