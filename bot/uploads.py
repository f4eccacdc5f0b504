"""Making a loop (or a mix's stems) fit the guild's upload limit: WAV, then FLAC, then OGG Vorbis."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from generation.audio_io import read_audio, write_audio
from generation.config import ALLOWED_BEATS_PER_BAR, BPM_MIN, MAX_BARS, MAX_SOURCE_SAMPLE_RATE
from generation.jobs.files import AUDIO_SUFFIXES
from generation.storage import MAX_LAYERS

from .text import file_size

log = logging.getLogger(__name__)

SMALLER_FORMATS = ("flac", "ogg")
FORMAT_NAMES = {"flac": "FLAC (lossless)", "ogg": "OGG Vorbis (lossy)"}
MANIFEST = "jam.json"
ENVELOPE_BYTES = 64 * 1024
"""Room left for the embed, the picture and the multipart framing."""
MAX_STEM_ENTRIES = MAX_LAYERS + 1
"""A mix's stems and its jam.json."""
MAX_STEM_BYTES = math.ceil(MAX_BARS * max(ALLOWED_BEATS_PER_BAR) * 60 / BPM_MIN * MAX_SOURCE_SAMPLE_RATE) * 2 * 4 + ENVELOPE_BYTES
"""The longest loop (8 bars of 7 beats at 40 BPM, 84 s) as 32-bit stereo at the highest rate: 129 MB unpacked."""


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
            return Upload(smaller, f"Sent as {FORMAT_NAMES[fmt]}: the WAV was over this server's upload limit.")
    raise TooLargeToUpload(f"The loop is too large to upload here even as OGG ({file_size(smaller.stat().st_size)}).")


class UnfitStems(ValueError):
    """A stems zip no worker writes: unreadable, or more (or larger) entries than a mix's stems can be."""


def fit_stems(original: Path, filesize_limit: int) -> Upload | None:
    """The stems zip as it is, else rebuilt (beside it) with its stems as FLAC, then OGG, whichever fits
    `filesize_limit` bytes first; None when even OGG does not, or the zip is not one to unpack (the mix is
    posted without its stems)."""
    budget = filesize_limit - ENVELOPE_BYTES
    if original.stat().st_size <= budget:
        return Upload(original, None)
    try:
        for fmt in SMALLER_FORMATS:
            smaller = reencoded_stems(original, fmt)
            if smaller.stat().st_size <= budget:
                return Upload(smaller, f"Stems sent as {FORMAT_NAMES[fmt]}: as they were, they were over this server's upload limit.")
    except UnfitStems as error:
        log.warning("left out the stems %s: %s", original.name, error)
    return None


def check_stems(archive: zipfile.ZipFile) -> None:
    """Raise `UnfitStems` unless the zip's entries could be a mix's stems and jam.json, before any is unpacked.

    In distributed mode the zip comes from a worker through Redis: its declared sizes bound what reading
    it costs (zipfile stops at an entry's declared size), so a zip bomb is refused here.
    """
    entries = archive.infolist()
    if len(entries) > MAX_STEM_ENTRIES:
        raise UnfitStems(f"{len(entries)} entries; a mix has at most {MAX_STEM_ENTRIES}")
    largest = max((entry.file_size for entry in entries), default=0)
    if largest > MAX_STEM_BYTES:
        raise UnfitStems(f"an entry of {file_size(largest)} unpacked; a stem is at most {file_size(MAX_STEM_BYTES)}")


def reencoded_stems(original: Path, fmt: str) -> Path:
    """A copy of the stems zip, `<name>-<fmt>.zip`, with every stem in format `fmt` and jam.json naming the new files.

    Entries are read by their base name only: a zip's paths are data, never places to write.
    """
    target = original.with_name(f"{original.stem}-{fmt}{original.suffix}")
    renamed: dict[str, str] = {}
    manifest: bytes | None = None
    try:
        source = zipfile.ZipFile(original)
    except zipfile.BadZipFile as error:
        raise UnfitStems(f"not a zip file ({error})") from None
    check_stems(source)
    with tempfile.TemporaryDirectory() as scratch, source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            name = PurePosixPath(entry.filename).name
            if entry.is_dir() or not name:
                continue
            if name == MANIFEST:
                manifest = source.read(entry)
            elif PurePosixPath(name).suffix.lower() in AUDIO_SUFFIXES:
                unpacked = Path(scratch) / name
                unpacked.write_bytes(source.read(entry))
                audio, rate = read_audio(unpacked)
                smaller = write_audio(unpacked.with_suffix(f".{fmt}"), audio, rate, fmt)
                renamed[name] = smaller.name
                out.write(smaller, smaller.name)
            else:
                out.writestr(name, source.read(entry))
        if manifest is not None:
            out.writestr(MANIFEST, renamed_manifest(manifest, renamed))
    return target


def renamed_manifest(manifest: bytes, renamed: dict[str, str]) -> bytes:
    """jam.json with each layer's `stem` renamed as its file was; as it was when it is not the JSON expected."""
    try:
        jam = json.loads(manifest)
        for layer in jam["layers"]:
            layer["stem"] = renamed.get(layer["stem"], layer["stem"])
    except (ValueError, KeyError, TypeError):
        return manifest
    return json.dumps(jam, indent=2).encode()
