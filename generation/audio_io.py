"""Reading and writing audio with soundfile (no ffmpeg). Arrays are [C, T] float32."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .config import ANALYSIS_MAX_SAMPLE_RATE

# format name -> (soundfile format, subtype)
FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "wav24": ("WAV", "PCM_24"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
}
# Written only when asked for by name: MP3 encoders pad the start and end, so MP3 loops do not
# loop gaplessly. libsndfile >= 1.1 writes MP3 itself (no ffmpeg); older builds cannot.
EXPLICIT_FORMATS: dict[str, tuple[str, str]] = {"mp3": ("MP3", "MPEG_LAYER_III")}
MP3_WARNING = "MP3 adds encoder padding, so the loop will not repeat gaplessly; prefer wav, flac or ogg."


def extension(fmt: str) -> str:
    return {"wav24": "wav"}.get(fmt, fmt)


def write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> Path:
    """Write [C, T] audio; returns the path written. `fmt` is a key of FORMATS or EXPLICIT_FORMATS."""
    container, subtype = {**FORMATS, **EXPLICIT_FORMATS}[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0).T, sample_rate, format=container, subtype=subtype)
    return path


def format_available(fmt: str) -> bool:
    """Whether the installed libsndfile can write `fmt` (MP3 needs libsndfile >= 1.1)."""
    container, _ = {**FORMATS, **EXPLICIT_FORMATS}[fmt]
    return container in sf.available_formats()


BLOCK_FRAMES = 65_536
"""Frames decoded at a time by `read_source`: at most 8 channels, 2 MiB a block."""


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header declares, read without decoding any audio."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def samples(self) -> int:
        """Frames x channels: what decoding it all would hold."""
        return self.frames * self.channels


def read_header(path: Path) -> AudioHeader:
    """The header of any file soundfile knows (raises like soundfile when unreadable)."""
    info = sf.info(str(path))
    return AudioHeader(frames=info.frames, sample_rate=info.samplerate, channels=info.channels)


def stereo_fold(channels: int) -> np.ndarray:
    """[channels, 2] weights folding more than 2 channels to stereo: channels 0, 2, 4... averaged to the
    left, 1, 3, 5... to the right (in WAV and FLAC order, each surround pair to its side)."""
    fold = np.zeros((channels, 2), np.float32)
    fold[0::2, 0] = 1.0 / len(range(0, channels, 2))
    fold[1::2, 1] = 1.0 / len(range(1, channels, 2))
    return fold


def read_source(path: Path, max_rate: int = ANALYSIS_MAX_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Decode a file to loop, block by block, at most as many frames as its header declares.

    More than 2 channels are folded to stereo and a rate above `max_rate` is resampled to it (soxr,
    streaming) as each block arrives, so memory holds the result and one block, never the file
    decoded as it is. Returns ([C <= 2, T] float32, sample rate <= max_rate).
    """
    import soxr  # librosa's resampler; imported here so that reading a header stays light

    with sf.SoundFile(str(path)) as source:
        rate, frames = source.samplerate, source.frames
        channels = min(source.channels, 2)
        fold = stereo_fold(source.channels) if source.channels > 2 else None
        out_rate = min(rate, max_rate)
        stream = soxr.ResampleStream(rate, out_rate, channels, dtype="float32") if out_rate != rate else None
        audio = np.empty((channels, math.ceil(frames * out_rate / rate) + 1), np.float32)
        filled = 0

        def put(block: np.ndarray) -> None:
            nonlocal filled
            block = block[: audio.shape[1] - filled]
            audio[:, filled : filled + len(block)] = block.T
            filled += len(block)

        for block in source.blocks(BLOCK_FRAMES, frames=frames, dtype="float32", always_2d=True):
            block = block @ fold if fold is not None else block
            put(stream.resample_chunk(block) if stream is not None else block)
        if stream is not None:
            put(stream.resample_chunk(np.zeros((0, channels), np.float32), last=True))
    return audio[:, :filled], out_rate


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read any file soundfile knows; returns ([C, T] float32, sample rate)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T.copy(), int(rate)
