"""Sidechain ducking: the drum layer's kick pulls the other layers down a few dB, as producers do.

Kicks are found as sharp rises of the low band (below `KICK_BAND_HZ`, where a kick's body hits
and falls back within a beat while a bass line mostly sustains). Everything is read circularly:
a kick on the downbeat ducks the loop's first samples, and the release of a kick near the end
carries on across the wrap, so the mix stays seamless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import butter, find_peaks, sosfilt

KICK_BAND_HZ = 100.0
DECIMATION = 8  # the kick's low band is read at a rate this many times lower
FRAME_S = 0.005  # envelope frames: fine enough to place an attack within a few ms
SMOOTHING_S = 0.010  # longer than a period of the kick's body, so its envelope does not ripple
RISE_S = 0.030  # a kick's low band climbs to its peak within this
MIN_GAP_S = 0.100  # two kicks closer than this are one
ONSET_FLOOR = 0.3  # a rise smaller than this fraction of the loudest one is not a kick
KICK_SCORE_FLOOR = 0.25
"""Below this score a layer has no kick (pads and keys score ~0.02, a bass ~0.6, drums ~3)."""
DUCK_DEPTH_DB = 6.0
DUCK_ATTACK_S = 0.005  # the gain is down as the kick's attack arrives: the loop is known ahead
DUCK_RELEASE_S = 0.120  # time constant of the recovery; a release this long breathes with the beat


@dataclass(frozen=True)
class Kicks:
    """A layer's kicks: where they start and how hard they hit."""

    seconds: np.ndarray
    """[K] onset times within the loop, ascending."""
    strengths: np.ndarray
    """[K] each kick's low-band rise, relative to the layer's RMS level."""
    loop_seconds: float

    @property
    def score(self) -> float:
        """Low-band attack per second, relative to the layer's level: what tells a drum layer from the rest."""
        return float(self.strengths.sum() / self.loop_seconds)


def _low_envelope(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """The smoothed low-band amplitude of the loop [C, N]: ([F] one value per frame, frames per second)."""
    # The low band needs a few kHz at most: averaging blocks of DECIMATION samples is a cheap
    # anti-alias filter here (its nulls fall on the multiples of the new rate, where aliases come from).
    usable = audio.shape[1] // DECIMATION * DECIMATION
    signal = audio[:, :usable].mean(axis=0).reshape(-1, DECIMATION).mean(axis=1)
    rate = sample_rate / DECIMATION
    sos = butter(4, KICK_BAND_HZ, fs=rate, output="sos")
    settle = min(len(signal), round(rate / 4))  # the filter runs over the loop's end first: its wrap
    low = sosfilt(sos, np.concatenate([signal[-settle:], signal]))[settle:]
    smooth = uniform_filter1d(np.abs(low), max(1, round(SMOOTHING_S * rate)), mode="wrap")
    hop = max(1, round(FRAME_S * rate))
    return smooth[::hop], rate / hop


def find_kicks(audio: np.ndarray, sample_rate: int) -> Kicks:
    """The kicks of a loop [C, N] float32 (any layer: one without kicks gets weak or no onsets)."""
    loop_seconds = audio.shape[1] / sample_rate
    level = float(np.linalg.norm(audio)) / math.sqrt(max(1, audio.size))  # RMS
    envelope, frame_rate = _low_envelope(audio, sample_rate)
    if level == 0.0 or len(envelope) < 3:
        return Kicks(np.zeros(0), np.zeros(0), loop_seconds)
    span = max(1, round(RISE_S / FRAME_S))
    before = minimum_filter1d(envelope, span + 1, origin=span // 2, mode="wrap")  # the lowest of the frames before
    rise = envelope - before
    wrapped = np.concatenate([rise, rise[: span + 1]])  # a kick rising across the wrap is found once
    peaks, _ = find_peaks(wrapped, height=ONSET_FLOOR * rise.max(), distance=max(1, round(MIN_GAP_S / FRAME_S)))
    peaks = np.unique(peaks % len(rise))
    # The onset is where the rise began: the quietest frame in the span before its peak.
    back = np.arange(-span, 1)
    starts = (peaks[:, None] + back[None, :]) % len(envelope)
    onsets = starts[np.arange(len(peaks)), envelope[starts].argmin(axis=1)]
    order = np.argsort(onsets)
    return Kicks(onsets[order] / frame_rate, rise[peaks][order] / level, loop_seconds)


def pick_drum_layer(kicks: Sequence[Kicks | None]) -> int | None:
    """The index of the layer with the strongest low-band onsets; None when none has a kick.

    A layer given as None is not a candidate (the caller leaves out layers that cannot be the
    drums, e.g. pitched ones once keys are detected).
    """
    scores = [each.score if each is not None else -math.inf for each in kicks]
    if not scores or max(scores) < KICK_SCORE_FLOOR:
        return None
    return int(np.argmax(scores))


def duck_gain(kicks: Kicks, samples: int, sample_rate: int, depth_db: float = DUCK_DEPTH_DB) -> np.ndarray:
    """[samples] float32 gain that dips by up to `depth_db` at each kick (scaled by its strength), circularly.

    Each dip ramps down over `DUCK_ATTACK_S` before the onset and recovers exponentially after it;
    overlapping dips take the deeper one.
    """
    attack = max(1, round(DUCK_ATTACK_S * sample_rate))
    tail = np.arange(min(samples, round(5 * DUCK_RELEASE_S * sample_rate)))
    shape = np.concatenate([np.arange(attack) / attack, np.exp(-tail / (DUCK_RELEASE_S * sample_rate))])
    reduction = np.zeros(samples)
    weights = kicks.strengths / kicks.strengths.max() if len(kicks.strengths) else kicks.strengths
    for onset, weight in zip(kicks.seconds, weights):
        at = (round(onset * sample_rate) - attack + np.arange(len(shape))) % samples
        np.maximum.at(reduction, at, weight * shape)
    return (10 ** (-depth_db * reduction / 20)).astype(np.float32)
