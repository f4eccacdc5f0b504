"""Audio files a user might upload to loop, crafted or rendered, and `loopjam loopify` run on them
with its peak memory measured.

Import from test and bench modules with `from upload_files import ...`.
"""

from __future__ import annotations

import os
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


LAUNCHER = """
import os, resource, sys
peak_file, limit, *command = sys.argv[1:]
child = os.fork()
if child == 0:
    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    os.execv(sys.executable, [sys.executable, *command])
_, status, usage = os.wait4(child, 0)
with open(peak_file, "w") as out:
    out.write(str(usage.ru_maxrss * 1024))  # KiB on Linux
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Runs a command as its own child and writes that child's peak RSS. A process's peak RSS starts at
its parent's when it is forked, and a test process can be a gigabyte by then: this small launcher
is the parent instead."""


def measure_loopify(runs: list[list[str]], cwd: Path) -> list[Measured]:
    """`loopjam loopify ARGS` for each of `runs`, side by side, each one's peak RSS from its own rusage."""
    started = []
    for args in runs:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        peak = tempfile.NamedTemporaryFile("w+", suffix=".peak", delete=False)
        peak.close()
        command = [sys.executable, "-c", LAUNCHER, peak.name, str(CHILD_ADDRESS_SPACE), "-m", "generation", "loopify", *args]
        child = subprocess.Popen(command, cwd=cwd, env={**os.environ, **CHILD_ENV}, stdout=out, stderr=err, text=True)
        started.append((child, out, err, Path(peak.name)))
    measured = []
    for child, out, err, peak_file in started:
        child.wait()
        with out, err:
            out.seek(0)
            err.seek(0)
            measured.append(Measured(child.returncode, out.read(), err.read(), int(peak_file.read_text())))
        peak_file.unlink()
    return measured
