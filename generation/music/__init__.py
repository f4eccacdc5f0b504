"""Musical analysis of audio: keys, key detection and key matching. Imports neither torch nor discord.

    parse_key("A minor")                            # Key(tonic=9, mode="minor"); UnknownKey (a ValueError) otherwise
    estimate = detect_key(audio, sample_rate)       # music.detect: audio [C, T] or [T] float32 -> KeyEstimate(key | None, confidence)
    match = match_key(loop, sample_rate, target)    # music.shift: KeyMatch, audio [C, T] float32 of the input's length

The package itself gives the keys only: the bot and the queue name and parse keys, and must not load
librosa and pedalboard for it. Detection and shifting are imported from `music.detect` and `music.shift`.
"""

from .keys import ALL_KEYS, Key, Mode, UnknownKey, parse_key, prompt_words, shift_semitones

__all__ = ["ALL_KEYS", "Key", "Mode", "UnknownKey", "parse_key", "prompt_words", "shift_semitones"]
