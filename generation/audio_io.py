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


def extension(fmt: str) -> str:
    return {"wav24": "wav"}.get(fmt, fmt)


def write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> Path:
    """Write [C, T] audio; returns the path written."""
    container, subtype = FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0).T, sample_rate, format=container, subtype=subtype)
    return path


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read any file soundfile knows; returns ([C, T] float32, sample rate)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T.copy(), int(rate)
