"""Key matching: move a loop to a target key by the shortest interval, keeping tempo, length and seam.

Pitch shifting is Rubber Band's (through pedalboard), never resampling, so the tempo and every
sample position of the beat grid stay. A loop is circular: it is shifted with its own end before
its start and its start after its end, so the shifter sees what a listener hears around the wrap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pedalboard
from scipy.signal import hilbert

from .detect import KeyEstimate, detect_key
from .keys import Key, shift_semitones

WRAP_CONTEXT_S = 0.5  # loop audio processed before and after the loop, so Rubber Band's edges fall outside it
WRAP_CROSSFADE_S = 0.01  # the head blends in from the shifted audio that followed the end
CALIBRATION_CLICKS = 6  # impulses whose shifted positions give the shifter's latency
CALIBRATION_SPACING_S = 0.2


@dataclass(frozen=True)
class KeyMatch:
    """A loop moved to `target`: `audio` [C, T] float32, T exactly the input's length."""

    audio: np.ndarray
    source: KeyEstimate
    target: Key
    shift_semitones: int
    """Semitones applied, -6..+5; 0 when the loop was already in key or has no key."""


def _rubber_band(audio: np.ndarray, sample_rate: int, semitones: int) -> np.ndarray:
    """[C, T] -> [C, T] shifted by `semitones`, same length and tempo.

    Rubber Band R2 with the short window: R3 (`high_quality`) drifts up to ~1.3 ms/s against the
    input when shifting, and R2's standard window smears drum hits (up to 40 ms on the beat grid);
    the short window keeps hits within ~5 ms.
    """
    return pedalboard.time_stretch(
        np.ascontiguousarray(audio, dtype=np.float32), sample_rate, stretch_factor=1.0,
        pitch_shift_in_semitones=float(semitones), high_quality=False, use_long_fft_window=False,
    )


@functools.cache
def _latency_samples(sample_rate: int, semitones: int) -> int:
    """How many samples late (negative: early) Rubber Band puts what it shifts; measured on clicks.

    pedalboard does not compensate it, and it depends on the shift (about -5..+7 ms at 32 kHz).
    """
    spacing = round(CALIBRATION_SPACING_S * sample_rate)
    clicks = spacing * np.arange(1, CALIBRATION_CLICKS + 1)
    impulses = np.zeros((1, spacing * (CALIBRATION_CLICKS + 1)), dtype=np.float32)
    impulses[0, clicks] = 1.0
    envelope = np.abs(hilbert(_rubber_band(impulses, sample_rate, semitones)[0]))
    half = spacing // 2
    return round(float(np.mean([np.argmax(envelope[click - half : click + half]) - half for click in clicks])))


def pitch_shift_loop(loop: np.ndarray, sample_rate: int, semitones: int) -> np.ndarray:
    """A [C, N] loop shifted by `semitones`: [C, N] float32, on the same sample grid, seamless.

    The loop is shifted circularly (with WRAP_CONTEXT_S of its end before it and of its start
    after it), cut where its first sample went, and its head crossfaded from the shifted audio
    that followed its end, so the wrap flows as in the original.
    """
    length = loop.shape[1]
    context = round(WRAP_CONTEXT_S * sample_rate)
    fade = min(round(WRAP_CROSSFADE_S * sample_rate), length)
    circular = loop[:, np.arange(-context, length + context) % length]
    shifted = _rubber_band(circular, sample_rate, semitones)
    start = context + _latency_samples(sample_rate, semitones)
    body = shifted[:, start : start + length].copy()
    follow = shifted[:, start + length : start + length + fade]
    # Both sides come from the same input at the same times; only their phases differ, which no
    # lag can align, so an equal-power blend is all the wrap needs.
    t = (np.arange(fade) + 0.5) / fade
    body[:, :fade] = np.sin(0.5 * np.pi * t) * body[:, :fade] + np.cos(0.5 * np.pi * t) * follow
    return body


def match_key(audio: np.ndarray, sample_rate: int, target: Key, source: KeyEstimate | None = None) -> KeyMatch:
    """`audio` (a loop, [C, T] or [T] float32) moved to `target` by the shortest interval.

    `source` is the loop's detected key (detected here when not given). Audio with no key, or
    already in key (the target or its relative), comes back unchanged with a shift of 0.
    Loudness is left to the caller: a shift moves it by up to ~-3 LU and the true peak by ~+-1 dB,
    so a loop engine normalises after matching.
    """
    loop = np.asarray(audio, dtype=np.float32)
    loop = loop[None, :] if loop.ndim == 1 else loop
    source = detect_key(loop, sample_rate) if source is None else source
    semitones = 0 if source.key is None else shift_semitones(source.key, target)
    if semitones == 0:
        return KeyMatch(loop, source, target, 0)
    return KeyMatch(pitch_shift_loop(loop, sample_rate, semitones), source, target, semitones)
