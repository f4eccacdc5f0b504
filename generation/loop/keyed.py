"""A loop's key: detected for every loop, and moved into a target key (a jam's) when one is asked for.

    keyed = in_key(result, parse_key("A minor"), settings)
    keyed.report.source_key, keyed.report.key_shift_semitones     # "C# minor", -4

The shift is Rubber Band's (`music.match_key`): tempo, length and seam stay; the loudness is set
again afterwards, since a shift moves it (up to 3 LU, and the true peak up to 0.8 dB).
"""

from __future__ import annotations

import dataclasses
import math

from ..config import LoopSettings
from ..music import Key
from ..music.detect import detect_key
from ..music.shift import match_key
from .engine import LoopResult
from .loudness import normalise


def in_key(loop: LoopResult, target: Key | None, settings: LoopSettings) -> LoopResult:
    """`loop` with its key in the report and, when `target` is given, moved into that key.

    A loop with no key (drums) or already in the target key or its relative is left as it is.
    """
    estimate = detect_key(loop.audio, loop.sample_rate)
    audio, lufs, shift = loop.audio, loop.report.loudness_lufs, 0
    if target is not None and estimate.key is not None:
        match = match_key(loop.audio, loop.sample_rate, target, estimate)
        if match.shift_semitones:
            shift = match.shift_semitones
            audio, measured = normalise(match.audio, loop.sample_rate, settings.target_lufs, settings.true_peak_dbtp)
            lufs = measured if math.isfinite(measured) else None
    report = dataclasses.replace(
        loop.report,
        loudness_lufs=lufs,
        source_key=estimate.key.name if estimate.key is not None else None,
        key_confidence=round(estimate.confidence, 3),
        target_key=target.name if target is not None else None,
        key_shift_semitones=shift if target is not None else None,
    )
    return dataclasses.replace(loop, audio=audio, report=report)
