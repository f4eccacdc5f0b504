"""Audio files a user might upload to loop, crafted or rendered, and `loopjam loopify` run on them
with its peak memory measured.

Import from test and bench modules with `from upload_files import ...`.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

BOMB_RATE, BOMB_CHANNELS, BOMB_SECONDS = 655_350, 5, 10
"""The decoded-size bomb of issue #11: a 41 KB FLAC of silence declaring 655,350 Hz and 5 channels."""
CHILD_ADDRESS_SPACE = 4 * 1024**3
"""Each measured run may map this much at most: a bomb that gets through fails fast, not the machine."""
CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
"""One thread each: the figures do not depend on the machine's cores, nor does the address space."""


def bomb(path: Path) -> Path:
    """Silence at `BOMB_RATE` Hz in `BOMB_CHANNELS` channels, written a second at a time: tiny as FLAC."""
    with sf.SoundFile(str(path), "w", BOMB_RATE, BOMB_CHANNELS, format="FLAC", subtype="PCM_16") as out:
        second = np.zeros((BOMB_RATE, BOMB_CHANNELS), np.float32)
        for _ in range(BOMB_SECONDS):
            out.write(second)
    return path


def surround(path: Path, audio: np.ndarray, rate: int, channels: int = 6, out_rate: int = 96_000) -> Path:
    """[2, T] stereo at `rate` as a `channels`-channel FLAC at `out_rate`: L, R, then their mix, quieter, in the rest."""
    stereo = soxr.resample(audio.T, rate, out_rate)
    extra = np.repeat(stereo.mean(axis=1, keepdims=True) * 0.5, channels - 2, axis=1)
    sf.write(str(path), np.concatenate([stereo, extra], axis=1), out_rate, format="FLAC", subtype="PCM_24")
    return path


def long_stereo(path: Path, audio: np.ndarray, rate: int, seconds: float, out_rate: int) -> Path:
    """`audio` [2, T] at `rate` repeated to `seconds` of `out_rate` stereo FLAC, written a piece at a time."""
    piece = soxr.resample(audio.T, rate, out_rate)
    total = round(seconds * out_rate)
    with sf.SoundFile(str(path), "w", out_rate, 2, format="FLAC", subtype="PCM_16") as out:
        for start in range(0, total, len(piece)):
            out.write(piece[: total - start])
    return path


def declare_frames(path: Path, frames: int) -> Path:
    """Make a FLAC's header (STREAMINFO's 36-bit sample count) declare `frames`, whatever it holds."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO is the first block of a FLAC"
    fields = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels, bits per sample, then the count
    count = (1 << 36) - 1
    data[18:26] = ((fields & ~count) | frames).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int

    @property
    def peak_mib(self) -> float:
        return self.peak_rss_bytes / 1024**2


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


def measure_loopify(runs: list[list[str]], cwd: Path) -> list[Measured]:
    """`loopjam loopify ARGS` for each of `runs`, side by side, each one's peak RSS from its own rusage."""
    command = [sys.executable, "-m", "generation", "loopify"]
    started = []
    for args in runs:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        child = subprocess.Popen([*command, *args], cwd=cwd, env={**os.environ, **CHILD_ENV}, stdout=out, stderr=err,
                                 text=True, preexec_fn=_limit_address_space)
        started.append((child, out, err))
    measured = []
    for child, out, err in started:
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
        child.returncode = os.waitstatus_to_exitcode(status)
        with out, err:
            out.seek(0)
            err.seek(0)
            measured.append(Measured(child.returncode, out.read(), err.read(), usage.ru_maxrss * 1024))  # KiB on Linux
    return measured
