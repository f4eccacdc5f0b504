"""Files to loop: their headers checked against the limits before decoding, then decoded folded and resampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from upload_files import bomb, declare_frames

from generation.audio_io import read_source
from generation.prompts import InvalidRequest, UnreadableSource, check_source


def silence(path: Path, rate: int, channels: int, frames: int = 1000, fmt: str = "FLAC") -> Path:
    sf.write(str(path), np.zeros((frames, channels), np.float32), rate, format=fmt)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: bomb(d / "bomb.flac"), "That file is sampled at 655,350 Hz; the limit is 192,000 Hz."),
        (lambda d: silence(d / "nine.wav", 48000, 9, fmt="WAV"), "That file has 9 channels; the limit is 8."),
        (lambda d: declare_frames(silence(d / "long.flac", 8000, 1), 601 * 8000),
         "That file is 10.1 minutes long; the limit is 10 minutes."),
        (lambda d: declare_frames(silence(d / "dense.flac", 192000, 8), 80 * 192000),
         "That file holds 122,880,000 samples (8 channels at 192,000 Hz); the limit is 115,200,000, "
         "as many as 10 minutes of 96 kHz stereo."),
        (lambda d: silence(d / "empty.wav", 44100, 2, frames=0, fmt="WAV"), "That file contains no audio."),
    ],
)
def test_a_header_over_a_limit_is_refused_saying_what_was_found(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InvalidRequest) as refused:
        check_source(path)
    assert str(refused.value) == message


def test_an_unreadable_file_is_refused_as_such(tmp_path: Path) -> None:
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(UnreadableSource, match="I can't read that file as audio"):
        check_source(tmp_path / "notes.wav")


def test_the_largest_file_allowed_passes(tmp_path: Path) -> None:
    path = declare_frames(silence(tmp_path / "edge.flac", 192000, 8), 75 * 192000)  # 115,200,000 samples exactly
    header = check_source(path)
    assert (header.sample_rate, header.channels, header.samples) == (192000, 8, 115_200_000)


def test_six_channels_at_96_khz_are_read_as_stereo_at_48_khz(tmp_path: Path) -> None:
    rate, seconds = 96000, 3
    t = np.arange(rate * seconds) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    # L, R, C, LFE, Ls, Rs: the left side (0, 2, 4) carries the tone, the right side (1, 3, 5) is silent.
    channels = np.stack([tone, 0 * tone, tone, 0 * tone, tone, 0 * tone], axis=1)
    sf.write(str(tmp_path / "six.flac"), channels, rate, subtype="PCM_24")

    audio, out_rate = read_source(tmp_path / "six.flac")

    assert out_rate == 48000 and audio.dtype == np.float32
    assert audio.shape[0] == 2 and abs(audio.shape[1] - 48000 * seconds) <= 1
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(audio.shape[1]) / 48000)
    middle = slice(1000, -1000)  # away from the resampler's edges
    assert np.max(np.abs(audio[0, middle] - expected[middle])) < 1e-3
    assert np.max(np.abs(audio[1])) < 1e-4


def test_a_stereo_file_at_44_1_khz_is_read_as_it_is(tmp_path: Path) -> None:
    stereo = np.random.default_rng(1).uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
    sf.write(str(tmp_path / "take.wav"), stereo, 44100, subtype="FLOAT")
    audio, rate = read_source(tmp_path / "take.wav")
    assert rate == 44100 and np.array_equal(audio, stereo.T)
