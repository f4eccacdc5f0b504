"""Fitting a loop into a server's upload limit: WAV, then FLAC, then OGG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bot.uploads import TooLargeToUpload, fit_upload
from generation.audio_io import write_audio


@pytest.fixture
def loop_wav(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    seconds = 20
    tone = np.sin(2 * np.pi * 220 * np.arange(32000 * seconds) / 32000) * 0.5
    audio = np.stack([tone + rng.normal(0, 0.01, tone.shape), tone]).astype(np.float32)
    return write_audio(tmp_path / "loop.wav", audio, 32000, "wav")  # about 2.5 MB


def test_a_wav_under_the_limit_is_sent_as_it_is(loop_wav: Path) -> None:
    upload = fit_upload(loop_wav, 25 * 1024 * 1024)
    assert upload.path == loop_wav and upload.note is None


def test_flac_then_ogg_when_the_wav_is_too_large(loop_wav: Path) -> None:
    wav_bytes = loop_wav.stat().st_size
    flac = fit_upload(loop_wav, wav_bytes)  # the WAV alone no longer fits with the envelope
    assert flac.path.suffix == ".flac" and "FLAC" in flac.note and flac.path.stat().st_size < wav_bytes
    ogg = fit_upload(loop_wav, flac.path.stat().st_size)
    assert ogg.path.suffix == ".ogg" and "OGG" in ogg.note


def test_nothing_fits_a_tiny_limit(loop_wav: Path) -> None:
    with pytest.raises(TooLargeToUpload, match="too large"):
        fit_upload(loop_wav, 70 * 1024)
