"""make_loop and make_variation_loop: analyse, choose a window, stretch, seam, normalise, judge."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..config import LoopSettings
from ..shape import LoopShape
from .analysis import Analysis, analyse, is_silent, mono
from .grid_error import grid_error_ms
from .loudness import normalise
from .report import Findings, LoopReport, judge
from .seam import crossfade_head, crossfade_samples, crossfade_tail, max_lag_samples
from .tempo import downbeat_phase, estimate_tempo, fit_period, onset_starts, through_the_first_sample, track_beats
from .warp import Warp, markers
from .window import END_SLACK_S, Window, best_window

STRETCH_CONTEXT_S = 0.25  # audio kept around the window so Rubber Band's edges fall outside it
# A window that ends with its clip (an uploaded loop) may come out of the stretch this much short: the
# rest is the loop's own head, as it is where the loop repeats.
CUT_SLACK_S = 0.002
MAX_GLOBAL_REFIT = 0.05  # beat-fitted tempo may refine the autocorrelation estimate by this much


@dataclass(frozen=True)
class LoopGrid:
    """Where a loop sits in its source: what a variation needs to continue on the same grid."""

    shape: LoopShape
    source_beat_period: float
    """Source seconds per requested beat."""
    stretch_ratio: float
    """Speed factor applied to the source (requested tempo / source tempo in requested beats)."""
    source_start_seconds: float
    metric_relation: float = 1.0

    @property
    def source_bar_seconds(self) -> float:
        return self.shape.beats_per_bar * self.source_beat_period

    @property
    def source_end_seconds(self) -> float:
        return self.source_start_seconds + self.shape.bars * self.source_bar_seconds


@dataclass(frozen=True)
class LoopResult:
    audio: np.ndarray
    """[C, N] float32, N = round(bars x beats per bar x 60 / bpm x sample rate)."""
    sample_rate: int
    report: LoopReport
    grid: LoopGrid


def _channels(audio: np.ndarray) -> np.ndarray:
    """[T] or [C, T] -> [C, T] float32."""
    array = np.asarray(audio, dtype=np.float32)
    return array[None, :] if array.ndim == 1 else array


def _fill(audio: np.ndarray, samples: int) -> np.ndarray:
    """[C, M] repeated or cut to [C, samples]; zeros when there is nothing to repeat."""
    if audio.shape[1] == 0:
        return np.zeros((audio.shape[0], samples), dtype=np.float32)
    return np.tile(audio, (1, -(-samples // audio.shape[1])))[:, :samples]


@dataclass(frozen=True)
class _Cut:
    body: np.ndarray  # [C, N] the stretched window
    follow: np.ndarray | None  # [C, S] stretched audio right after the window
    lead: np.ndarray | None  # [C, S] stretched audio right before it
    complete: bool


def _cut(source: np.ndarray, sample_rate: int, warp: Warp, seam: int) -> _Cut:
    """Warp the window (with context) beat by beat onto the grid and cut it to the loop's exact length."""
    samples, context = int(warp.output[-1]), round(STRETCH_CONTEXT_S * sample_rate)
    speeds = warp.speeds
    first = max(0, int(warp.source[0]) - context - math.ceil(seam * speeds[0]))
    last = min(source.shape[1], int(warp.source[-1]) + context + math.ceil(seam * speeds[-1]))
    segment, offset = warp.stretch(np.ascontiguousarray(source[:, first:last]), sample_rate, first)
    if offset < 0:  # a window from the clip's first sample: Rubber Band's pivot can land it a sample or two late
        segment, offset = np.pad(segment, ((0, 0), (-offset, 0))), 0
    body = segment[:, offset : offset + samples]
    short = samples - body.shape[1]
    complete = short <= round(CUT_SLACK_S * sample_rate)
    follow = segment[:, offset + samples : offset + samples + seam]
    lead = segment[:, max(0, offset - seam) : offset]
    return _Cut(
        body=body if short == 0 else _fill(body if body.shape[1] else source, samples),
        follow=follow if short == 0 and follow.shape[1] == seam else None,
        lead=lead if lead.shape[1] == seam else None,
        complete=complete,
    )


def _seamed(cut: _Cut, sample_rate: int, settings: LoopSettings) -> np.ndarray:
    """The cut's body with its wrap crossfaded into the neighbouring audio, when there is some."""
    length, lag = crossfade_samples(settings.crossfade_ms, sample_rate), max_lag_samples(sample_rate)
    if cut.follow is not None:
        return crossfade_head(cut.body, cut.follow, length, lag)
    if cut.lead is not None:
        return crossfade_tail(cut.body, cut.lead, length, lag)
    return cut.body


def _seam_samples(sample_rate: int, settings: LoopSettings) -> int:
    return crossfade_samples(settings.crossfade_ms, sample_rate) + max_lag_samples(sample_rate)


def _finish(
    source: np.ndarray, sample_rate: int, warp: Warp, grid: LoopGrid, findings: Findings, settings: LoopSettings,
) -> LoopResult:
    """Warp, cut, seam, normalise and judge the chosen window on `grid`."""
    cut = _cut(source, sample_rate, warp, _seam_samples(sample_rate, settings))
    audio, lufs = normalise(_seamed(cut, sample_rate, settings), sample_rate, settings.target_lufs, settings.true_peak_dbtp)
    grid_error = grid_error_ms(audio, sample_rate, len(warp.output) - 1)
    findings = dataclasses.replace(findings, complete=cut.complete, grid_error_ms=grid_error)
    verdict, reason, code = judge(findings, settings.max_stretch)
    report = LoopReport(
        source_bpm=60.0 / grid.source_beat_period * grid.metric_relation,
        metric_relation=grid.metric_relation,
        stretch_ratio=grid.stretch_ratio,
        source_start_seconds=grid.source_start_seconds,
        downbeat_confidence=findings.downbeat_confidence,
        seam_score=findings.seam_score,
        tempo_stability=findings.tempo_stability,
        grid_error_ms=grid_error,
        loudness_lufs=lufs if math.isfinite(lufs) else None,
        verdict=verdict,
        reason=reason,
        reason_code=code,
    )
    return LoopResult(audio=np.ascontiguousarray(audio, dtype=np.float32), sample_rate=sample_rate, report=report, grid=grid)


def _silent_result(channels: int, sample_rate: int, grid: LoopGrid, samples: int, max_stretch: float) -> LoopResult:
    verdict, reason, code = judge(Findings(silent=True), max_stretch)
    report = LoopReport(
        source_bpm=0.0, metric_relation=1.0, stretch_ratio=1.0, source_start_seconds=0.0, downbeat_confidence=0.0,
        seam_score=0.0, tempo_stability=0.0, loudness_lufs=None, verdict=verdict, reason=reason, reason_code=code,
    )
    return LoopResult(np.zeros((channels, samples), dtype=np.float32), sample_rate, report, grid)


def _beats(analysis: Analysis, period: float) -> np.ndarray:
    """Tracked beat times [B]; a plain grid from 0 when tracking finds too few to work with."""
    beats = track_beats(analysis, period)
    return beats if len(beats) >= 2 else np.arange(0.0, max(analysis.duration, period), period)


def _at_attack(analysis: Analysis, beats: np.ndarray, window: Window) -> Window:
    """The window moved back to where its first downbeat's attack starts, so the cut keeps it whole.

    An attack in the envelopes' blind start cannot be traced back: it starts a beat before the next
    beat's attack (at the clip's first sample at the latest).
    """
    if window.start > analysis.blind_seconds or window.first_beat + 1 >= len(beats):
        return dataclasses.replace(window, start=float(onset_starts(analysis, np.array([window.start]))[0]))
    following = float(onset_starts(analysis, beats[window.first_beat + 1 : window.first_beat + 2])[0])
    return dataclasses.replace(window, start=max(0.0, following - window.beat_period))


def _warp(beats: np.ndarray, window: Window, grid: LoopGrid, sample_rate: int, samples: int, duration: float) -> Warp:
    """The window's beats, from its first on, as warp markers onto the grid at its stretch ratio.

    Markers that run up to END_SLACK_S past the clip's end (`duration` seconds) are drawn in to end
    with it: the clip is the loop's bars exactly, and its end is the next bar's downbeat.
    """
    period = grid.stretch_ratio * grid.shape.beat_seconds  # source seconds per loop beat
    placed = markers(beats[window.first_beat :], window.start, period, window.beats)
    if 0 < placed[-1] - duration <= END_SLACK_S:
        placed = window.start + (placed - window.start) * (duration - window.start) / (placed[-1] - window.start)
    return Warp.onto_grid(placed, sample_rate, samples)


def _fitting_window(
    analysis: Analysis, signal: np.ndarray, beats: np.ndarray, phase: int, period: float, shape: LoopShape,
) -> Window:
    """The best window from the downbeats of `phase`; when none of them fits in the clip, the best
    that fits from another phase of the bar. A clip about as long as the loop (an uploaded loop) has
    room for one window, from its first beat: its maker cut it on the downbeat."""
    def best(first: int) -> Window:
        downbeats = np.arange(first, len(beats), shape.beats_per_bar)
        return best_window(analysis, signal, beats, downbeats, period, shape.beats_per_bar, shape.bars)

    window = best(phase)
    if window.complete:
        return window
    others = (best(first) for first in range(min(shape.beats_per_bar, len(beats))) if first != phase)
    fitting = [other for other in others if other.complete]
    return max(fitting, key=lambda other: other.score) if fitting else window


def _an_uploaded_loop(analysis: Analysis, period: float, shape: LoopShape) -> bool:
    """Whether the clip is a loop's bars, perhaps with its ring-out: less than a bar to spare. Its
    maker cut it on the downbeat, and in so short a clip the cues for the beat's and the bar's phase
    are few (without this, 10 of 35 real four-bar cuts with half a second after them started off it)."""
    return analysis.duration < (shape.bars + 1) * shape.beats_per_bar * period


def _speed(bpm: float, beat_period: float, max_stretch: float) -> tuple[float, bool, float]:
    """(speed factor clamped to the limit, whether within it, the speed change that was needed)."""
    needed = bpm * beat_period / 60.0
    clamped = float(np.clip(needed, 1 - max_stretch, 1 + max_stretch))
    return clamped, abs(needed - 1) <= max_stretch + 1e-9, needed - 1


def make_loop(
    audio: np.ndarray,
    sample_rate: int,
    shape: LoopShape,
    continuation: np.ndarray | None = None,
    settings: LoopSettings | None = None,
) -> LoopResult:
    """A loop of exactly `shape.samples(sample_rate)` samples: round(bars x beats per bar x 60 / bpm x rate).

    `audio` is [C, T] (or [T]); `continuation` [C, T2], when given, is the audio that follows it
    (the model's continuation): it is searched for windows and used for the seam too.
    Returns a [C, N] loop, its report and its grid (for `make_variation_loop`).
    """
    settings = settings or LoopSettings()
    source = _channels(audio)
    if continuation is not None:
        source = np.concatenate([source, _channels(continuation)], axis=1)
    bpm, beats_per_bar = shape.bpm, shape.beats_per_bar
    samples = shape.samples(sample_rate)
    nominal = LoopGrid(shape, shape.beat_seconds, 1.0, 0.0)
    if source.shape[1] == 0 or is_silent(source):
        return _silent_result(source.shape[0], sample_rate, nominal, samples, settings.max_stretch)

    signal = mono(source)
    analysis = analyse(signal, sample_rate)
    tempo = estimate_tempo(analysis, bpm, settings.max_stretch)
    beats = _beats(analysis, tempo.beat_period)
    period = tempo.beat_period
    if len(beats) >= 4:  # beats span the whole clip, so their fit is finer than the autocorrelation lag
        period = float(np.clip(fit_period(beats)[0], period * (1 - MAX_GLOBAL_REFIT), period * (1 + MAX_GLOBAL_REFIT)))
    uploaded = _an_uploaded_loop(analysis, period, shape)
    if uploaded:
        beats = through_the_first_sample(analysis, beats, period)
    phase, confidence = downbeat_phase(analysis, signal, beats, beats_per_bar)
    if uploaded and beats[0] <= analysis.blind_seconds:  # it starts on a beat: its downbeat
        phase = 0
    window = _at_attack(analysis, beats, _fitting_window(analysis, signal, beats, phase, period, shape))
    speed, within, needed = _speed(bpm, window.beat_period, settings.max_stretch)
    grid = LoopGrid(shape, window.beat_period, speed, window.start, tempo.relation)
    findings = Findings(
        pulse_strength=tempo.pulse_strength, within_stretch_limit=within, stretch_needed=needed,
        downbeat_confidence=confidence, seam_score=window.seam, tempo_stability=window.stability,
    )
    return _finish(source, sample_rate, _warp(beats, window, grid, sample_rate, samples, analysis.duration), grid, findings, settings)


def variation_prompt(previous: LoopResult, source: np.ndarray, sample_rate: int, bars: int) -> np.ndarray:
    """The source audio [C, T] of the loop's last `bars` bars, to prompt the model's continuation.

    It starts on a downbeat of the loop's grid, so a continuation made from it (prompt included)
    has a downbeat at 0 and, at the prompt's end, the downbeat where the loop's next bar starts.
    """
    grid = previous.grid
    first = grid.source_end_seconds - min(bars, grid.shape.bars) * grid.source_bar_seconds
    return _channels(source)[:, round(first * sample_rate) : round(grid.source_end_seconds * sample_rate)]


def make_variation_loop(
    previous: LoopResult,
    continuation: np.ndarray,
    sample_rate: int,
    downbeat_seconds: float = 0.0,
    settings: LoopSettings | None = None,
) -> LoopResult:
    """The next loop, cut from `continuation` [C, T] on `previous`'s bar grid and stretch ratio.

    `downbeat_seconds` is where, in `continuation`, a bar of the previous grid starts (the prompt's
    length when the continuation begins with the prompt from `variation_prompt`); windows start
    on the grid's downbeats from there on. Checked like any loop; the report's tempo stability
    also drops when the continuation drifts off the grid.
    """
    settings = settings or LoopSettings()
    grid = previous.grid
    source = _channels(continuation)
    samples = previous.audio.shape[1]
    if source.shape[1] == 0 or is_silent(source):
        return _silent_result(source.shape[0], sample_rate, grid, samples, settings.max_stretch)

    signal = mono(source)
    analysis = analyse(signal, sample_rate)
    tempo = estimate_tempo(analysis, grid.shape.bpm, settings.max_stretch)
    beats = _beats(analysis, grid.source_beat_period)
    # Downbeats: the tracked beats nearest the grid's bar lines from `downbeat_seconds` on.
    bar_lines = np.arange(downbeat_seconds, analysis.duration, grid.source_bar_seconds)
    nearest = np.abs(beats[None, :] - bar_lines[:, None]).argmin(axis=1)
    miss = np.abs(beats[nearest] - bar_lines)
    downbeats = np.unique(nearest[miss < grid.source_beat_period / 2])
    confidence = float(np.clip(1.0 - 4.0 * np.median(miss) / grid.source_beat_period, 0.0, 1.0)) if len(miss) else 0.0
    if not len(downbeats):
        downbeats = np.array([int(np.abs(beats - downbeat_seconds).argmin())])
    window = best_window(analysis, signal, beats, downbeats, grid.source_beat_period, grid.shape.beats_per_bar, grid.shape.bars)
    window = _at_attack(analysis, beats, window)
    off_grid = abs(window.beat_period / grid.source_beat_period - 1.0)
    window = dataclasses.replace(window, beat_period=grid.source_beat_period)  # same grid, same stretch
    next_grid = dataclasses.replace(grid, source_start_seconds=window.start)
    findings = Findings(
        pulse_strength=tempo.pulse_strength,
        downbeat_confidence=confidence,
        seam_score=window.seam,
        tempo_stability=min(window.stability, float(np.clip(1.0 - off_grid / 0.03, 0.0, 1.0))),
    )
    warp = _warp(beats, window, next_grid, sample_rate, samples, analysis.duration)
    return _finish(source, sample_rate, warp, next_grid, findings, settings)
