"""Tempo, beats and downbeats of a source, estimated knowing the tempo the loop must have.

Periods are in source seconds per *target* beat: a half-time groove at 70 BPM asked for at 140
has a beat period of 60/140 s, because one of its beats spans two beats of the loop.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import librosa
import numpy as np
import scipy.signal
from scipy.ndimage import maximum_filter1d

from .analysis import Analysis

# Source pulse / target beat ratios a model plays when asked for a tempo, with a prior that
# prefers the literal tempo when two readings explain the onsets about as well.
METRIC_RELATIONS: dict[float, float] = {
    1.0: 1.0, 0.5: 0.9, 2.0: 0.9, 2.0 / 3.0: 0.8, 1.5: 0.8, 4.0 / 3.0: 0.7, 0.75: 0.7,
}
BINARY_RELATIONS = (0.5, 2.0)  # half and double time: the only readings reported over the literal one
SEARCH_SPAN = 2.0  # search this many stretch limits around each relation, to see tempos past the limit
PEAK_RADIUS_S = 0.015
MAX_BACKTRACK_S = 0.03  # an onset counts for a beat when its peak is this close
LOW_HIT_S = 0.06  # a beat's low-end hit is its loudest low-band level this soon after it
LOW_FLOOR_DB = 40.0  # low-band levels are floored this far under the loudest beat's
LOW_PULSE_WEIGHT = 0.5  # the kick and bass pulse counts half: it also pulses at the 2-beat kick pattern
OFF_REQUEST_PENALTY = 0.2  # evidence lost at the edge of a relation's search span (closer pulses win ties)
SAME_GRID = 0.015  # two readings whose beat periods agree this closely put beats in the same places
TRACKER_AGREES = 0.03  # the beat tracker's own tempo confirms a pulse this close to it
TRACKER_AC_SECONDS = 8.0  # its tempogram window
BEAT_TIGHTNESS = 400.0  # the beat tracker's stiffness: high, so it rarely slips half a beat mid-clip
SLIP = 0.08  # consecutive beats this far off the period (as a fraction of it): the tracker slipped
SNAP_S = 0.03  # a grid beat put in where the tracker slipped moves to the onset peak this close
# The half-beat grid replaces the tracked beats when its median onset is this much stronger: menu3
# (real corpus), a syncopated bass the tracker follows on the off-beats, is at 1.5; where the tracker is
# on the beat, the real corpus is at most 1.03 (escape2) and the rendered one 0.52.
OFF_BEAT_MARGIN = 1.3
HALF_BEAT_OFF = 0.2  # beats this close to half a beat off a clip's start (in beats) are on the off-beat of a beat there
# A beat the line puts this far before a clip's start is its first sample's: tracked beats lag attacks,
# and a period a little short puts it before (slow85 cut on its downbeat: 18 ms).
UNSEEN_LEAD_S = 0.03
BASS_LOW_HZ, BASS_HIGH_HZ = 32.70, 246.94  # C1-B3: the bass line's register (bass guitar, synth bass, left hand)
BASS_RATE_HZ = 2000.0  # the bass is read from the signal decimated to about this rate (4 x B3: a short filter)
BASS_ALIAS_DB = 60.0  # what the decimation folds into the bass register is this far down
# Ambiguous bars: the rhythm cues' best phase beats the runner-up by under this confidence. On the real
# corpus (bench.real_music): batcave and batcave2, whose drums accent the other half of the bar, are at
# 0.06 and 0.03; fb-main, the least confident excerpt whose bass moves off the bar line by a margin over
# BASS_DECIDES (0.39, on beat 3), is at 0.26. 0.125 is a factor of 2 from either.
AMBIGUOUS_BARS = 0.125
# The bass line settles an ambiguous bar when its best phase wins by this margin: batcave and batcave2's
# is 0.53 and 0.73 (0.35-0.81 with the register from C1-B2 to C1-B4); among the other ambiguous excerpts
# the largest margin away from the annotated bar line is 0.10 (war-breakdown; fb-intro's 0.11 over A0-E3).
BASS_DECIDES = 0.25


@dataclass(frozen=True)
class TempoEstimate:
    beat_period: float
    """Source seconds per target beat."""
    relation: float
    """Source pulse / target beat (1, 1/2, 2, 2/3, 3/2, 4/3 or 3/4)."""
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


@dataclass(frozen=True)
class _Reading:
    """The best-supported pulse near one metric relation of the request."""

    relation: float
    lag: float  # pulse period in frames
    score: float  # evidence times the relation's prior
    strength: float  # onset autocorrelation at the lag

    def beat_period(self, frame_rate: float) -> float:
        return self.lag / frame_rate * self.relation


def _readings(analysis: Analysis, target_bpm: float, span: float) -> list[_Reading]:
    """One reading per metric relation whose search span fits in the clip.

    Evidence is a comb on the onset autocorrelation (a true pulse also correlates at twice its
    period) plus, at half weight, the same comb on the low band's (the kick and bass pulse).
    """
    longest_pulse = 60.0 / (target_bpm * min(METRIC_RELATIONS) * (1 - span))
    max_lag = min(len(analysis.onset) - 1, int(2 * longest_pulse * analysis.frame_rate) + 2)
    full, low = _autocorrelation(analysis.onset, max_lag), _autocorrelation(analysis.low_onset, max_lag)
    readings = []
    for relation, prior in METRIC_RELATIONS.items():
        pulse_lag = 60.0 / (target_bpm * relation) * analysis.frame_rate
        lags = np.arange(max(1, int(pulse_lag / (1 + span))), int(pulse_lag / (1 - span)) + 1)
        lags = lags[lags <= max_lag]
        if not len(lags):
            continue
        doubled = np.minimum(2 * lags, max_lag)
        inside = 2 * lags <= max_lag
        comb = full[lags] + 0.5 * np.where(inside, full[doubled], 0.0)
        comb = comb + LOW_PULSE_WEIGHT * (low[lags] + 0.5 * np.where(inside, low[doubled], 0.0))
        off = np.log(lags / pulse_lag) / np.log(1 + span)
        comb = comb * (1 - OFF_REQUEST_PENALTY * off**2)
        peak = int(np.argmax(comb))
        lag = lags[0] + _refined_peak(comb, peak)
        readings.append(_Reading(relation, lag, float(comb[peak]) * prior, max(0.0, float(full[lags[peak]]))))
    return readings


def _tracker_bpm(analysis: Analysis) -> float:
    """The tempo a beat tracker hears with no request (librosa's tempogram, its prior at 120 BPM)."""
    tempo = librosa.feature.tempo(
        onset_envelope=analysis.onset, sr=analysis.sample_rate, hop_length=analysis.hop, ac_size=TRACKER_AC_SECONDS,
    )
    return float(np.atleast_1d(tempo)[0])


def estimate_tempo(analysis: Analysis, target_bpm: float, max_stretch: float) -> TempoEstimate:
    """The best-supported beat period near the target, over all metric relations.

    When the literal reading puts beats where the best one does (a groove at the request also
    pulses at half, double or 2/3 of it), the literal one is reported unless the best is half or
    double time and the beat tracker's own tempo confirms it: a syncopated bass or a busy hat
    does not make a track at the requested tempo a half-time or 2/3-time one.
    """
    span = min(0.45, max_stretch * SEARCH_SPAN)
    readings = _readings(analysis, target_bpm, span)
    if not readings:  # a clip shorter than one beat
        return TempoEstimate(60.0 / target_bpm, 1.0, 0.0)
    rate = analysis.frame_rate
    best = max(readings, key=lambda reading: reading.score)
    literal = next((reading for reading in readings if reading.relation == 1.0), best)
    if literal is not best and abs(literal.beat_period(rate) / best.beat_period(rate) - 1) < SAME_GRID:
        pulse_bpm = 60.0 * rate / best.lag
        confirmed = best.relation in BINARY_RELATIONS and abs(_tracker_bpm(analysis) / pulse_bpm - 1) < TRACKER_AGREES
        best = best if confirmed else literal
    return TempoEstimate(best.beat_period(rate), best.relation, best.strength)


def track_beats(analysis: Analysis, beat_period: float) -> np.ndarray:
    """Beat times in seconds [B], by dynamic programming at the given period (drift tolerated)."""
    _, frames = librosa.beat.beat_track(
        onset_envelope=analysis.onset, sr=analysis.sample_rate, hop_length=analysis.hop,
        bpm=60.0 / beat_period, tightness=BEAT_TIGHTNESS, units="frames",
    )
    beats = _gaps_filled(np.asarray(frames, dtype=float) / analysis.frame_rate, beat_period)
    beats = _on_the_beat(analysis, _without_slips(analysis, beats, beat_period), beat_period)
    return _back_to_the_start(analysis, beats, beat_period)


def _back_to_the_start(analysis: Analysis, beat_times: np.ndarray, beat_period: float) -> np.ndarray:
    """[B'] the beats carried back to the clip's start, a period at a time.

    A clip that starts on its beat (an uploaded loop, a model's output) has that beat's attack in
    the envelopes' blind start (`Analysis.blind_seconds`), and the tracker drops weak leading beats:
    it starts a beat or two late, or on the first attack's visible tail. The beats put back are a
    period apart before the first tracked one, each on the onset peak near its place (on its place
    in the blind start, where there is no peak to see).
    """
    if len(beat_times) < 2:
        return beat_times
    edge = analysis.blind_seconds + 1.0 / analysis.frame_rate
    if beat_times[0] <= edge:  # tracked on the visible tail of an attack at the start
        beat_times = np.r_[max(0.0, beat_times[1] - beat_period), beat_times[1:]]
    missing = int(np.floor((beat_times[0] + UNSEEN_LEAD_S) / beat_period))
    places = beat_times[0] - beat_period * np.arange(missing, 0, -1)  # [missing], ascending
    seen = places > edge
    places[seen] = _snapped(analysis, places[seen])
    return np.r_[np.maximum(places, 0.0), beat_times]


def _snapped(analysis: Analysis, times: np.ndarray) -> np.ndarray:
    """Times [B] each moved to the onset peak within SNAP_S (so a gentle drift is still followed)."""
    radius = max(1, round(SNAP_S * analysis.frame_rate))
    frames = analysis.frame(times)
    offsets = np.arange(-radius, radius + 1)
    window = np.clip(frames[:, None] + offsets, 0, len(analysis.onset) - 1)
    return (frames + offsets[analysis.onset[window].argmax(axis=1)]) / analysis.frame_rate


def _on_the_beat(analysis: Analysis, beat_times: np.ndarray, beat_period: float, margin: float = OFF_BEAT_MARGIN) -> np.ndarray:
    """[B'] the tracked beats, or the grid half a beat away when the onsets there are over `margin`
    times as strong.

    A tracker can lock onto a syncopated part's loud accents between the beats. The beats themselves
    nearly all carry an onset while those accents come irregularly, so the medians decide, not the means.
    """
    if len(beat_times) < 4:
        return beat_times
    radius = max(1, round(PEAK_RADIUS_S * analysis.frame_rate))
    middles = 0.5 * (beat_times[:-1] + beat_times[1:])
    on = np.median(_peaks_at(analysis.onset, analysis.frame(beat_times), radius))
    off = np.median(_peaks_at(analysis.onset, analysis.frame(middles), radius))
    if off <= margin * on:
        return beat_times
    before = middles[0] - beat_period
    return _snapped(analysis, np.r_[[before] if before >= 0 else [], middles])


def through_the_first_sample(analysis: Analysis, beat_times: np.ndarray, beat_period: float) -> np.ndarray:
    """[B'] the beats of a clip its maker cut on a beat (an uploaded loop), through its first sample.

    In even eighths the onsets fit the grid half a beat away as well as the beats, and where the
    clip ends can tip the tracker onto it (four bars of menu cut on the downbeat: on the beat, but a
    quarter second more and half a beat off). When the tracked beats sit about half a beat off the
    clip's start, the grid through the start is taken unless the onsets between the beats are
    clearly weaker (OFF_BEAT_MARGIN).
    """
    if len(beat_times) < 4 or abs(beat_times[0] / beat_period - 0.5) > HALF_BEAT_OFF:
        return beat_times
    moved = _on_the_beat(analysis, beat_times, beat_period, margin=1.0 / OFF_BEAT_MARGIN)
    return beat_times if moved is beat_times else _back_to_the_start(analysis, moved, beat_period)


def _gaps_filled(beat_times: np.ndarray, beat_period: float) -> np.ndarray:
    """[B'] beats with evenly spaced ones put in the gaps the tracker left (a quiet beat, a break),
    so that consecutive beats are one beat apart, as the period fit and the bar phase assume."""
    if len(beat_times) < 2:
        return beat_times
    parts = [beat_times[:1]]
    for before, after in itertools.pairwise(beat_times):
        count = max(1, round((after - before) / beat_period))
        parts.append(before + (after - before) * np.arange(1, count + 1) / count)
    return np.concatenate(parts)


def _without_slips(analysis: Analysis, beat_times: np.ndarray, beat_period: float) -> np.ndarray:
    """[B'] beats on one phase: where the tracker slid onto the off-beats for a while, the beats
    outside its longest steady run become that run's grid, extended, each moved to the onset
    peak nearby."""
    steady = np.abs(np.diff(beat_times) / beat_period - 1) < SLIP
    if steady.all() or not steady.any():
        return beat_times
    # The longest run of steady intervals: beats first..last.
    edges = np.flatnonzero(np.diff(np.r_[0, steady.astype(int), 0]))
    starts, stops = edges[::2], edges[1::2]
    longest = int(np.argmax(stops - starts))
    first, last = int(starts[longest]), int(stops[longest])
    period, intercept, _ = fit_period(beat_times[first : last + 1])
    lowest = -int(np.floor(intercept / period))
    index = np.arange(lowest, int((analysis.duration - intercept) / period) + 1)
    snapped = _snapped(analysis, intercept + period * index)
    run = (index >= 0) & (index <= last - first)
    snapped[run] = beat_times[first : last + 1][: int(run.sum())]
    return snapped


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


def _per_beat(features: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """[F, B] mean of `features` [F, N] from each beat's frame to the next beat's (the last beat's to
    the end), as `librosa.util.sync` segments them; a beat on the same frame as the next, or on the
    last frame, reads its own frame. One column per beat always: `sync` drops repeated frames."""
    starts = np.clip(frames, 0, features.shape[1] - 1)
    ends = np.maximum(np.r_[starts[1:], features.shape[1]], starts + 1)
    summed = np.cumsum(np.pad(features, ((0, 0), (1, 0))), axis=1)
    return (summed[:, ends] - summed[:, starts]) / (ends - starts)


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


def _bass_signal(signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """The signal [T] decimated to about BASS_RATE_HZ, and its rate: a low-pass FIR (BASS_ALIAS_DB
    down from where aliases would fold into the bass register) and every factor-th sample."""
    factor = max(1, int(sample_rate // BASS_RATE_HZ))
    if factor == 1:
        return signal, float(sample_rate)
    rate = sample_rate / factor
    stop = rate - BASS_HIGH_HZ  # above this, what folds over lands above the bass register
    taps, beta = scipy.signal.kaiserord(BASS_ALIAS_DB, (stop - BASS_HIGH_HZ) / (sample_rate / 2))
    lowpass = scipy.signal.firwin(taps | 1, (stop + BASS_HIGH_HZ) / 2, window=("kaiser", beta), fs=sample_rate)
    return scipy.signal.resample_poly(signal, 1, factor, window=lowpass), rate


def _bass_chroma(signal: np.ndarray, sample_rate: int, beat_times: np.ndarray) -> np.ndarray:
    """[12, B] pitch-class power of the bass register (BASS_LOW_HZ-BASS_HIGH_HZ) from each beat to the next.

    One FFT per beat of the signal [T] decimated: a beat-long frame resolves the bass's semitones
    (4 Hz apart at C2), which the analysis's 2048-point frames (16-23 Hz bins) blur together.
    `beat_times` [B >= 2] are seconds; the last beat lasts as long as the one before it.
    """
    low, rate = _bass_signal(signal, sample_rate)
    edges = np.clip(np.rint(np.r_[beat_times, 2 * beat_times[-1] - beat_times[-2]] * rate).astype(int), 0, len(low))
    size = 1 << int(np.ceil(np.log2(max(8, 2 * int(np.median(np.diff(edges)))))))  # zero-padded twice over
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    semitone = 2 ** (1 / 24)  # half a semitone either side of the range
    band = (freqs >= BASS_LOW_HZ / semitone) & (freqs <= BASS_HIGH_HZ * semitone)
    pitch_class = np.rint(12 * np.log2(freqs[band] / BASS_LOW_HZ)).astype(int) % 12
    chroma = np.zeros((12, len(beat_times)))
    for beat, (first, last) in enumerate(itertools.pairwise(edges)):
        frame = low[first : min(last, first + size)]
        if len(frame) > 1:
            power = np.abs(np.fft.rfft(frame * np.hanning(len(frame)), size)) ** 2
            chroma[:, beat] = np.bincount(pitch_class, weights=power[band], minlength=12)
    return chroma


def _bass_moves(signal: np.ndarray, sample_rate: int, beat_times: np.ndarray, beats_per_bar: int) -> np.ndarray:
    """[B] z-scored evidence that the bass line moves to a new note at each beat: its pitch classes
    change from the previous beat and, over a bar, from the bar before."""
    bass = _bass_chroma(signal, sample_rate, beat_times)
    return _zscore(_zscore(_beat_change(bass)) + _zscore(_bar_change(bass, beats_per_bar)))


def _best_phase(evidence: np.ndarray, beats_per_bar: int) -> tuple[int, float]:
    """The phase whose beats' mean of `evidence` [B] is highest, and its margin over the runner-up (0..1)."""
    scores = np.array([evidence[phase::beats_per_bar].mean() for phase in range(beats_per_bar)])
    order = np.argsort(scores)[::-1]
    # z-scored evidence that peaks on one phase only and is flat elsewhere gives this margin.
    ideal = beats_per_bar / np.sqrt(beats_per_bar - 1)
    return int(order[0]), float(np.clip((scores[order[0]] - scores[order[1]]) / ideal, 0.0, 1.0))


def downbeat_phase(
    analysis: Analysis, signal: np.ndarray, beat_times: np.ndarray, beats_per_bar: int,
) -> tuple[int, float]:
    """Which beat of `beat_times` [B] starts a bar, and the confidence of that (0..1).

    Bars start with the hardest low-end hit (kick, bass), a chord change (against the previous
    beat and, more robustly, the previous bar) and an accent. Each cue is z-scored over the beats,
    their weighted sum too, and every phase is scored by the mean of its beats. Confidence is the
    margin of the best phase over the runner-up, as a fraction of the largest margin possible.
    When the bars are ambiguous (confidence under AMBIGUOUS_BARS), the bass line of `signal` [T]
    (the mono signal `analysis` was made from) decides, if it is clear; the confidence stays as low.
    """
    if len(beat_times) < 2 * beats_per_bar:
        return 0, 0.0
    frames = analysis.frame(beat_times)
    radius = max(1, round(PEAK_RADIUS_S * analysis.frame_rate))
    per_beat = _per_beat(analysis.chroma, frames)
    evidence = _zscore(
        _zscore(_low_hits(analysis, frames, radius))
        + _zscore(_beat_change(per_beat))
        + _zscore(_bar_change(per_beat, beats_per_bar))
        # Flux cues are weaker: a snare accents beat 2 and a bass after silence makes beat 3 rise.
        + 0.5 * _zscore(_peaks_at(analysis.onset, frames, radius))
        + 0.5 * _zscore(_peaks_at(analysis.low_onset, frames, radius))
    )
    phase, confidence = _best_phase(evidence, beats_per_bar)
    if confidence < AMBIGUOUS_BARS:
        # Drums that accent the other half of the bar, or kick and bass on 1 and 3, leave the bar line
        # open; the harmony starts where the bass moves to a new note, beat to beat and bar to bar, and
        # a loop starts where the harmony does. Only in an ambiguous bar: where the rhythm is clear the
        # bass may move elsewhere (on fb-main and calm its cue points 2 and 1 beats off the bar line),
        # and only a clear bass line: a bouncy one (fb-intro) moves on several beats of the bar.
        moves = _bass_moves(signal, analysis.sample_rate, beat_times, beats_per_bar)
        bass_phase, margin = _best_phase(moves, beats_per_bar)
        if margin >= BASS_DECIDES:
            phase = bass_phase
    return phase, confidence
