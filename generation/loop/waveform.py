"""A small waveform picture of a loop with its bar lines, for the Discord embed (Pillow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from ..shape import LoopShape

BACKGROUND = (32, 34, 37)
WAVE = (88, 101, 242)
BAR_LINE = (185, 187, 190)
BEAT_LINE = (70, 72, 76)


def waveform_png(audio: np.ndarray, shape: LoopShape, width: int = 640, height: int = 120) -> bytes:
    """PNG bytes of [C, N] audio: min/max per pixel column, bar lines bright, beat lines dim."""
    signal = audio.mean(axis=0)
    starts = np.linspace(0, len(signal), min(width, len(signal)), endpoint=False).astype(int)
    low, high = np.minimum.reduceat(signal, starts), np.maximum.reduceat(signal, starts)
    scale = max(float(np.abs(signal).max()), 1e-9)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    beats, beats_per_bar = shape.beats, shape.beats_per_bar
    for beat in range(1, beats):
        x = round(beat * width / beats)
        draw.line([(x, 0), (x, height)], fill=BAR_LINE if beat % beats_per_bar == 0 else BEAT_LINE)
    middle = (height - 1) / 2
    for x, (lo, hi) in enumerate(zip(low, high)):
        draw.line([(x, middle - hi / scale * middle), (x, middle - lo / scale * middle)], fill=WAVE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
