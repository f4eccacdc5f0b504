"""Loudness and true peak: the loop measured by pyloudnorm's meter and by a full 4x resample_poly."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest
from scipy.signal import resample_poly

from generation.loop.loudness import integrated_lufs, normalise, true_peak_dbtp

RATE = 32000


def full_true_peak_dbtp(loop: np.ndarray) -> float:
    """The whole loop [C, N] oversampled 4x, with a wrap's worth of the other end on each side."""
    wrapped = np.concatenate([loop[:, -64:], loop, loop[:, :64]], axis=1)
    return 20 * math.log10(float(np.abs(resample_poly(wrapped, 4, 1, axis=1)).max()))


def pyloudnorm_lufs(audio: np.ndarray, sample_rate: int) -> float:
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T.astype(np.float64)))


def groove(seconds: float, sample_rate: int = RATE, channels: int = 2, punch: float = 1.0) -> np.ndarray:
    """[channels, T] float32: kicks and hats (`punch` times louder) over a two-note pad, with a near-silent bar."""
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    kick = np.sin(2 * np.pi * 55 * t) * np.exp(-(t % 0.5) * 18)
    hats = rng.standard_normal((channels, len(t))) * np.exp(-(t % 0.25) * 60)
    pad = np.sin(2 * np.pi * 220 * t + np.arange(channels)[:, None]) + np.sin(2 * np.pi * 277 * t)
    audio = punch * (0.3 * kick + 0.05 * hats) + 0.25 * pad
    audio[:, (t > seconds / 2) & (t < seconds / 2 + 1.0)] *= 1e-3  # a breakdown the gates must leave out
    return audio.astype(np.float32)


def test_silence_has_no_loudness() -> None:
    assert integrated_lufs(np.zeros((2, RATE), np.float32), RATE) == -math.inf


def test_true_peak_sees_peaks_between_samples_and_across_the_wrap() -> None:
    # A quarter-rate sine sampled 45 degrees off its crests: every sample is at 0.707, the wave at 1.
    n = np.arange(4000)
    loop = np.sin(np.pi / 2 * n + np.pi / 4)[None, :].astype(np.float32) * np.float32(0.5)
    loop[:, :8] = loop[:, -8:] = np.array([0.9, -0.9] * 4, dtype=np.float32)  # loud either side of the wrap
    assert true_peak_dbtp(loop) == pytest.approx(full_true_peak_dbtp(loop), abs=1e-4)
    assert true_peak_dbtp(loop) > 20 * math.log10(0.9) + 1.0


@pytest.mark.parametrize("punch", [3.0, 1.0], ids=["peaky-limited", "gain-only"])
def test_normalise_meets_the_target_under_the_ceiling(punch: float) -> None:
    out, lufs = normalise(groove(6.0, punch=punch), RATE, -14.0, -1.0)
    assert abs(pyloudnorm_lufs(out, RATE) - (-14.0)) < 0.1
    assert lufs == pytest.approx(pyloudnorm_lufs(out, RATE), abs=1e-3)
    assert full_true_peak_dbtp(out) <= -1.0 + 1e-3
