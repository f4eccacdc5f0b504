"""Peak memory of `loopjam loopify` on the uploads the limits are about, each in its own process.

    .venv/bin/python -m bench.upload_memory

The decoded-size bomb of issue #11 (a 41 KB FLAC declaring 655,350 Hz and 5 channels) and a file
just over the samples limit are refused from their headers; a normal 15 s clip, 6 channels at
96 kHz, and the largest file accepted (10 minutes of 96 kHz stereo, resampled to 48 kHz while
decoded) are looped. Goal: every accepted file under 1 GiB of peak RSS. Renders the clip with
FluidSynth (tests/support/corpus.py); takes a minute or two.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from corpus import Groove, render
from upload_files import bomb, declare_frames, long_stereo, measure_loopify, surround

from generation.config import MAX_SOURCE_SECONDS

ROOT = Path(__file__).resolve().parent.parent
GOAL_BYTES = 1024**3


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        clip = render(Groove("clip15", 128.0, source_bars=8, sample_rate=44100), tmp)
        dense = tmp / "dense.flac"
        sf.write(str(dense), np.zeros((1000, 8), np.float32), 192000)
        files = {
            "bomb: 655,350 Hz, 5 channels": bomb(tmp / "bomb.flac"),
            "over the samples limit: 8 channels, 192 kHz, 80 s": declare_frames(dense, 80 * 192000),
            "15 s clip, 44.1 kHz stereo": tmp / "clip15.wav",
            "6 channels at 96 kHz, 18 s": surround(tmp / "six.flac", clip.audio, clip.sample_rate),
            "10 minutes of 96 kHz stereo (the most accepted)": long_stereo(
                tmp / "long.flac", clip.audio, clip.sample_rate, MAX_SOURCE_SECONDS, 96000),
        }
        for name, path in files.items():  # one at a time: side by side they would share the cores
            (result,) = measure_loopify([[str(path), "--bpm", "128", "--out", str(tmp / "loop.wav")]], ROOT)
            outcome = "looped" if result.returncode == 0 else f"refused ({result.stderr.strip().splitlines()[-1]})"
            goal = "" if result.returncode else f"  goal: < {GOAL_BYTES // 1024**2} MiB"
            print(f"{name}: {path.stat().st_size / 1024:,.1f} KiB file, peak RSS {result.peak_mib:,.0f} MiB, {outcome}{goal}")


if __name__ == "__main__":
    main()
