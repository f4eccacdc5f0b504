"""Stems: each layer of a mix as its own exact loop, plus `jam.json`, to rebuild the jam or open it in a DAW.

Stems are the layers as they went into the mix (conformed, loudness-matched, their gain applied,
not ducked: jam.json says whether the mix was), all lowered together when one would clip, so they
keep the mix's balance: summed at unity they are the mix before its loudness treatment. Mixed again
with jam.json's gains (`loopjam mix 01-....wav 02-....wav --gain-db ...`), they are exact loops,
so they are used as they are and the same mix comes out.
"""

from __future__ import annotations

import json
import re
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio_io import extension, write_audio
from .mix import MixResult

MANIFEST = "jam.json"
NAME_CHARS = 40


@dataclass(frozen=True)
class Stem:
    file_name: str
    """`01-dusty-drums.wav`: the layer's order, then its name reduced to safe characters."""
    audio: np.ndarray
    """[2, N] float32."""


def safe_name(text: str) -> str:
    """'Dusty boom-bap, 92 bpm!' -> 'dusty-boom-bap-92-bpm': ASCII letters, digits and dashes only."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:NAME_CHARS].rstrip("-") or "layer"


def stems(result: MixResult, fmt: str, ceiling_db: float) -> list[Stem]:
    """The mix's layers as stems in format `fmt` (a key of `audio_io.FORMATS`), no sample over `ceiling_db` dBFS.

    A sample peak, not a true peak: it keeps stems from clipping when written, at a fraction of the cost.
    """
    peak = max(float(np.max(np.abs(layer.audio))) for layer in result.layers)
    lower = np.float32(min(1.0, 10 ** (ceiling_db / 20) / peak) if peak > 0 else 1.0)
    return [
        Stem(f"{number:02d}-{safe_name(layer.origin.name)}.{extension(fmt)}", layer.audio * lower)
        for number, layer in enumerate(result.layers, start=1)
    ]


def jam_manifest(result: MixResult, stem_files: list[Stem]) -> dict[str, Any]:
    """What `jam.json` holds: the shape, the key (None when none was asked for) and each layer with its stem."""
    shape = result.shape
    return {
        "bpm": shape.bpm, "bars": shape.bars, "beats_per_bar": shape.beats_per_bar, "key": result.key.name if result.key else None,
        "sample_rate": result.sample_rate,
        "duck": any(layer.drum for layer in result.layers),
        "layers": [{"stem": stem.file_name, **layer.as_dict()} for stem, layer in zip(stem_files, result.layers)],
    }


def write_stems(result: MixResult, directory: Path, fmt: str, ceiling_db: float) -> list[Path]:
    """Write the stems and `jam.json` into `directory` (created); returns the paths written, jam.json last."""
    made = stems(result, fmt, ceiling_db)
    paths = [write_audio(directory / stem.file_name, stem.audio, result.sample_rate, fmt) for stem in made]
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps(jam_manifest(result, made), indent=2) + "\n")
    return [*paths, manifest]


def write_stems_zip(result: MixResult, path: Path, fmt: str, ceiling_db: float) -> Path:
    """Write the stems and `jam.json` as one zip file at `path` (a mix's "Stems" download); returns `path`."""
    with tempfile.TemporaryDirectory(prefix="loopjam-stems-") as scratch:
        written = write_stems(result, Path(scratch), fmt, ceiling_db)
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for each in written:
                archive.write(each, each.name)
    return path
