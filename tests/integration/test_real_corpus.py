"""The real-music corpus's annotations hold against the audio itself (tests/support/real_corpus.toml).

Fetches the excerpts with apt-get (cached); skips with the reason when that is impossible, except in
CI, where it fails. The loop engine meets issue #13's goals on every row of bench.real_music's table.
"""

from __future__ import annotations

import functools
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from real_corpus import (
    EXCERPTS,
    LICENCES,
    OFF_TEMPO,
    CorpusUnavailable,
    Excerpt,
    fetch_all,
    lags_behind_the_source,
    loop_smear,
    loop_source,
    read_excerpt,
)
from storage_helpers import in_ci

if tp.TYPE_CHECKING:
    from generation.loop import LoopResult

RATE = 22050
HOP = 256
TEMPO_TOLERANCE = 0.03  # a beat tracker's tempo within 3 % of the annotation, or of twice or half it
BY_NAME = {excerpt.name: excerpt for excerpt in EXCERPTS}


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    try:
        return fetch_all()
    except CorpusUnavailable as error:
        if in_ci():
            pytest.fail(f"{error}; CI must run the real-music corpus tests", pytrace=False)
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def onset_strength(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each excerpt's onset-strength curve (mono, 22.05 kHz, hop 256)."""
    import librosa

    curves = {}
    for excerpt in EXCERPTS:
        audio, rate = read_excerpt(files[excerpt.name])
        mono = librosa.resample(audio.mean(axis=0), orig_sr=rate, target_sr=RATE)
        curves[excerpt.name] = librosa.onset.onset_strength(y=mono, sr=RATE, hop_length=HOP)
    return curves


def strength_at(curve: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """The onset strength's peak within 2 frames (23 ms) of each time."""
    frames = np.round(seconds * RATE / HOP).astype(int)
    return np.array([curve[max(0, f - 2) : f + 3].max() for f in frames if f < len(curve)])


def folded(curve: np.ndarray, bpm: float) -> tuple[float, float]:
    """The onset strength folded at the beat period: (peak / mean, where the peak is in seconds).

    At the true tempo the beats pile up in one place (a sharp peak); a wrong tempo smears them.
    """
    period = 60 / bpm
    bins = round(period * RATE / HOP)
    seconds = np.arange(len(curve)) * HOP / RATE
    where = (seconds % period / period * bins).astype(int) % bins
    profile = np.bincount(where, weights=curve, minlength=bins) / np.maximum(np.bincount(where, minlength=bins), 1)
    return float(profile.max() / profile.mean()), (int(profile.argmax()) + 0.5) / bins * period


def beat_autocorrelation(curve: np.ndarray, beats: np.ndarray, lag: int) -> float:
    """Correlation of the onset strength on each beat ([B] seconds) with that `lag` beats later."""
    strength = strength_at(curve, beats)
    z = (strength - strength.mean()) / max(float(strength.std()), 1e-9)
    return float(np.mean(z[lag:] * z[:-lag]))


def test_the_corpus_spans_the_tempi_and_licences_are_recorded() -> None:
    assert len(EXCERPTS) >= 12
    assert min(e.bpm for e in EXCERPTS) < 86 and max(e.bpm for e in EXCERPTS) > 165
    assert {e.beats_per_bar for e in EXCERPTS} >= {3, 4}
    assert {e.package for e in EXCERPTS} == set(LICENCES)
    for excerpt in EXCERPTS:
        bar = excerpt.beats_per_bar * 60 / excerpt.bpm
        assert len(excerpt.downbeats) >= 4
        assert 0 <= excerpt.downbeats[0] and excerpt.downbeats[-1] < excerpt.seconds
        bars = np.diff(excerpt.downbeats) / bar  # whole bars apart (two in half time: the phrase starts)
        assert np.allclose(bars, np.round(bars), atol=0.003 / bar) and bars.min() > 0.5, excerpt.name


@pytest.mark.parametrize("excerpt", EXCERPTS, ids=[e.name for e in EXCERPTS])
def test_annotations_agree_with_the_audio(excerpt: Excerpt, files: dict[str, Path], onset_strength) -> None:
    import librosa

    curve = onset_strength[excerpt.name]
    assert len(curve) * HOP / RATE == pytest.approx(excerpt.seconds, abs=0.05)
    median = float(np.median(curve))
    # Downbeats sit on clear onsets.
    assert np.median(strength_at(curve, np.array(excerpt.downbeats))) > 2 * median
    # The annotated tempo folds the onsets much more sharply than 1.5 % slower or faster ...
    sharpness, peak = folded(curve, excerpt.bpm)
    for off in (0.985, 1.015):
        assert sharpness > 1.5 * folded(curve, excerpt.bpm * off)[0], off
    # ... and its peak is on the annotated beats (within 50 ms), not between them.
    period = 60 / excerpt.bpm
    phase = float(np.median(np.array(excerpt.downbeats) % period))
    assert abs((peak - phase + period / 2) % period - period / 2) < min(0.05, 0.15 * period)
    # Triple meter is heard: the beats' accents repeat every 3 beats, not every 2 or 4.
    if excerpt.beats_per_bar == 3:
        beats = np.arange(phase, excerpt.seconds - 0.05, period)
        accents = {lag: beat_autocorrelation(curve, beats, lag) for lag in (2, 3, 4)}
        assert accents[3] > max(accents[2], accents[4]) + 0.5, accents
    # A beat tracker hears the same tempo, or twice or half it.
    tracked = float(np.atleast_1d(librosa.beat.beat_track(onset_envelope=curve, sr=RATE, hop_length=HOP)[0])[0])
    assert min(abs(tracked / (excerpt.bpm * k) - 1) for k in (0.5, 1, 2)) < TEMPO_TOLERANCE, tracked


# --- The loop engine on the corpus (issue #13): every row of bench.real_music meets the goals ---

LOOP_BARS = 4
# Every excerpt at its own tempo, and those of OFF_TEMPO asked 4-5 % off it (a request off the source
# must still loop). What they exercise: menu (127) reads as 2/3 time and fb-intro-breakdown (92) as
# half time unless the literal reading wins; war-breakdown, war2 and escape2 make the beat tracker
# slide onto the off-beat; fb-intro makes it skip beats; menu3's syncopated bass holds it on the
# off-beats throughout. waltz is 3/4, fp-swing shuffled, fp-intro a soft opening; halftime's annotated
# downbeats are its phrase starts (two-bar chords), where the loop must start. fb-main2's attacks
# jitter around a wandering line: its warped beats must land exactly. batcave's drums accent the other
# half of the bar and its rhythm cues hardly prefer a phase: its bass line (a bar of C, a bar of D)
# decides.
LOOP_CASES = [(excerpt.name, 1.0) for excerpt in EXCERPTS] + list(OFF_TEMPO.items())


@functools.cache
def _loop(path: Path, name: str, ratio: float) -> LoopResult:
    """The engine's loop of the excerpt, asked at `ratio` times its tempo (made once for all the tests)."""
    from generation.loop.source import loop_file
    from generation.shape import LoopShape

    excerpt = BY_NAME[name]
    return loop_file(path, LoopShape(round(excerpt.bpm * ratio, 2), LOOP_BARS, excerpt.beats_per_bar))


@pytest.mark.parametrize(("name", "ratio"), LOOP_CASES, ids=[f"{n}@{r}" for n, r in LOOP_CASES])
def test_loops_start_on_a_downbeat_at_the_source_tempo(name: str, ratio: float, files: dict[str, Path]) -> None:
    from corpus import GOAL_SEAM_RATIO, GOAL_SPREAD_MS, GOAL_START_MS, MAX_SMEAR, measure_loop

    excerpt = BY_NAME[name]
    result = _loop(files[name], name, ratio)
    report = result.report
    # The tempo read is the source's, literally: no 2/3 or half-time reading of a track at the request.
    assert report.metric_relation == 1.0
    assert report.source_bpm == pytest.approx(excerpt.bpm, rel=0.01)
    assert report.verdict != "unusable", report.reason
    m = measure_loop(
        result.audio, result.sample_rate, LOOP_BARS, excerpt.beats_per_bar,
        report.source_start_seconds, np.array(excerpt.downbeats), source=loop_source(excerpt, files[name], result),
    )
    assert abs(m.start_error_ms) < GOAL_START_MS, m
    assert m.grid_deviation_ms < GOAL_SPREAD_MS, m
    assert m.seam_ratio < GOAL_SEAM_RATIO, m
    # Its attacks are as sharp as the source's where each beat came from: no smeared kicks.
    assert loop_smear(excerpt, files[name], result) < MAX_SMEAR


# Excerpts whose tempo holds (their tracked beats stay within the warp's dead band), asked at their own
# tempo: the best loop is the source itself, cut at its downbeat. war2 and fb-main were the grid-spread
# misses of bench.real_music while the nearest onset alone read the spread: their loops are this.
STEADY = ["war2", "war-breakdown", "metal", "fb-main", "escape2", "fp-intro", "fp-swing", "waltz", "calm", "slow85"]
MOVED_LIMIT_MS = 4.0  # 0-1.5 ms today (the envelope's 1.5 ms frames); 4-22 ms when tracker noise is warped in


@pytest.mark.parametrize("name", STEADY)
def test_a_steady_source_keeps_its_own_timing(name: str, files: dict[str, Path]) -> None:
    # Every beat after the wrap plays where the unstretched source has it, give or take a frame: warping
    # a steady source by its tracker's few ms of noise would move its beats off the source's own grid.
    lags = lags_behind_the_source(files[name], _loop(files[name], name, 1.0))[1:]
    assert np.max(np.abs(lags - np.median(lags))) <= MOVED_LIMIT_MS, lags


# (excerpt, index of the annotated downbeat a hand-cut loop is cut near): a quarter beat off it, the
# wrap joins mid-note. Their seams read 6.5-25 against the source (goal 1.5); cut on the downbeat, 0.46-1.92
# (a hand cut has no crossfade).
OFF_BEAT_CUTS = [("batcave", 2), ("batcave2", 1), ("menu", 1)]


@pytest.mark.parametrize("beats_off", [-0.25, 0.25])
@pytest.mark.parametrize(("name", "downbeat"), OFF_BEAT_CUTS, ids=[n for n, _ in OFF_BEAT_CUTS])
def test_the_seam_measure_hears_a_loop_cut_off_the_beat(name: str, downbeat: int, beats_off: float, files: dict[str, Path]) -> None:
    """Judging the seam against the source's own flux does not hide a bad join: LOOP_BARS bars of the
    source cut a quarter beat off a downbeat, with no crossfade, still read above the goal."""
    from corpus import GOAL_SEAM_RATIO, LoopSource, measure_loop

    excerpt = BY_NAME[name]
    source, rate = read_excerpt(files[name])
    beat = 60 / excerpt.bpm
    start = excerpt.downbeats[downbeat] + beats_off * beat
    end = start + LOOP_BARS * excerpt.beats_per_bar * beat
    loop = source[:, round(start * rate) : round(end * rate)]
    m = measure_loop(
        loop, rate, LOOP_BARS, excerpt.beats_per_bar, start, np.array(excerpt.downbeats), source=LoopSource(source, rate, end),
    )
    assert m.seam_ratio > GOAL_SEAM_RATIO, m


# (excerpt, index of an annotated downbeat) where the source holds its tempo. The spread that the
# nearest onset alone reads there is 17-28 ms on war2 and metal (a flam's two hits, 30-45 ms apart, take
# turns being nearest; war2's hi-hats are within 4 ms of a straight grid) and 2-8 ms on the others.
STEADY_WINDOWS = [
    ("war2", 0), ("war2", 2), ("metal", 1), ("metal", 3), ("war-breakdown", 2), ("fp-swing", 1), ("waltz", 3), ("calm", 0),
]
WAVE_S = 0.025  # a known wander: one sine of this amplitude over the loop moves its beats up to 25 ms
LEAD_S = 0.01  # cut this far before the annotated downbeat, which sits on its attack's flux peak


@pytest.mark.parametrize(("name", "downbeat"), STEADY_WINDOWS, ids=[f"{n}-{d}" for n, d in STEADY_WINDOWS])
def test_the_spread_measure_reads_steady_beats_as_steady_and_hears_a_tempo_wave(name: str, downbeat: int, files: dict[str, Path]) -> None:
    """The grid spread that judges every loop: LOOP_BARS bars of a steady source, cut straight from a
    downbeat, spread less than the goal (1-8 ms); the same bars read through a tempo wave, their beats
    moved by up to WAVE_S early and late, spread more (24-34 ms)."""
    from corpus import GOAL_SPREAD_MS, measure_loop

    excerpt = BY_NAME[name]
    source, rate = read_excerpt(files[name])
    first = round((excerpt.downbeats[downbeat] - LEAD_S) * rate)
    samples = round(LOOP_BARS * excerpt.beats_per_bar * 60 / excerpt.bpm * rate)
    straight = source[:, first : first + samples]
    seconds = np.arange(samples) / rate
    read_at = (seconds + WAVE_S * np.sin(2 * np.pi * seconds / seconds[-1])) * rate  # source samples from `first`
    waved = np.stack([np.interp(read_at, np.arange(source.shape[1] - first), channel[first:]) for channel in source])
    for audio, steady in ((straight, True), (waved, False)):
        m = measure_loop(audio, rate, LOOP_BARS, excerpt.beats_per_bar, excerpt.downbeats[downbeat], np.array(excerpt.downbeats))
        assert (m.grid_deviation_ms < GOAL_SPREAD_MS) == steady, m


# Excerpts cut by hand to four bars from an annotated downbeat, as a musician uploads a loop: exactly
# its bars, or with a quarter or half a second of ring-out after them. Each excerpt's first such cut:
# 34 of 38 (exact, half a second) were "unusable, too short" before the first beat was put back. Of
# the 57 (all three), 11 then started off the downbeat: a beat late (so short a clip has few cues
# for the bar), half a beat late (the tracker took the off-beats of even eighths, tipped by where
# the clip ends), or, on slow85, with its first beat dropped (the line put it 18 ms before the
# clip), 4 of them unusable. Now none does (of each excerpt's first two cuts, 105 in all, one does:
# fp-intro's second with a quarter second of ring-out, whose tracker sits a third of a beat off).
HAND_CUTS = [
    "escape2", "war-breakdown", "batcave2", "fb-intro-breakdown", "fp-swing", "fp-intro", "menu", "batcave", "fb-main",
    "waltz", "calm", "slow85",
]


@pytest.mark.parametrize("ring_out_s", [0.0, 0.25, 0.5], ids=["exactly its bars", "a short ring-out", "a ring-out"])
@pytest.mark.parametrize("name", HAND_CUTS)
def test_a_loop_cut_by_hand_on_its_downbeat_loops_from_its_first_sample(name: str, ring_out_s: float, files: dict[str, Path]) -> None:
    from corpus import GOAL_SPREAD_MS, measure_loop

    from generation.loop.engine import make_loop
    from generation.shape import LoopShape

    excerpt = BY_NAME[name]
    source, rate = read_excerpt(files[name])
    bar = excerpt.beats_per_bar * 60 / excerpt.bpm
    first = next(d for d in excerpt.downbeats if (d + LOOP_BARS * bar + ring_out_s) * rate <= source.shape[1])
    clip = source[:, round(first * rate) : round((first + LOOP_BARS * bar + ring_out_s) * rate)]
    result = make_loop(clip, rate, LoopShape(excerpt.bpm, LOOP_BARS, excerpt.beats_per_bar))
    assert result.report.verdict != "unusable", result.report.reason
    assert result.report.source_start_seconds < 0.005
    m = measure_loop(
        result.audio, rate, LOOP_BARS, excerpt.beats_per_bar, result.report.source_start_seconds,
        np.array(excerpt.downbeats) - first,
    )
    assert m.grid_deviation_ms < GOAL_SPREAD_MS, m
