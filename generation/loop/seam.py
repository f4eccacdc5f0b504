"""The wrap: an equal-power, phase-aligned crossfade with the audio that naturally follows the end.

At the wrap the loop's last sample is followed by its first. We make that first stretch of the
loop start as the source's own continuation (so the wrap is continuous) and crossfade it into
the loop's real head. To avoid comb-filtering, the continuation is time-warped by a small lag,
found by cross-correlation, which it reaches by the crossfade's midpoint; at the wrap itself
it is unwarped, so nothing jumps there. No part of the loop fades towards silence.
"""

from __future__ import annotations

import numpy as np

MAX_LAG_MS = 3.0  # about half a period of 170 Hz: enough to align the fundamentals that matter


def crossfade_samples(crossfade_ms: float, sample_rate: int) -> int:
    return max(2, round(crossfade_ms / 1000 * sample_rate))


def max_lag_samples(sample_rate: int) -> int:
    return round(MAX_LAG_MS / 1000 * sample_rate)


def _warp(length: int) -> np.ndarray:
    """[length] 0 -> 1 smoothstep reached at the crossfade's midpoint."""
    x = np.clip(np.arange(length) / max(1, length // 2), 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _warped(follow: np.ndarray, lags: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """[lags, C, L] reads of `follow` [C, >= L] at positions i + lag * warp(i), linearly interpolated.

    Positions outside `follow` read its first or last sample (as `np.interp` does).
    """
    positions = np.clip(np.arange(len(warp)) + np.asarray(lags, dtype=float)[:, None] * warp, 0, follow.shape[1] - 1)
    left = np.floor(positions).astype(int)
    right = np.minimum(left + 1, follow.shape[1] - 1)
    fraction = positions - left  # [lags, L], broadcast over the channels of follow[:, left] [C, lags, L]
    return (follow[:, left] * (1 - fraction) + follow[:, right] * fraction).transpose(1, 0, 2)


def crossfade_head(body: np.ndarray, follow: np.ndarray, length: int, max_lag: int) -> np.ndarray:
    """Blend the head of `body` [C, N] with `follow` [C, >= length + max_lag], what came after the end.

    Returns a new [C, N] array. `follow[:, 0]` is the sample right after `body`'s last one.
    """
    length = min(length, body.shape[1], follow.shape[1])
    max_lag = max(0, min(max_lag, follow.shape[1] - length))
    t = (np.arange(length) + 0.5) / length
    fade_in, fade_out = np.sin(0.5 * np.pi * t), np.cos(0.5 * np.pi * t)
    warp = _warp(length)
    head = body[:, :length]
    head_mono, follow_mono = head.mean(axis=0), follow.mean(axis=0, keepdims=True)
    weight = fade_in * fade_out  # where both sides are heard, alignment matters most
    lags = np.arange(-max_lag, max_lag + 1)
    # Negative lags read before follow[0]: clip to 0 there (the warp is 0 at the start anyway).
    correlation = (_warped(follow_mono, lags, warp)[:, 0] * (weight * head_mono)).sum(axis=1)
    lag = int(lags[int(np.argmax(correlation))])
    out = body.copy()
    out[:, :length] = fade_in * head + fade_out * _warped(follow, np.array([lag]), warp)[0]
    return out


def crossfade_tail(body: np.ndarray, lead: np.ndarray, length: int, max_lag: int) -> np.ndarray:
    """Blend the tail of `body` [C, N] with `lead` [C, >= length + max_lag], what came before the start.

    Used when nothing follows the end: the end morphs into the audio that leads into the head.
    It is `crossfade_head` in reversed time.
    """
    return crossfade_head(body[:, ::-1], lead[:, ::-1], length, max_lag)[:, ::-1].copy()
