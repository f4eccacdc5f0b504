"""Jam mixes of one groove's stems (drums, bass, keys rendered apart), measured independently of the mixer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus import BASS, DRUMS, KEYS, Groove, Rendered, fluidsynth_available, measure_loop, render
from scipy.signal import butter, resample, sosfiltfilt
from typer.testing import CliRunner

from generation.cli import app
from generation.config import LoopSettings
from generation.jam import Layer, LayerOrigin, MixResult, jam_manifest, mix_layers, stems
from generation.jam.duck import Kicks, duck_gain, pick_drum_layer
from generation.loop.loudness import integrated_lufs, true_peak_dbtp
from generation.shape import LoopShape

pytestmark = pytest.mark.skipif(not fluidsynth_available(), reason="needs the fluidsynth CLI and FluidR3_GM")

GROOVE = Groove("jam97.5", 97.5, source_bars=6)  # 4 bars = 315,076.9 samples at 32 kHz: the rounding matters
SHAPE = LoopShape(GROOVE.request_bpm, 4)
RATE = GROOVE.sample_rate
SAMPLES = SHAPE.samples(RATE)
PARTS = {"drums": DRUMS, "bass": BASS, "keys": KEYS}


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    directory = tmp_path_factory.mktemp("stems")
    return {name: render(GROOVE, directory, channel) for name, channel in PARTS.items()}


@pytest.fixture(scope="module")
def loops(parts: dict[str, Rendered]) -> dict[str, np.ndarray]:
    """Each part cut to an exact loop [2, SAMPLES] at its second true downbeat (from the tempo map)."""
    start = round(parts["drums"].downbeat_times[1] * RATE)
    return {name: rendered.audio[:, start : start + SAMPLES] for name, rendered in parts.items()}


def layers(loops: dict[str, np.ndarray], *names: str) -> list[Layer]:
    return [Layer(loops[name], RATE, LayerOrigin(file=f"{name}.wav")) for name in names]


def lag_ms(layer: np.ndarray, mix: np.ndarray, sample_rate: int) -> float:
    """Where the circular cross-correlation of layer and mix [C, N] (channel means) peaks, in ms."""
    a, b = layer.mean(axis=0), mix.mean(axis=0)
    correlation = np.fft.irfft(np.fft.rfft(b) * np.conj(np.fft.rfft(a)), n=len(b))
    lag = int(np.argmax(correlation))
    return (lag if lag <= len(b) // 2 else lag - len(b)) / sample_rate * 1000


def assert_a_finished_loop(result: MixResult) -> None:
    """Exact length, stereo, the loop engine's loudness and ceiling, a seamless wrap."""
    assert result.audio.shape == (2, SHAPE.samples(result.sample_rate)) and result.audio.dtype == np.float32
    assert abs(integrated_lufs(result.audio, result.sample_rate) - (-14.0)) <= 1.0
    assert true_peak_dbtp(result.audio) <= -1.0 + 1e-3
    measures = measure_loop(result.audio, result.sample_rate, SHAPE.bars, SHAPE.beats_per_bar, 0.0, np.zeros(1))
    assert measures.seam_ratio < 1.5, measures
    assert measures.beats_found >= 0.9 and measures.grid_deviation_ms < 15, measures


@pytest.fixture(scope="module")
def mixed(loops: dict[str, np.ndarray]) -> MixResult:
    return mix_layers(layers(loops, "drums", "bass", "keys"), SHAPE)


def test_exact_loops_are_layered_sample_aligned(loops: dict[str, np.ndarray], mixed: MixResult) -> None:
    assert_a_finished_loop(mixed)
    assert mixed.sample_rate == RATE
    for name in PARTS:
        assert abs(lag_ms(loops[name], mixed.audio, RATE)) <= 1.0, name
    assert not any(layer.conformed for layer in mixed.layers)
    assert [layer.origin.file for layer in mixed.layers] == ["drums.wav", "bass.wav", "keys.wav"]


def test_layers_are_loudness_matched_then_gained(loops: dict[str, np.ndarray]) -> None:
    """The mix fitted as a sum of the stems: equally loud at 0 dB, the keys' weight 12 dB down at -12 dB.

    Mixed at -30 LUFS, where the limiter never acts, so the mix is that sum exactly.
    """
    quiet = LoopSettings(target_lufs=-30.0)
    stems = [loops["drums"], loops["keys"] * 0.1]  # the keys come 20 dB down

    def weights(result: MixResult) -> np.ndarray:
        return np.linalg.lstsq(np.stack([stem.ravel() for stem in stems], axis=1), result.audio.ravel(), rcond=None)[0]

    level = weights(mix_layers([Layer(stem, RATE) for stem in stems], SHAPE, quiet))
    drums_lufs, keys_lufs = (integrated_lufs(weight * stem, RATE) for weight, stem in zip(level, stems))
    assert abs(drums_lufs - keys_lufs) < 0.5
    gained = weights(mix_layers([Layer(stems[0], RATE), Layer(stems[1], RATE, gain_db=-12.0)], SHAPE, quiet))
    assert 20 * np.log10((level[1] / level[0]) / (gained[1] / gained[0])) == pytest.approx(12.0, abs=0.1)


def test_other_rates_and_mono_are_brought_to_the_highest_rate_in_stereo(loops: dict[str, np.ndarray]) -> None:
    keys_24k = resample(loops["keys"], SHAPE.samples(24000), axis=1).astype(np.float32)  # an exact loop at 24 kHz
    bass_mono = loops["bass"].mean(axis=0)
    result = mix_layers([Layer(keys_24k, 24000), Layer(loops["drums"], RATE), Layer(bass_mono, RATE)], SHAPE)
    assert result.sample_rate == RATE and result.audio.shape == (2, SAMPLES)
    assert not any(layer.conformed for layer in result.layers)
    assert abs(lag_ms(loops["keys"], result.audio, RATE)) <= 1.0
    assert abs(lag_ms(loops["drums"], result.audio, RATE)) <= 1.0
    assert all(layer.audio.shape == (2, SAMPLES) for layer in result.layers)
    assert np.array_equal(result.layers[2].audio[0], result.layers[2].audio[1])  # mono on both sides
    assert_a_finished_loop(result)


def test_a_layer_that_is_not_an_exact_loop_is_conformed_onto_the_grid(parts: dict[str, Rendered], loops: dict[str, np.ndarray]) -> None:
    whole_bass = parts["bass"].audio  # 6 bars and FluidSynth's tail, starting on a downbeat
    result = mix_layers([*layers(loops, "drums", "keys"), Layer(whole_bass, RATE, LayerOrigin(file="bass.wav"))], SHAPE)
    assert [layer.conformed for layer in result.layers] == [False, False, True]
    assert result.layers[2].report is not None and result.layers[2].report.verdict != "unusable"
    assert abs(lag_ms(loops["drums"], result.audio, RATE)) <= 1.0
    assert_a_finished_loop(result)
    # The conformed bass plays on the drums' grid: alone, its notes fall on the loop's beats.
    bass = result.layers[2].audio
    measures = measure_loop(bass, RATE, SHAPE.bars, SHAPE.beats_per_bar, 0.0, np.zeros(1))
    assert abs(measures.grid_offset_ms) < 40 and measures.grid_deviation_ms < 15, measures


# --- sidechain duck ---

def test_the_drum_layer_is_the_one_that_ducks(loops: dict[str, np.ndarray]) -> None:
    result = mix_layers(layers(loops, "bass", "keys", "drums"), SHAPE, duck=True)
    assert [layer.drum for layer in result.layers] == [False, False, True]
    for name in PARTS:
        assert abs(lag_ms(loops[name], result.audio, RATE)) <= 1.0, name
    assert_a_finished_loop(result)
    assert not any(layer.drum for layer in mix_layers(layers(loops, "bass", "keys", "drums"), SHAPE).layers)  # off by default


def test_without_a_kick_nothing_ducks(loops: dict[str, np.ndarray]) -> None:
    result = mix_layers(layers(loops, "keys"), SHAPE, duck=True)
    assert not result.layers[0].drum


def test_a_layer_left_out_of_the_drum_choice_is_never_the_drums() -> None:
    """How pitched layers will be left out once keys are detected: the strongest kick that is a candidate wins."""
    def kicks(strength: float) -> Kicks:
        return Kicks(np.array([0.0, 1.0]), np.array([strength, strength]), loop_seconds=2.0)

    assert pick_drum_layer([kicks(0.5), kicks(3.0), kicks(1.0)]) == 1
    assert pick_drum_layer([kicks(0.5), None, kicks(1.0)]) == 2
    assert pick_drum_layer([kicks(0.01), None]) is None  # a pad's low band is no kick


def test_the_duck_wraps_around_the_loop_end() -> None:
    on_the_downbeat = duck_gain(Kicks(np.array([0.0]), np.array([1.0]), loop_seconds=1.0), RATE, RATE)
    assert on_the_downbeat[-1] < 10 ** (-5 / 20)  # the dip starts before the kick: at the loop's end
    near_the_end = duck_gain(Kicks(np.array([0.95]), np.array([1.0]), loop_seconds=1.0), RATE, RATE)
    assert near_the_end[round(0.02 * RATE)] < 10 ** (-3 / 20)  # 70 ms later, across the wrap, still 3 dB down


def band_db(audio: np.ndarray, sample_rate: int, seconds: np.ndarray, span: tuple[float, float]) -> float:
    """RMS in dB of `audio`'s 800-1200 Hz band over [t + span[0], t + span[1]) for every t in `seconds`."""
    band = sosfiltfilt(butter(4, [800, 1200], btype="bandpass", fs=sample_rate, output="sos"), audio.mean(axis=0))
    picks = np.concatenate([band[round((t + span[0]) * sample_rate) : round((t + span[1]) * sample_rate)] for t in seconds])
    return 10 * np.log10(np.mean(np.square(picks)))


def test_duck_lowers_the_other_layers_at_kick_onsets() -> None:
    """A 55 Hz kick on every beat and a steady 1 kHz tone: with --duck the tone dips right after each kick."""
    t = np.arange(SAMPLES) / RATE
    beat = SHAPE.beat_seconds
    since_beat = t % beat
    kick = (0.8 * np.sin(2 * np.pi * 55 * since_beat) * np.exp(-since_beat / 0.08)).astype(np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    kicks = np.arange(1, SHAPE.beats - 1) * beat  # away from the ends, so the band filter's edges stay out
    after, before = (0.005, 0.035), (-0.15, -0.05)

    def dip_db(duck: bool) -> float:
        result = mix_layers([Layer(kick[None, :], RATE), Layer(tone[None, :], RATE)], SHAPE, duck=duck)
        return band_db(result.audio, RATE, kicks, before) - band_db(result.audio, RATE, kicks, after)

    assert dip_db(duck=True) > 3.0
    assert abs(dip_db(duck=False)) < 0.5


# --- stems ---

def test_stems_are_named_safely_in_order_and_keep_the_layers_origin(loops: dict[str, np.ndarray]) -> None:
    origins = [
        LayerOrigin(prompt="Dusty boom-bap, 92 BPM!", seed=7, model="facebook/musicgen-small"),
        LayerOrigin(file="../../etc/Ünïcode keys.wav"),
        LayerOrigin(prompt="///"),
    ]
    result = mix_layers([Layer(loops[name], RATE, origin) for name, origin in zip(["drums", "keys", "bass"], origins)], SHAPE)
    made = stems(result, "flac", -1.0)
    assert [stem.file_name for stem in made] == ["01-dusty-boom-bap-92-bpm.flac", "02-unicode-keys.flac", "03-layer.flac"]
    assert all(stem.audio.shape == (2, SAMPLES) for stem in made)
    assert max(float(np.abs(stem.audio).max()) for stem in made) <= 10 ** (-1 / 20) + 1e-6  # none clips when written
    drums = jam_manifest(result, made)["layers"][0]
    assert (drums["prompt"], drums["seed"], drums["model"], drums["file"]) == ("Dusty boom-bap, 92 BPM!", 7, "facebook/musicgen-small", None)


# --- loopjam mix ---

runner = CliRunner()


@pytest.fixture
def loop_files(loops: dict[str, np.ndarray], tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.wav" for name in PARTS}
    for name, path in paths.items():
        sf.write(path, loops[name].T, RATE, subtype="FLOAT")
    return paths


def test_mix_writes_the_mix_stems_and_jam_json_and_the_stems_rebuild_it(loop_files: dict[str, Path], tmp_path: Path) -> None:
    files = [str(loop_files[name]) for name in PARTS]
    gains = ["--gain-db", "0", "--gain-db", "-3", "--gain-db", "-6"]
    out, stems = tmp_path / "jam.flac", tmp_path / "stems"
    result = runner.invoke(app, [
        "mix", *files, "--bpm", "97.5", "--bars", "4", *gains, "--out", str(out), "--format", "flac", "--stems", str(stems), "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["path"] == str(out) and data["samples"] == SAMPLES and data["sample_rate"] == RATE
    assert sf.info(str(out)).frames == SAMPLES
    assert abs(data["loudness_lufs"] - (-14.0)) <= 1.0
    assert [(layer["file"], layer["gain_db"], layer["shift_semitones"], layer["conformed"]) for layer in data["layers"]] == [
        (files[0], 0.0, 0, False), (files[1], -3.0, 0, False), (files[2], -6.0, 0, False),
    ]

    names = ["01-drums.flac", "02-bass.flac", "03-keys.flac"]
    assert sorted(path.name for path in stems.iterdir()) == [*names, "jam.json"]
    assert data["stems"] == [str(stems / name) for name in [*names, "jam.json"]]
    assert all(sf.info(str(stems / name)).frames == SAMPLES for name in names)
    jam = json.loads((stems / "jam.json").read_text())
    assert (jam["bpm"], jam["bars"], jam["beats_per_bar"], jam["key"]) == (97.5, 4, 4, None)
    assert [(layer["stem"], layer["file"], layer["gain_db"], layer["shift_semitones"]) for layer in jam["layers"]] == [
        (names[0], files[0], 0.0, 0), (names[1], files[1], -3.0, 0), (names[2], files[2], -6.0, 0),
    ]
    assert all(layer["prompt"] is None and layer["seed"] is None and layer["model"] is None for layer in jam["layers"])

    rebuilt = tmp_path / "rebuilt.flac"
    again = runner.invoke(app, [
        "mix", *[str(stems / layer["stem"]) for layer in jam["layers"]], "--bpm", str(jam["bpm"]), "--bars", str(jam["bars"]),
        *[arg for layer in jam["layers"] for arg in ("--gain-db", str(layer["gain_db"]))], "--out", str(rebuilt), "--format", "flac",
    ])
    assert again.exit_code == 0, again.output
    original, _ = sf.read(str(out), dtype="float32")
    copy, _ = sf.read(str(rebuilt), dtype="float32")
    assert np.max(np.abs(original - copy)) < 0.01  # the same mix, up to 16-bit stems


def test_mix_prints_what_it_did(loop_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.wav"
    result = runner.invoke(app, ["mix", str(loop_files["keys"]), str(loop_files["drums"]), "--bpm", "97.5", "--bars", "4",
                                 "--duck", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: {SAMPLES} samples at {RATE} Hz, 2 layers (0 cut to length)" in result.output
    assert f"ducked by the kick of layer 2 ({loop_files['drums']})" in result.output


@pytest.mark.parametrize(
    ("case", "args", "message"),
    [
        ("no-layers", ["--bpm", "97.5", "--bars", "4"], "Nothing to mix"),
        ("gain-count", ["{dir}/drums.wav", "{dir}/bass.wav", "--bpm", "97.5", "--bars", "4", "--gain-db", "-3"],
         "1 --gain-db values for 2 loops"),
        ("gain-range", ["{dir}/drums.wav", "--bpm", "97.5", "--bars", "4", "--gain-db", "nan"], "--gain-db must be between -60 and 60 dB"),
        ("unreadable", ["{dir}/drums.wav", "{dir}/junk.wav", "--bpm", "97.5", "--bars", "4"], "Cannot read {dir}/junk.wav"),
        ("missing", ["{dir}/drums.wav", "{dir}/nope.wav", "--bpm", "97.5", "--bars", "4"], "Cannot read {dir}/nope.wav"),
        ("empty", ["{dir}/empty.wav", "--bpm", "97.5", "--bars", "4"], "contains no audio"),
        ("bpm", ["{dir}/drums.wav", "--bpm", "241", "--bars", "4"], "BPM must be between 40 and 240"),
        ("bars", ["{dir}/drums.wav", "--bpm", "97.5", "--bars", "3"], "Bars must be one of 1, 2, 4, 8"),
        ("format", ["{dir}/drums.wav", "--bpm", "97.5", "--bars", "4", "--format", "aiff"], "Unknown format 'aiff'"),
        ("stems-file", ["{dir}/drums.wav", "--bpm", "97.5", "--bars", "4", "--stems", "{dir}/junk.wav"], "is a file"),
    ],
)
def test_mix_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, args: list[str], message: str, loop_files: dict[str, Path], tmp_path: Path,
) -> None:
    (tmp_path / "junk.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    before = set(tmp_path.iterdir())
    result = runner.invoke(app, ["mix", *[a.format(dir=tmp_path) for a in args], "--out", str(tmp_path / "out.wav"),
                                 *([] if case == "stems-file" else ["--stems", str(tmp_path / "stems")])])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message.format(dir=tmp_path) in lines[0], result.output
    assert set(tmp_path.iterdir()) == before
