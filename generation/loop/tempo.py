"""Tempo, beats and downbeats of a source, estimated knowing the tempo the loop must have.

Periods are in source seconds per *target* beat: a half-time groove at 70 BPM asked for at 140
has a beat period of 60/140 s, because one of its beats spans two beats of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np
from scipy.ndimage import maximum_filter1d

from .analysis import Analysis

# Source pulse / target beat ratios a model plays when asked for a tempo, with a prior that
# prefers the literal tempo when two readings explain the onsets about as well.
METRIC_RELATIONS: dict[float, float] = {1.0: 1.0, 0.5: 0.9, 2.0: 0.9, 2.0 / 3.0: 0.8, 1.5: 0.8}
SEARCH_SPAN = 2.0  # search this many stretch limits around each relation, to see tempos past the limit
PEAK_RADIUS_S = 0.015
MAX_BACKTRACK_S = 0.03  # an onset counts for a beat when its peak is this close
LOW_HIT_S = 0.06  # a beat's low-end hit is its loudest low-band level this soon after it
LOW_FLOOR_DB = 40.0  # low-band levels are floored this far under the loudest beat's


@dataclass(frozen=True)
class TempoEstimate:
    beat_period: float
    """Source seconds per target beat."""
    relation: float
    """Source pulse / target beat (1, 1/2, 2, 2/3 or 3/2)."""
    pulse_strength: float
    """Normalised autocorrelation of the onsets at the beat period, 0 (no pulse) to 1."""

    @property
    def bpm(self) -> float:
        """The source tempo counted in target beats."""
        return 60.0 / self.beat_period


def _autocorrelation(envelope: np.ndarray, max_lag: int) -> np.ndarray:
    """[max_lag + 1] autocorrelation of a mean-removed envelope, 1 at lag 0."""
    centred = envelope - envelope.mean()
    ac = librosa.autocorrelate(centred, max_size=max_lag + 1)
    return ac / ac[0] if ac[0] > 0 else np.zeros(max_lag + 1)


def _refined_peak(values: np.ndarray, index: int) -> float:
    """Sub-sample position of a peak by parabolic interpolation."""
    if 0 < index < len(values) - 1:
        left, centre, right = values[index - 1 : index + 2]
        curvature = left - 2 * centre + right
        if curvature < 0:
            return index + 0.5 * (left - right) / curvature
    return float(index)


def estimate_tempo(analysis: Analysis, target_bpm: float, max_stretch: float) -> TempoEstimate:
    """The best-supported beat period near the target, over all metric relations."""
    span = min(0.45, max_stretch * SEARCH_SPAN)
    longest_pulse = 60.0 / (target_bpm * min(METRIC_RELATIONS) * (1 - span))
    max_lag = min(len(analysis.onset) - 1, int(2 * longest_pulse * analysis.frame_rate) + 2)
    ac = _autocorrelation(analysis.onset, max_lag)
    best: tuple[float, float, float, float] | None = None  # (score, pulse lag, relation, strength)
    for relation, prior in METRIC_RELATIONS.items():
        pulse_bpm = target_bpm * relation
        lags = np.arange(
            max(1, int(60.0 / (pulse_bpm * (1 + span)) * analysis.frame_rate)),
            int(60.0 / (pulse_bpm * (1 - span)) * analysis.frame_rate) + 1,
        )
        lags = lags[lags <= max_lag]
        if not len(lags):
            continue
        # A comb: a true pulse also correlates at twice its period.
        doubled = np.where(2 * lags <= max_lag, ac[np.minimum(2 * lags, max_lag)], 0.0)
        comb = ac[lags] + 0.5 * doubled
        peak = int(np.argmax(comb))
        score = comb[peak] * prior
        if best is None or score > best[0]:
            lag = lags[0] + _refined_peak(comb, peak)
            best = (score, lag, relation, float(ac[lags[peak]]))
    if best is None:  # a clip shorter than one beat
        return TempoEstimate(60.0 / target_bpm, 1.0, 0.0)
    _, lag, relation, strength = best
    return TempoEstimate(lag / analysis.frame_rate * relation, relation, max(0.0, strength))


def track_beats(analysis: Analysis, beat_period: float) -> np.ndarray:
    """Beat times in seconds [B], by dynamic programming at the given period (drift tolerated)."""
    _, frames = librosa.beat.beat_track(
        onset_envelope=analysis.onset, sr=analysis.sample_rate, hop_length=analysis.hop,
        bpm=60.0 / beat_period, units="frames",
    )
    return np.asarray(frames, dtype=float) / analysis.frame_rate


def onset_starts(analysis: Analysis, times: np.ndarray) -> np.ndarray:
    """Times [B] moved back to where their onsets start rising (flux peaks lag the attack)."""
    frames = analysis.frame(times)
    starts = librosa.onset.onset_backtrack(frames, analysis.onset)
    lead = np.minimum(frames - starts, round(MAX_BACKTRACK_S * analysis.frame_rate))
    return (frames - lead) / analysis.frame_rate


def fit_period(beat_times: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line through beat times: (period, time of beat 0, residual rms), seconds."""
    index = np.arange(len(beat_times))
    period, intercept = np.polyfit(index, beat_times, 1)
    residual = beat_times - (intercept + period * index)
    return float(period), float(intercept), float(np.sqrt(np.mean(residual**2)))


def _peaks_at(envelope: np.ndarray, frames: np.ndarray, radius: int) -> np.ndarray:
    return maximum_filter1d(envelope, 2 * radius + 1)[frames]


def _zscore(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def _low_hits(analysis: Analysis, frames: np.ndarray, radius: int) -> np.ndarray:
    """[B] peak low-band level (dB) from just before each beat frame to LOW_HIT_S after it.

    A level, not a flux: a bass note right after another (beat 1 after a waltz's "pah" on 3)
    rises little over what still rings, yet is the louder hit.
    """
    offsets = np.arange(-radius, round(LOW_HIT_S * analysis.frame_rate) + 1)
    window = np.clip(frames[:, None] + offsets, 0, len(analysis.low_level) - 1)
    level = analysis.low_level[window].max(axis=1)
    return np.maximum(level, level.max() - LOW_FLOOR_DB)  # beats in silence would swamp the z-scores


def _beat_change(per_beat: np.ndarray) -> np.ndarray:
    """[B] harmonic change into each beat: 1 - cosine of its chroma with the previous beat's."""
    norms = np.linalg.norm(per_beat, axis=0)
    cosine = (per_beat[:, 1:] * per_beat[:, :-1]).sum(axis=0) / np.maximum(norms[1:] * norms[:-1], 1e-12)
    change = 1.0 - cosine
    return np.r_[change.mean() if len(change) else 0.0, change]  # the first beat: no evidence either way


def _bar_change(per_beat: np.ndarray, beats_per_bar: int) -> np.ndarray:
    """[B] harmonic change at each beat: 1 - cosine of the mean chroma of the bar before and after.

    Chords change on bar lines, so a bar-long comparison peaks there and not at mid-bar bass moves.
    """
    count = per_beat.shape[1]
    change = np.zeros(count)
    for beat in range(beats_per_bar, count - beats_per_bar + 1):
        before = per_beat[:, beat - beats_per_bar : beat].mean(axis=1)
        after = per_beat[:, beat : beat + beats_per_bar].mean(axis=1)
        norm = np.linalg.norm(before) * np.linalg.norm(after)
        change[beat] = 1.0 - float(before @ after) / norm if norm > 0 else 0.0
    edge = np.r_[:beats_per_bar, count - beats_per_bar + 1 : count]
    change[edge] = change[beats_per_bar : count - beats_per_bar + 1].mean() if count > 2 * beats_per_bar else 0.0
    return change


def downbeat_phase(analysis: Analysis, beat_times: np.ndarray, beats_per_bar: int) -> tuple[int, float]:
    """Which beat of `beat_times` [B] starts a bar, and the confidence of that (0..1).

    Bars start with the hardest low-end hit (kick, bass), a chord change (against the previous
    beat and, more robustly, the previous bar) and an accent. Each cue is z-scored over the beats,
    their weighted sum too, and every phase is scored by the mean of its beats. Confidence is the
    margin of the best phase over the runner-up, as a fraction of the largest margin possible.
    """
    if len(beat_times) < 2 * beats_per_bar:
        return 0, 0.0
    frames = analysis.frame(beat_times)
    radius = max(1, round(PEAK_RADIUS_S * analysis.frame_rate))
    synced = librosa.util.sync(analysis.chroma, frames, aggregate=np.mean)  # type: ignore[arg-type]  # takes arrays
    per_beat = synced[:, 1 : len(frames) + 1]
    evidence = _zscore(
        _zscore(_low_hits(analysis, frames, radius))
        + _zscore(_beat_change(per_beat))
        + _zscore(_bar_change(per_beat, beats_per_bar))
        # Flux cues are weaker: a snare accents beat 2 and a bass after silence makes beat 3 rise.
        + 0.5 * _zscore(_peaks_at(analysis.onset, frames, radius))
        + 0.5 * _zscore(_peaks_at(analysis.low_onset, frames, radius))
    )
    scores = np.array([evidence[phase::beats_per_bar].mean() for phase in range(beats_per_bar)])
    order = np.argsort(scores)[::-1]
    # z-scored evidence that peaks on one phase only and is flat elsewhere gives this margin.
    ideal = beats_per_bar / np.sqrt(beats_per_bar - 1)
    confidence = float(np.clip((scores[order[0]] - scores[order[1]]) / ideal, 0.0, 1.0))
    return int(order[0]), confidence
