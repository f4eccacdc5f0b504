"""`loopjam key`, and `--key` on `loopjam loopify` and `loopjam mix`, on rendered grooves of known key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from corpus import fluidsynth_available
from key_corpus import DRUMS_ONLY, KEY_CORPUS, render_key_groove
from typer.testing import CliRunner

from generation.cli import app
from generation.music import parse_key
from generation.music.detect import detect_key
from generation.shape import LoopShape

pytestmark = pytest.mark.skipif(not fluidsynth_available(), reason="needs the fluidsynth CLI and FluidR3_GM")

runner = CliRunner()
C_SHARP_MINOR = next(groove for groove in KEY_CORPUS if groove.key == parse_key("C# minor"))


@pytest.fixture(scope="module")
def grooves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A C# minor groove and a drums-only one, as FLAC files; and each as an exact 4-bar loop."""
    directory = tmp_path_factory.mktemp("keyed")
    files = {}
    for name, groove in {"minor": C_SHARP_MINOR, "drums": DRUMS_ONLY}.items():
        rendered = render_key_groove(groove, directory)
        files[name] = directory / f"{name}.flac"
        sf.write(files[name], rendered.audio.T, rendered.sample_rate)
        files[f"{name}-loop"] = directory / f"{name}-loop.wav"
        sf.write(files[f"{name}-loop"], rendered.bars(4).T, rendered.sample_rate, subtype="FLOAT")
    return files


def test_key_names_the_key_or_says_there_is_none(grooves: dict[str, Path]) -> None:
    found = runner.invoke(app, ["key", str(grooves["minor"])])
    assert found.exit_code == 0 and found.output.startswith("C# minor (confidence ")
    drums = runner.invoke(app, ["key", str(grooves["drums"]), "--json"])
    assert drums.exit_code == 0 and json.loads(drums.output) == {"path": str(grooves["drums"]), "key": None, "confidence": 0.0}


def test_loopify_moves_the_loop_into_the_key_asked_for_at_the_exact_length(grooves: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "in-a-minor.wav"
    result = runner.invoke(app, ["loopify", str(grooves["minor"]), "--bpm", "124", "--bars", "4", "--key", "Am",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["source_key"], report["target_key"], report["key_shift_semitones"]) == ("C# minor", "A minor", -4)
    audio, rate = sf.read(out, always_2d=True)
    assert len(audio) == report["samples"] == LoopShape(124.0, 4).samples(rate)
    assert detect_key(audio.T.astype("float32"), rate).key == parse_key("A minor")
    assert abs(report["loudness_lufs"] - -14.0) < 1.0  # loudness set again after the shift


def test_loopify_never_moves_drums(grooves: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["loopify", str(grooves["drums"]), "--bpm", "120", "--bars", "2", "--key", "F# major",
                                 "--out", str(tmp_path / "drums.wav")])
    assert result.exit_code == 0, result.output
    assert "no key (unpitched), left as it is for F# major" in result.output


@pytest.mark.parametrize("command", ["loopify", "mix"])
def test_an_unknown_key_exits_2_with_the_forms_and_writes_nothing(command: str, grooves: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    result = runner.invoke(app, [command, str(grooves["minor"]), "--bpm", "124", "--bars", "4", "--key", "H minor", "--out", str(out)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: Unknown key 'H minor'") and '"A minor", "F# major", "Bb minor", "Am", "C"' in line
    assert not out.exists()


def test_mix_moves_pitched_layers_into_the_jam_key_and_leaves_drums(grooves: dict[str, Path], tmp_path: Path) -> None:
    stems = tmp_path / "stems"
    result = runner.invoke(app, ["mix", str(grooves["minor-loop"]), str(grooves["drums-loop"]), "--bpm", "124", "--bars", "4",
                                 "--key", "E minor", "--out", str(tmp_path / "mix.wav"), "--stems", str(stems), "--json"])
    assert result.exit_code == 0, result.output
    mixed = json.loads(result.output.strip().splitlines()[-1])
    assert mixed["key"] == "E minor"
    assert [(layer["source_key"], layer["shift_semitones"]) for layer in mixed["layers"]] == [("C# minor", 3), (None, 0)]
    assert json.loads((stems / "jam.json").read_text())["key"] == "E minor"
