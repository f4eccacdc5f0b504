"""Choosing where to cut: every window of `bars` bars that starts on a downbeat, scored.

A window scores well when the bar that follows its end (what plays after the wrap in the
source) sounds like its first bar (harmony, timbre, rhythm), when it starts and ends with the
phrase (the harmony changes at both ends: in half time, or with chords that last two bars,
only every other downbeat starts one), when its beats are evenly spaced, and when its last
bar is not quieter than the rest (models often fade out).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from .analysis import Analysis, level_dbfs
from .tempo import fit_period

MAX_LOCAL_DEVIATION = 0.03  # a window's own tempo stays within 3 % of the source's overall tempo
STABILITY_SCALE = 0.08  # beat jitter (relative to the period) at which stability reaches 0
SPECTRAL_SCALE_DB = 6.0  # mean log-mel difference at which spectral similarity is 1/e
FADE_TOLERANCE_DB = 1.5
# A window whose ends both fall on the phrase's downbeats gains this much: 0.15 misses
# halfchords140, 0.25 trades escape's clean seam for a phrase start.
PHRASE_WEIGHT = 0.2
# A window that ends this little after its clip still fits: it ends with the clip (an uploaded loop of
# exactly its bars, whose tracked beats lag their attacks by up to 25 ms and whose period reads a
# fraction of a ms off).
END_SLACK_S = 0.04


@dataclass(frozen=True)
class Window:
    start: float
    """Source seconds of the window's first downbeat."""
    beat_period: float
    """Local source seconds per target beat, fitted on the window's beats."""
    beats: int
    """Target beats in the window (bars x beats per bar)."""
    stability: float
    """0..1; 1 is perfectly even beats."""
    seam: float
    """0..1; how much what follows the end resembles the start."""
    fade_db: float
    """Level of the last bar relative to the median bar, dB (negative: a fade)."""
    complete: bool
    """False when the source ends before the window does (it will be padded)."""
    first_beat: int
    """Index of its first beat in the tracked beats it was chosen from."""
    phrase: float = 1.0
    """0..1; how well its start and end fall on the downbeats where the harmony changes most (1: both)."""

    @property
    def end(self) -> float:
        return self.start + self.beats * self.beat_period

    @property
    def score(self) -> float:
        fade_penalty = 0.1 * max(0.0, -self.fade_db - FADE_TOLERANCE_DB)
        return (
            self.seam + 0.5 * self.stability + PHRASE_WEIGHT * self.phrase - fade_penalty
            - (0.0 if self.complete else 1.0)
        )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else 0.0


def bar_similarity(analysis: Analysis, first: float, second: float, seconds: float) -> float:
    """0..1 likeness of the audio at two source times over `seconds`: harmony, timbre, rhythm."""
    a, b = analysis.span(first, seconds), analysis.span(second, seconds)
    frames = min(a.stop - a.start, b.stop - b.start)
    if frames < 2:
        return 0.0
    a, b = slice(a.start, a.start + frames), slice(b.start, b.start + frames)
    harmonic = _cosine(analysis.chroma[:, a].mean(axis=1), analysis.chroma[:, b].mean(axis=1))
    spectral_gap = np.abs(analysis.log_mel[:, a].mean(axis=1) - analysis.log_mel[:, b].mean(axis=1)).mean()
    spectral = float(np.exp(-spectral_gap / SPECTRAL_SCALE_DB))
    onsets_a, onsets_b = analysis.onset[a], analysis.onset[b]
    flat = onsets_a.std() == 0 or onsets_b.std() == 0  # silence: no rhythm to compare
    rhythmic = 0.0 if flat else float(np.clip(np.corrcoef(onsets_a, onsets_b)[0, 1], 0.0, 1.0))
    return (harmonic + spectral + rhythmic) / 3.0


def harmonic_change(analysis: Analysis, at: float, seconds: float) -> float:
    """0..1 change of harmony at a source time: 1 - cosine of the mean chroma `seconds` before and after.

    0 when either side falls outside the clip (no evidence).
    """
    if at - seconds < 0 or at + seconds > analysis.duration:
        return 0.0
    before, after = analysis.span(at - seconds, seconds), analysis.span(at, seconds)
    return 1.0 - _cosine(analysis.chroma[:, before].mean(axis=1), analysis.chroma[:, after].mean(axis=1))


def seam_similarity(analysis: Analysis, start: float, end: float, bar_seconds: float) -> float:
    """How well the end of [start, end) flows into its start.

    Compares the bar after the end with the first bar; when the source stops at the end, the
    last bar with the bar before the start instead; with neither, the last bar with the first.
    """
    if end + bar_seconds / 4 <= analysis.duration:
        return bar_similarity(analysis, end, start, min(bar_seconds, analysis.duration - end))
    if start >= bar_seconds:
        return bar_similarity(analysis, end - bar_seconds, start - bar_seconds, bar_seconds)
    return 0.8 * bar_similarity(analysis, end - bar_seconds, start, bar_seconds)


def _bar_levels(signal: np.ndarray, sample_rate: int, start: float, bar_seconds: float, bars: int) -> np.ndarray:
    edges = np.rint((start + bar_seconds * np.arange(bars + 1)) * sample_rate).astype(int)
    return np.array([level_dbfs(signal[a:b]) for a, b in itertools.pairwise(edges)])


def score_window(
    analysis: Analysis, signal: np.ndarray, beat_times: np.ndarray, first_beat: int,
    overall_period: float, beats_per_bar: int, bars: int,
) -> Window:
    """The window of `bars` bars from beat `first_beat` of `beat_times` ([B] seconds)."""
    beats = bars * beats_per_bar
    own = beat_times[first_beat : first_beat + beats + 1]
    period, jitter = overall_period, 0.0
    if len(own) >= max(3, beats_per_bar):
        fitted, _, jitter = fit_period(own)
        period = float(np.clip(fitted, overall_period * (1 - MAX_LOCAL_DEVIATION), overall_period * (1 + MAX_LOCAL_DEVIATION)))
    start = float(beat_times[first_beat])
    end = start + beats * period
    bar_seconds = beats_per_bar * period
    levels = _bar_levels(signal, analysis.sample_rate, start, bar_seconds, bars)
    finite = levels[np.isfinite(levels)]
    fade = float(levels[-1] - np.median(finite)) if np.isfinite(levels[-1]) and len(finite) else -np.inf
    return Window(
        start=start,
        beat_period=period,
        beats=beats,
        stability=float(np.clip(1.0 - jitter / period / STABILITY_SCALE, 0.0, 1.0)),
        seam=seam_similarity(analysis, start, end, bar_seconds),
        fade_db=fade,
        complete=end <= analysis.duration + END_SLACK_S,
        first_beat=first_beat,
    )


def phrase_weights(analysis: Analysis, beat_times: np.ndarray, downbeats: np.ndarray, bar_seconds: float) -> np.ndarray:
    """[2] how much the harmony changes, on average, on the even and on the odd downbeats, over the larger.

    Equal when chords change every bar; in half time or with two-bar chords, one parity holds the
    changes, and a loop should start (and end) there.
    """
    changes = np.array([harmonic_change(analysis, float(beat_times[index]), bar_seconds) for index in downbeats])
    means = np.array([
        float(np.mean(part[part > 0])) if np.any(part > 0) else 0.0 for part in (changes[0::2], changes[1::2])
    ])
    return means / means.max() if means.max() > 0 else np.ones(2)


def best_window(
    analysis: Analysis, signal: np.ndarray, beat_times: np.ndarray, downbeats: np.ndarray,
    overall_period: float, beats_per_bar: int, bars: int,
) -> Window:
    """The highest-scoring window over all downbeats (beat indices [D]); the first if none fits."""
    weights = phrase_weights(analysis, beat_times, downbeats, beats_per_bar * overall_period)
    candidates = [
        dataclasses.replace(
            score_window(analysis, signal, beat_times, int(first), overall_period, beats_per_bar, bars),
            phrase=0.5 * (weights[order % 2] + weights[(order + bars) % 2]),
        )
        for order, first in enumerate(downbeats)
    ]
    return max(candidates, key=lambda window: window.score)
