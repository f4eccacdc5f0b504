"""Key detection on a rendered corpus in all 24 keys, and key matching measured independently of its report."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from corpus import fluidsynth_available, measure_loop
from key_corpus import DRUMS_ONLY, KEY_CORPUS, KeyGroove, KeyRendered, render_key_groove
from scipy.signal import butter, sosfiltfilt

from generation.loop import make_loop
from generation.music import parse_key
from generation.music.detect import detect_key
from generation.music.shift import match_key, pitch_shift_loop
from generation.shape import LoopShape

pytestmark = pytest.mark.skipif(not fluidsynth_available(), reason="needs the fluidsynth CLI and FluidR3_GM")

LOOP_BARS = 4
ONSET_HOP = 32  # 1 ms at 32 kHz


@pytest.fixture(scope="session")
def key_renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyRendered]:
    directory = tmp_path_factory.mktemp("key_corpus")
    return {groove.name: render_key_groove(groove, directory) for groove in [*KEY_CORPUS, DRUMS_ONLY]}


@pytest.mark.parametrize("first_bar", [0, 1], ids=["from_the_tonic", "from_the_subdominant"])
@pytest.mark.parametrize("groove", KEY_CORPUS, ids=[g.name for g in KEY_CORPUS])
def test_every_key_and_mode_is_detected(groove: KeyGroove, first_bar: int, key_renders: dict[str, KeyRendered]) -> None:
    rendered = key_renders[groove.name]
    estimate = detect_key(rendered.bars(LOOP_BARS, first_bar), rendered.sample_rate)
    assert estimate.key == groove.key, (estimate, groove.band)
    assert estimate.confidence >= 0.5, estimate


def test_a_drum_loop_has_no_key_and_is_never_shifted(key_renders: dict[str, KeyRendered]) -> None:
    rendered = key_renders[DRUMS_ONLY.name]
    drums = rendered.bars(LOOP_BARS)
    estimate = detect_key(drums, rendered.sample_rate)
    assert estimate.key is None and estimate.confidence == 0.0
    matched = match_key(drums, rendered.sample_rate, parse_key("F# major"))
    assert matched.shift_semitones == 0 and matched.source.key is None
    assert np.array_equal(matched.audio, drums)


def _loop(rendered: KeyRendered) -> np.ndarray:
    """[C, N] a 4-bar loop cut by the loop engine, as the bot would make it."""
    return make_loop(rendered.audio, rendered.sample_rate, LoopShape(rendered.groove.bpm, LOOP_BARS)).audio


def _chroma_move(before: np.ndarray, after: np.ndarray, sample_rate: int) -> int:
    """Semitones (mod 12) that best turn the mean chroma of `before` into that of `after` (circular cross-correlation)."""
    first, second = (librosa.feature.chroma_cqt(y=audio.mean(axis=0), sr=sample_rate).mean(axis=1) for audio in (before, after))
    return int(np.argmax([np.dot(np.roll(first, move), second) for move in range(12)]))


def _onset_lag_ms(before: np.ndarray, after: np.ndarray, sample_rate: int) -> float:
    """How late the hits of `after` come against those of `before` (circular cross-correlation of onset strength, +-50 ms)."""
    first, second = (librosa.onset.onset_strength(y=audio.mean(axis=0), sr=sample_rate, hop_length=ONSET_HOP) for audio in (before, after))
    lags = np.arange(-50, 51)
    best = lags[int(np.argmax([np.dot(np.roll(first, lag), second) for lag in lags]))]
    return float(best) * ONSET_HOP / sample_rate * 1000


@pytest.mark.parametrize(
    ("name", "target", "semitones"),
    [("C_major", "F# major", -6), ("G_major", "Bb major", 3), ("E_minor", "D major", -5), ("Bb_minor", "C# minor", 3)],
)
def test_key_matching_moves_the_pitch_and_keeps_the_loop(
    name: str, target: str, semitones: int, key_renders: dict[str, KeyRendered],
) -> None:
    rendered = key_renders[name]
    loop = _loop(rendered)
    matched = match_key(loop, rendered.sample_rate, parse_key(target))
    assert matched.source.key == rendered.groove.key and matched.shift_semitones == semitones
    assert matched.audio.shape == loop.shape and matched.audio.dtype == np.float32
    assert _chroma_move(loop, matched.audio, rendered.sample_rate) == semitones % 12
    # Hits stay on time (no flam against other layers); uncompensated, Rubber Band puts them 3-5 ms off here.
    assert abs(_onset_lag_ms(loop, matched.audio, rendered.sample_rate)) < 3
    m = measure_loop(matched.audio, rendered.sample_rate, LOOP_BARS, 4, 0.0, np.zeros(1))
    assert m.beats_found >= 0.9, m
    assert m.grid_deviation_ms < 15, m
    assert abs(m.drift_ms_per_bar) < 6, m
    assert m.seam_ratio < 1.5, m


def test_a_loop_in_the_relative_key_is_already_in_key(key_renders: dict[str, KeyRendered]) -> None:
    rendered = key_renders["A_minor"]
    loop = _loop(rendered)
    matched = match_key(loop, rendered.sample_rate, parse_key("C major"))
    assert matched.shift_semitones == 0 and np.array_equal(matched.audio, loop)


def test_mono_input_comes_back_as_one_channel_of_the_same_length(key_renders: dict[str, KeyRendered]) -> None:
    rendered = key_renders["D_minor"]
    mono = rendered.bars(LOOP_BARS).mean(axis=0)
    matched = match_key(mono, rendered.sample_rate, parse_key("E minor"))
    assert matched.shift_semitones == 2
    assert matched.audio.shape == (1, mono.shape[0])


def _click_db(loop: np.ndarray, sample_rate: int) -> float:
    """Energy above 3 kHz within 2 ms of the wrap of a [N] loop played twice, in dB re the loop's energy in as long."""
    played = np.tile(loop, 2)
    treble = sosfiltfilt(butter(6, 3000, "highpass", fs=sample_rate, output="sos"), played)
    window = np.ones(round(0.002 * sample_rate))
    clicks = np.convolve(np.square(treble), window, mode="same")
    level = np.convolve(np.square(played), window, mode="same")
    wrap = slice(len(loop) - len(window), len(loop) + len(window))
    return float(10 * np.log10(clicks[wrap].max() / np.median(level)))


def test_a_sustained_chord_shifted_does_not_click_at_the_wrap() -> None:
    # Bass and an A major chord held through the wrap, whole cycles in the loop (so it is seamless):
    # nothing masks the wrap, and the shifted partials come back to it with other phases than they left.
    rate, seconds = 32000, 2
    t = np.arange(rate * seconds) / rate
    chord = sum(np.sin(2 * np.pi * hz * t + hz) for hz in (110, 440, 554, 660))
    loop = np.stack([chord, chord]).astype(np.float32) * 0.2
    assert _click_db(loop[0], rate) < -100
    assert _click_db(pitch_shift_loop(loop, rate, 3)[0], rate) < -50  # without the wrap's crossfade: -17 dB
