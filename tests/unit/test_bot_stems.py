"""Fitting a mix's stems zip into a server's upload limit: as it is, rebuilt with FLAC stems, then OGG, else left out."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bot import uploads
from bot.uploads import ENVELOPE_BYTES, fit_stems
from generation.audio_io import write_audio

FRAMES = 32000 * 4


@pytest.fixture
def stems_zip(tmp_path: Path) -> Path:
    """Two 4 s stereo WAV stems (tones with a little noise) and jam.json naming them, as a worker zips them."""
    rng = np.random.default_rng(0)
    target = tmp_path / "mix.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for number, hz in ((1, 110), (2, 330)):
            tone = np.sin(2 * np.pi * hz * np.arange(FRAMES) / 32000) * 0.5
            audio = np.stack([tone + rng.normal(0, 0.01, FRAMES), tone]).astype(np.float32)
            out.write(write_audio(tmp_path / f"0{number}-layer.wav", audio, 32000, "wav"), f"0{number}-layer.wav")
        out.writestr("jam.json", json.dumps({"bpm": 92, "layers": [{"stem": "01-layer.wav"}, {"stem": "02-layer.wav"}]}))
    return target


def contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as opened:
        assert opened.testzip() is None
        return {name: opened.read(name) for name in opened.namelist()}


def test_stems_under_the_limit_are_sent_as_they_are(stems_zip: Path) -> None:
    fitted = fit_stems(stems_zip, stems_zip.stat().st_size + ENVELOPE_BYTES)
    assert fitted is not None and fitted.path == stems_zip and fitted.note is None


def test_stems_over_the_limit_are_rebuilt_as_flac_then_ogg_with_jam_json_naming_them(stems_zip: Path) -> None:
    size = stems_zip.stat().st_size
    flac = fit_stems(stems_zip, size + ENVELOPE_BYTES - 1)
    assert flac is not None and flac.path.name == "mix-flac.zip" and "FLAC" in (flac.note or "")
    files = contents(flac.path)
    assert sorted(files) == ["01-layer.flac", "02-layer.flac", "jam.json"]
    manifest = json.loads(files["jam.json"])
    assert manifest["bpm"] == 92 and [layer["stem"] for layer in manifest["layers"]] == ["01-layer.flac", "02-layer.flac"]
    audio, rate = sf.read(io.BytesIO(files["01-layer.flac"]), always_2d=True)
    assert (audio.shape, rate) == ((FRAMES, 2), 32000)  # lossless, every sample there

    ogg = fit_stems(stems_zip, flac.path.stat().st_size + ENVELOPE_BYTES - 1)
    assert ogg is not None and ogg.path.name == "mix-ogg.zip" and "OGG" in (ogg.note or "")
    assert sorted(contents(ogg.path)) == ["01-layer.ogg", "02-layer.ogg", "jam.json"]
    assert ogg.path.stat().st_size < flac.path.stat().st_size < size


def test_stems_too_large_even_as_ogg_are_left_out(stems_zip: Path) -> None:
    assert fit_stems(stems_zip, ENVELOPE_BYTES + 1024) is None


@pytest.mark.parametrize("fault", ["too many entries", "a stem too large unpacked", "not a zip"])
def test_a_zip_no_worker_writes_is_left_out_unopened(stems_zip: Path, fault: str, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """In distributed mode the zip came through Redis: what it declares is checked before a byte is unpacked."""
    if fault == "too many entries":
        with zipfile.ZipFile(stems_zip, "a") as out:
            for number in range(3, 10):
                out.writestr(f"0{number}-layer.wav", b"RIFF")
    elif fault == "a stem too large unpacked":
        monkeypatch.setattr(uploads, "MAX_STEM_BYTES", FRAMES * 2 * 2)  # 4 s of 16-bit stereo: each stem, header and all, is over it
    else:
        stems_zip.write_bytes(b"PK not really" * 1000)
    written = set(stems_zip.parent.iterdir())
    assert fit_stems(stems_zip, stems_zip.stat().st_size + ENVELOPE_BYTES - 1) is None
    assert set(stems_zip.parent.iterdir()) == written  # nothing unpacked or rebuilt
    assert "left out the stems mix.zip" in caplog.text
