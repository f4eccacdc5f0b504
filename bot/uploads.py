"""Making a loop fit the guild's upload limit: WAV, then FLAC, then OGG Vorbis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from generation.audio_io import read_audio, write_audio

from .text import file_size

SMALLER_FORMATS = ("flac", "ogg")
ENVELOPE_BYTES = 64 * 1024
"""Room left for the embed, the picture and the multipart framing."""


@dataclass(frozen=True)
class Upload:
    path: Path
    note: str | None
    """Set when a smaller format than the original had to be used."""


class TooLargeToUpload(Exception):
    pass


def fit_upload(original: Path, filesize_limit: int) -> Upload:
    """The first of WAV, FLAC, OGG (written beside the original) that fits `filesize_limit` bytes."""
    budget = filesize_limit - ENVELOPE_BYTES
    if original.stat().st_size <= budget:
        return Upload(original, None)
    audio, rate = read_audio(original)
    for fmt in SMALLER_FORMATS:
        smaller = write_audio(original.with_suffix(f".{fmt}"), audio, rate, fmt)
        if smaller.stat().st_size <= budget:
            name = "FLAC (lossless)" if fmt == "flac" else "OGG Vorbis (lossy)"
            return Upload(smaller, f"Sent as {name}: the WAV was over this server's upload limit.")
    raise TooLargeToUpload(f"The loop is too large to upload here even as OGG ({file_size(smaller.stat().st_size)}).")
