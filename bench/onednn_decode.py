"""The CPU decode stall: first EnCodec decode at each new length, with oneDNN on and off.

    uv run python bench/onednn_decode.py

Uses a musicgen-small-shaped codec with random weights. Prints first and second decode seconds.
"""

from __future__ import annotations

import time

import torch
from omegaconf import OmegaConf

from generation.model import SMALL, codec_config


def decode_seconds(codec, frames: int) -> tuple[float, float]:
    tokens = torch.randint(0, SMALL.card, (1, SMALL.n_q, frames))
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        with torch.no_grad():
            codec.decode(tokens, None)
        timings.append(time.perf_counter() - started)
    return timings[0], timings[1]


def main() -> None:
    from audiocraft.models import builders

    codec = builders.get_compression_model(OmegaConf.create(codec_config(SMALL))).eval()
    for enabled in (True, False):
        torch.backends.mkldnn.enabled = enabled
        for frames in (50, 300, 301):
            first, second = decode_seconds(codec, frames)
            print(f"oneDNN {'on ' if enabled else 'off'}  {frames:4d} frames: first {first:6.2f} s, then {second:6.2f} s")


if __name__ == "__main__":
    main()
