"""The loop engine on a rendered MIDI corpus, measured independently of the engine's report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from corpus import (
    CORPUS,
    GOAL_DRIFT_MS_PER_BAR,
    GOAL_SEAM_RATIO,
    GOAL_SPREAD_MS,
    GOAL_START_MS,
    MAX_SMEAR,
    Groove,
    Rendered,
    attack_smear,
    fluidsynth_available,
    measure_loop,
    render,
)
from PIL import Image
from typer.testing import CliRunner

from generation.cli import app
from generation.loop import LoopResult, make_loop, make_variation_loop, variation_prompt
from generation.loop.analysis import analyse, mono
from generation.loop.grid_error import grid_error_ms
from generation.loop.loudness import integrated_lufs, true_peak_dbtp
from generation.loop.report import GOOD_DOWNBEAT_CONFIDENCE, GOOD_GRID_ERROR_MS, Findings, judge
from generation.loop.tempo import (
    BASS_DECIDES,
    _bass_chroma,
    _bass_moves,
    _best_phase,
    _per_beat,
    downbeat_phase,
    estimate_tempo,
    track_beats,
)
from generation.loop.waveform import waveform_png
from generation.shape import LoopShape

pytestmark = pytest.mark.skipif(not fluidsynth_available(), reason="needs the fluidsynth CLI and FluidR3_GM")


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    directory = tmp_path_factory.mktemp("corpus")
    return {groove.name: render(groove, directory) for groove in CORPUS}


@pytest.fixture(scope="session")
def loops(renders: dict[str, Rendered]) -> dict[str, LoopResult]:
    return {
        name: make_loop(r.audio, r.sample_rate, LoopShape(r.groove.request_bpm, r.groove.bars, r.groove.beats_per_bar))
        for name, r in renders.items()
    }


@pytest.mark.parametrize("groove", CORPUS, ids=[g.name for g in CORPUS])
def test_corpus_loop(groove: Groove, renders: dict[str, Rendered], loops: dict[str, LoopResult]) -> None:
    rendered, result = renders[groove.name], loops[groove.name]
    samples = LoopShape(groove.request_bpm, groove.bars, groove.beats_per_bar).samples(rendered.sample_rate)
    assert result.audio.shape == (rendered.audio.shape[0], samples)
    assert result.audio.dtype == np.float32
    m = measure_loop(
        result.audio, result.sample_rate, groove.bars, groove.beats_per_bar,
        result.report.source_start_seconds, rendered.downbeat_times, groove.music_bar_beats,
    )
    assert abs(m.start_error_ms) < GOAL_START_MS, m
    assert abs(m.grid_offset_ms) < 40, m  # in the loop itself, beat 1 is at its start
    assert m.beats_found >= 0.9, m
    assert m.grid_deviation_ms < GOAL_SPREAD_MS, m
    assert abs(m.drift_ms_per_bar) < GOAL_DRIFT_MS_PER_BAR, m
    assert m.seam_ratio < GOAL_SEAM_RATIO, m
    assert abs(m.fade_db) < 4, m
    assert result.report.verdict != "unusable"
    assert result.report.grid_error_ms is not None and result.report.grid_error_ms <= GOOD_GRID_ERROR_MS, result.report
    assert abs(integrated_lufs(result.audio, result.sample_rate) - (-14.0)) < 0.5
    assert true_peak_dbtp(result.audio) <= -1.0 + 0.05


@pytest.mark.parametrize("name", ["waltz72", "waltz150"])
def test_waltz_downbeats_follow_the_beats_in_every_rotation(name: str, renders: dict[str, Rendered]) -> None:
    # Kick and bass hit beats 1 and 3 of these bars: only beat 1's harder hit and chord change tell them apart.
    rendered = renders[name]
    analysis = analyse(mono(rendered.audio), rendered.sample_rate)
    beats = track_beats(analysis, estimate_tempo(analysis, rendered.groove.request_bpm, 0.12).beat_period)
    for skipped in range(3):
        phase, confidence = downbeat_phase(analysis, mono(rendered.audio), beats[skipped:], 3)
        assert np.min(np.abs(rendered.downbeat_times - beats[skipped + phase])) < 0.04, (skipped, phase)
        assert confidence >= GOOD_DOWNBEAT_CONFIDENCE


def test_a_wandering_grid_is_measured_and_not_judged_good(renders: dict[str, Rendered], loops: dict[str, LoopResult]) -> None:
    # The tempo wave's source, cut at one ratio (its mean tempo) from a true downbeat: beats up to ~30 ms off.
    rendered, groove = renders["wave110"], renders["wave110"].groove
    shape = LoopShape(groove.request_bpm, groove.bars, groove.beats_per_bar)
    first, end = rendered.downbeat_times[1], rendered.downbeat_times[1 + groove.bars]
    span = rendered.audio[:, round(first * 32000) : round(end * 32000)]
    at = np.linspace(0, span.shape[1] - 1, shape.samples(32000))
    one_ratio = np.stack([np.interp(at, np.arange(span.shape[1]), channel) for channel in span])
    # The independent measure sees it too: its beats spread far past the goal (44 ms).
    measured = measure_loop(one_ratio, 32000, groove.bars, groove.beats_per_bar, first, rendered.downbeat_times)
    assert measured.grid_deviation_ms > 2 * GOAL_SPREAD_MS, measured
    wandering = grid_error_ms(one_ratio, 32000, shape.beats)
    assert wandering is not None and wandering > 2 * GOOD_GRID_ERROR_MS
    verdict, reason, _ = judge(Findings(pulse_strength=1.0, downbeat_confidence=1.0, seam_score=1.0, tempo_stability=1.0,
                                        grid_error_ms=wandering), max_stretch=0.12)
    assert verdict == "usable" and reason is not None and "grid" in reason
    warped = loops["wave110"].report  # warped beat by beat: on the grid (its source's tempo still wavers)
    assert warped.grid_error_ms is not None and warped.grid_error_ms <= GOOD_GRID_ERROR_MS
    assert warped.verdict != "unusable" and "grid" not in (warped.reason or "")


@pytest.mark.parametrize("tail_s", [0.0, 0.3], ids=["exactly its bars", "with a ring-out"])
@pytest.mark.parametrize("name", ["bpm120", "bpm87.5", "swing96"])
def test_a_clip_cut_on_its_downbeat_loops_from_its_first_sample(name: str, tail_s: float, renders: dict[str, Rendered]) -> None:
    # An uploaded loop: its bars cut on a downbeat, perhaps with a ring-out after them. Its first attack
    # falls in the onset envelopes' blind start and the tracker drops that beat; the loop still starts
    # on it, and a clip of exactly the loop's bars still fits (before: "too short", or 30 ms late).
    rendered, groove = renders[name], renders[name].groove
    rate, first = rendered.sample_rate, rendered.downbeat_times[1]
    end = first + groove.bars * groove.beats_per_bar * 60 / groove.source_bpm + tail_s
    clip = rendered.audio[:, round(first * rate) : round(end * rate)]
    result = make_loop(clip, rate, LoopShape(groove.request_bpm, groove.bars, groove.beats_per_bar))
    assert result.report.verdict != "unusable", result.report.reason
    assert result.report.source_start_seconds < 0.005
    m = measure_loop(
        result.audio, rate, groove.bars, groove.beats_per_bar, result.report.source_start_seconds,
        rendered.downbeat_times - first, groove.music_bar_beats,
    )
    assert m.grid_deviation_ms < GOAL_SPREAD_MS and m.seam_ratio < GOAL_SEAM_RATIO, m


@pytest.mark.parametrize("name", ["wave110", "fast140"], ids=["warped beat by beat", "8 % faster at one ratio"])
def test_kicks_stay_as_sharp_as_in_the_source(name: str, renders: dict[str, Rendered], loops: dict[str, LoopResult]) -> None:
    # Each of the loop's beats against the source beat it was cut from (the median: a beat whose
    # strongest low hit is a slow bass note rises slowly either way). Rubber Band's smooth
    # transient mode makes these rises 1.5x longer on wave110.
    rendered, result = renders[name], loops[name]
    first = int(np.abs(rendered.beat_times - result.report.source_start_seconds).argmin())
    source_beats = rendered.beat_times[first : first + result.grid.shape.beats]
    assert attack_smear(result.audio, result.sample_rate, rendered.audio, rendered.sample_rate, source_beats) < MAX_SMEAR


def test_off_tempo_sources_are_stretched_to_the_request(loops: dict[str, LoopResult]) -> None:
    report = loops["fast140"].report
    assert report.source_bpm == pytest.approx(140 * 1.08, rel=0.01)
    assert report.stretch_ratio == pytest.approx(1 / 1.08, rel=0.01)
    half = loops["half140"].report
    assert half.metric_relation == 0.5 and half.source_bpm == pytest.approx(70, rel=0.01)


def test_a_short_unsteady_clip_that_ends_inside_the_window_still_loops() -> None:
    # Clicks 12 ms off a 120 BPM grid, the clip ending 0.2 s after its last: the window is warped beat
    # by beat and its last beat lies past the source (a model output that ends early). Eight clicks:
    # no window of two bars fits, from any beat.
    rng = np.random.default_rng(3)
    clicks = 0.05 + 0.5 * np.arange(8) + rng.normal(0, 0.012, 8)
    audio = rng.normal(0, 0.01, (1, round((clicks[-1] + 0.2) * 32000))).astype(np.float32)
    for at in clicks:
        audio[0, round(at * 32000) : round(at * 32000) + 200] += np.hanning(200).astype(np.float32)
    result = make_loop(audio, 32000, LoopShape(120.0, 2))
    assert result.audio.shape == (1, LoopShape(120.0, 2).samples(32000))
    assert result.report.reason_code == "too_short", result.report  # and the user is told so


def test_silence_is_unusable_and_marked_silent() -> None:
    result = make_loop(np.zeros((2, 32000 * 8), np.float32), 32000, LoopShape(120.0, 2))
    assert result.audio.shape == (2, LoopShape(120.0, 2, 4).samples(32000))
    assert result.report.verdict == "unusable" and result.report.silent
    assert result.report.as_dict()["silent"] is True


def test_white_noise_has_no_pulse() -> None:
    noise = np.random.default_rng(0).normal(0, 0.2, (1, 32000 * 10)).astype(np.float32)
    result = make_loop(noise, 32000, LoopShape(120.0, 2))
    assert result.audio.shape == (1, 128000)
    assert result.report.verdict == "unusable" and result.report.reason_code == "no_pulse"
    assert not result.report.silent


def test_a_half_second_clip_fills_the_length_and_is_unusable(renders: dict[str, Rendered]) -> None:
    clip = renders["bpm120"].audio[:, :16000]
    result = make_loop(clip, 32000, LoopShape(120.0, 1))
    assert result.audio.shape == (2, 64000)
    assert result.report.verdict == "unusable"


def test_tempo_beyond_the_stretch_limit_is_unusable(renders: dict[str, Rendered]) -> None:
    rendered = renders["bpm120"]  # asked for 100: 20 % off, past the 12 % limit
    result = make_loop(rendered.audio, rendered.sample_rate, LoopShape(100.0, 2))
    assert result.audio.shape[1] == LoopShape(100.0, 2, 4).samples(32000)
    assert result.report.reason_code == "tempo_out_of_range"


def test_a_three_minute_file(renders: dict[str, Rendered]) -> None:
    rendered = renders["bpm120"]
    bars = rendered.audio[:, : 8 * 2 * 32000]  # 8 whole bars at 120, tiled to 3 minutes
    long = np.tile(bars, (1, 12))[:, : 180 * 32000]
    result = make_loop(long, 32000, LoopShape(120.0, 4))
    assert result.audio.shape == (2, 256000)
    assert result.report.verdict == "good"
    start = result.report.source_start_seconds
    assert min(abs(start - 2.0 * round(start / 2.0)), 1) < 0.04


def test_mono_stays_mono_and_stereo_stays_stereo(renders: dict[str, Rendered], loops: dict[str, LoopResult]) -> None:
    stereo = loops["bpm120"].audio
    assert stereo.shape[0] == 2 and not np.allclose(stereo[0], stereo[1])
    rendered = renders["bpm120"]
    mono = make_loop(rendered.audio.mean(axis=0), 32000, LoopShape(120.0, 2))
    assert mono.audio.shape == (1, 128000)


def test_44k1_length_is_exact(loops: dict[str, LoopResult]) -> None:
    assert loops["rate44k"].audio.shape[1] == round(4 * 4 * 60 / 128 * 44100)
    assert loops["rate44k"].sample_rate == 44100


def test_variation_continues_on_the_same_grid(renders: dict[str, Rendered], loops: dict[str, LoopResult]) -> None:
    rendered, first = renders["fast130"], loops["fast130"]
    # Stand-in for the model: the source's own audio from the prompt's start on.
    prompt = variation_prompt(first, rendered.audio, rendered.sample_rate, bars=1)
    prompt_start = first.grid.source_end_seconds - first.grid.source_bar_seconds
    continuation = rendered.audio[:, round(prompt_start * rendered.sample_rate) :]
    assert np.array_equal(continuation[:, : prompt.shape[1]], prompt)
    variation = make_variation_loop(first, continuation, rendered.sample_rate, downbeat_seconds=prompt.shape[1] / 32000)
    assert variation.audio.shape == first.audio.shape
    assert variation.grid.stretch_ratio == first.grid.stretch_ratio
    assert variation.report.verdict != "unusable"
    starts = prompt_start + variation.grid.source_start_seconds
    assert np.min(np.abs(rendered.downbeat_times - starts)) < 0.04


def test_waveform_png_has_the_requested_size(loops: dict[str, LoopResult]) -> None:
    image = Image.open(io.BytesIO(waveform_png(loops["bpm120"].audio, LoopShape(120.0, 4, 4), width=320, height=80)))
    assert image.size == (320, 80)
    assert len(image.getcolors(maxcolors=4096)) > 2  # background, wave and bar lines


# --- loopjam loopify ---

runner = CliRunner()


def _loopify(*args: str):
    return runner.invoke(app, ["loopify", *args])


def test_loopify_writes_a_loop_and_prints_json(renders: dict[str, Rendered], tmp_path: Path) -> None:
    source = tmp_path / "jam.wav"
    sf.write(source, renders["bpm87.5"].audio.T, 32000)
    out = tmp_path / "loop.flac"
    result = _loopify(str(source), "--bpm", "87.5", "--bars", "2", "--out", str(out), "--format", "flac", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    expected = LoopShape(87.5, 2, 4).samples(32000)
    assert data["samples"] == expected and data["path"] == str(out)
    for key in ("sample_rate", "bpm", "bars", "beats_per_bar", "source_bpm", "stretch_ratio", "source_start_seconds",
                "downbeat_confidence", "seam_score", "tempo_stability", "loudness_lufs", "verdict", "reason", "silent"):
        assert key in data
    assert sf.info(str(out)).frames == expected


def test_loopify_mp3_warns(renders: dict[str, Rendered], tmp_path: Path) -> None:
    source = tmp_path / "jam.wav"
    sf.write(source, renders["bpm120"].audio.T, 32000)
    result = _loopify(str(source), "--bpm", "120", "--bars", "1", "--format", "mp3", "--out", str(tmp_path / "l.mp3"))
    assert result.exit_code == 0 and "gapless" in result.output
    assert (tmp_path / "l.mp3").stat().st_size > 0


def _long_file(path: Path) -> Path:
    sf.write(path, np.zeros(601 * 1000, np.float32), 1000)  # 10 min 1 s, tiny at 1 kHz
    return path


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("missing", ["{dir}/nope.wav", "--bpm", "120"]),
        ("not-audio", ["{dir}/junk.wav", "--bpm", "120"]),
        ("empty", ["{dir}/empty.wav", "--bpm", "120"]),
        ("too-long", ["{dir}/long.wav", "--bpm", "120"]),
        ("bpm-high", ["{dir}/ok.wav", "--bpm", "241"]),
        ("bpm-low", ["{dir}/ok.wav", "--bpm", "39.9"]),
        ("bars", ["{dir}/ok.wav", "--bpm", "120", "--bars", "3"]),
        ("beats", ["{dir}/ok.wav", "--bpm", "120", "--beats-per-bar", "5"]),
        ("format", ["{dir}/ok.wav", "--bpm", "120", "--format", "aiff"]),
    ],
)
def test_loopify_bad_input_exits_2_and_writes_nothing(case: str, args: list[str], tmp_path: Path) -> None:
    (tmp_path / "junk.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 32000)
    sf.write(tmp_path / "ok.wav", np.zeros(32000, np.float32), 32000)
    _long_file(tmp_path / "long.wav")
    before = set(tmp_path.iterdir())
    out = tmp_path / "out.wav"
    result = _loopify(*[a.format(dir=tmp_path) for a in args], "--out", str(out))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
    assert set(tmp_path.iterdir()) == before


@pytest.mark.parametrize("rate", [32000, 44100])
def test_the_bass_line_is_read_a_semitone_apart_and_moves_on_the_bar_line(rate: int) -> None:
    # A legato bass, a bar of C2 and a bar of C#2 at 120 BPM (a semitone: 3.9 Hz): each beat's bass
    # pitch class is the note's, and the bass moves on the first beat of each bar, clearly enough to decide.
    seconds, bar = 12.0, 2.0
    time = np.arange(round(seconds * rate)) / rate
    frequency = np.where(time // bar % 2 == 0, 65.41, 69.30)
    phase = 2 * np.pi * np.cumsum(frequency) / rate
    signal = (0.3 * (np.sin(phase) + 0.5 * np.sin(2 * phase))).astype(np.float32)
    beats = np.arange(0.5, seconds - 0.25, 0.5)  # the bar lines are beats 3, 7, 11, ...
    notes = np.where(beats // bar % 2 == 0, 0, 1)
    assert np.array_equal(_bass_chroma(signal, rate, beats).argmax(axis=0), notes)
    phase_found, margin = _best_phase(_bass_moves(signal, rate, beats, 4), 4)
    assert phase_found == 3 and margin >= BASS_DECIDES


def test_beats_up_to_and_past_the_end_still_get_a_downbeat() -> None:
    """A tracker's beats can run to the clip's last frame (two beats on one frame once clipped): the
    downbeat chooser still reads one chroma column per beat, as `librosa.util.sync` segments them."""
    rate = 32000
    noise = (np.random.default_rng(0).standard_normal(rate * 4) * 0.1).astype(np.float32)
    analysis = analyse(noise, rate)
    end = len(analysis.onset) / analysis.frame_rate
    phase, confidence = downbeat_phase(analysis, noise, np.arange(0.0, end + 1.0, 0.25), 4)
    assert phase in range(4) and 0.0 <= confidence <= 1.0

    frames = np.array([3, 40, 41, 90, 200])
    synced = librosa.util.sync(analysis.chroma, frames, aggregate=np.mean)
    np.testing.assert_allclose(_per_beat(analysis.chroma, frames), synced[:, 1 : len(frames) + 1], rtol=1e-5, atol=1e-6)
