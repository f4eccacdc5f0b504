"""The loop engine: exact-BPM, seamless loops from any audio. Imports neither torch nor discord.

    result = make_loop(audio, sample_rate, LoopShape(bpm=92, bars=4))   # audio [C, T] float32
    result.audio     # [C, N] float32, N = shape.samples(sample_rate), exactly
    result.report    # LoopReport: tempo, stretch, cut point, seam, loudness, verdict
"""

from .engine import LoopGrid, LoopResult, make_loop, make_variation_loop, variation_prompt
from .report import LoopReport

__all__ = ["LoopGrid", "LoopReport", "LoopResult", "make_loop", "make_variation_loop", "variation_prompt"]
