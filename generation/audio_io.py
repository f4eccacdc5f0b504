"""Reading and writing audio with soundfile (no ffmpeg). Arrays are [C, T] float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

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


def audio_duration(path: Path) -> float:
    """Seconds of audio in a file, from its header (raises like soundfile when unreadable)."""
    info = sf.info(str(path))
    return info.frames / info.samplerate


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read any file soundfile knows; returns ([C, T] float32, sample rate)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T.copy(), int(rate)
