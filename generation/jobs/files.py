"""Which files a job's result may name: loop files under the data directory, audio and waveforms only.

A result names its files (a worker's events, a history row), and whoever can write to the queue's
Redis can write a result. So names are never trusted: `loop_file` gives the only names a loop's
files can have, and `inside` resolves a name strictly under a directory (symlinks followed) and
refuses anything else, when a result arrives and again right before the bot uploads a file.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path, PurePosixPath

LOOPS_DIR = "loops"
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3"})
WAVEFORM_SUFFIX = ".png"
STEMS_SUFFIX = ".zip"
"""A mix's stems (each conformed layer and `jam.json`), beside its audio with the same stem."""
LOOP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a loop's short id looks like (it names files)."""


class UnsafeFile(ValueError):
    """A file name that reaches outside its directory, or names a type of file not allowed there."""


def checked_id(loop_id: object) -> str:
    """A loop (or job) id fit to name a file; `UnsafeFile` for anything else."""
    if not isinstance(loop_id, str) or not LOOP_ID.fullmatch(loop_id):
        raise UnsafeFile(f"not a loop id: {str(loop_id)[:80]!r}")
    return loop_id


def loop_file(loop_id: str, suffix: str) -> str:
    """The name of a loop's file relative to the data directory: `loops/<loop id><suffix>`."""
    return f"{LOOPS_DIR}/{checked_id(loop_id)}{suffix}"


def is_loop_file(name: object, loop_id: str, suffixes: Collection[str]) -> bool:
    """Whether `name` is the loop's file with one of `suffixes`."""
    return isinstance(name, str) and PurePosixPath(name).suffix.lower() in suffixes and name == loop_file(
        loop_id, PurePosixPath(name).suffix
    )


def inside(root: Path, name: str | Path, suffixes: Collection[str]) -> Path:
    """`name` (relative to `root`, or absolute) as a resolved path strictly under `root`, with one of `suffixes`.

    Raises `UnsafeFile` otherwise: an absolute path elsewhere, `..`, a symlink out, another type.
    """
    root = root.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise UnsafeFile(f"outside {root}: {str(name)[:200]!r}")
    if path.suffix.lower() not in suffixes:
        raise UnsafeFile(f"not an allowed type of file ({', '.join(sorted(suffixes))}): {str(name)[:200]!r}")
    return path
