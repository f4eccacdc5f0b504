"""Looping an audio file: its header checked against the limits, then decoded in bounded memory.

A small file can declare a huge rate, channel count or length (a FLAC of silence compresses to
almost nothing), and the engine's memory grows with the rate squared (the seam search). So the
header is checked before a sample is decoded (`check_source`), and the audio arrives folded to
stereo and at 48 kHz at most (`read_source`), block by block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio_io import read_source
from ..config import LoopSettings
from ..prompts import UNREADABLE_SOURCE, UnreadableSource, check_source
from ..shape import LoopShape
from .engine import LoopResult, make_loop


def read_checked(path: Path, name: str = "That file") -> tuple[np.ndarray, int]:
    """The file at `path` decoded once its header passed `check_source`: ([C <= 2, T] float32, rate <= 48 kHz).

    Raises `prompts.UnreadableSource` when soundfile cannot read it (the cause is soundfile's error),
    `prompts.InvalidRequest` when it is empty or over a limit (`name` is how the message calls it).
    """
    check_source(path, name)
    try:
        return read_source(path)
    except (sf.SoundFileError, OSError) as error:  # a header that reads, over audio that does not
        raise UnreadableSource(UNREADABLE_SOURCE) from error


def loop_file(path: Path, shape: LoopShape, settings: LoopSettings | None = None, name: str = "That file") -> LoopResult:
    """A loop of `shape` cut from the file at `path` (see `make_loop`); raises like `read_checked`."""
    audio, rate = read_checked(path, name)
    return make_loop(audio, rate, shape, settings=settings)
