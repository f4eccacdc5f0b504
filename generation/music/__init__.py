"""Musical analysis of audio: keys, key detection and key matching. Imports neither torch nor discord.

    parse_key("A minor")                            # Key(tonic=9, mode="minor"); UnknownKey (a ValueError) otherwise
    estimate = detect_key(audio, sample_rate)       # audio [C, T] or [T] float32 -> KeyEstimate(key | None, confidence)
    match = match_key(loop, sample_rate, target)    # KeyMatch: audio [C, T] float32 of the input's length, shift
"""

from .detect import NO_KEY, KeyEstimate, detect_key
from .keys import ALL_KEYS, Key, Mode, UnknownKey, parse_key, prompt_words
from .shift import KeyMatch, match_key, pitch_shift_loop, shift_semitones

__all__ = [
    "ALL_KEYS",
    "NO_KEY",
    "Key",
    "KeyEstimate",
    "KeyMatch",
    "Mode",
    "UnknownKey",
    "detect_key",
    "match_key",
    "parse_key",
    "pitch_shift_loop",
    "prompt_words",
    "shift_semitones",
]
