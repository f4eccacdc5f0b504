"""Musical keys: a tonic pitch class and a mode, named and parsed the way musicians write them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Mode = Literal["major", "minor"]
MODES: tuple[Mode, ...] = ("major", "minor")

# Spellings by key signature: flats for the flat keys, sharps for the sharp ones; the six-accidental
# keys are written the way they are most often met (F# major, Eb minor).
_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_LETTERS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_MODE_WORDS: dict[str, Mode] = {"": "major", "maj": "major", "major": "major", "m": "minor", "min": "minor", "minor": "minor"}
# A letter, an optional accidental, an optional mode word (a lone "m" must be lower case: "M" reads as major elsewhere).
_KEY_PATTERN = re.compile(r"([a-g])([#♯b♭]?)[\s_-]*(maj(?:or)?|min(?:or)?|m?)", re.IGNORECASE)

ACCEPTED_FORMS = '"A minor", "F# major", "Bb minor", "Am", "C", "C#m", "Ebmaj"'


class UnknownKey(ValueError):
    """Text that names no key; the message is one line that lists the accepted forms."""

    def __init__(self, text: str) -> None:
        super().__init__(f"Unknown key {text.strip()!r}: write a note A-G, optionally # or b, then major or minor, e.g. {ACCEPTED_FORMS}.")


@dataclass(frozen=True)
class Key:
    """A key: `tonic` is a pitch class (0 = C ... 11 = B), `mode` is "major" or "minor"."""

    tonic: int
    mode: Mode

    def __post_init__(self) -> None:
        if not 0 <= self.tonic < 12 or self.mode not in MODES:
            raise ValueError(f"no such key: tonic {self.tonic}, mode {self.mode!r}")

    @property
    def name(self) -> str:
        """ "A minor", "F# major", "Bb minor"."""
        names = _MAJOR_NAMES if self.mode == "major" else _MINOR_NAMES
        return f"{names[self.tonic]} {self.mode}"

    @property
    def relative(self) -> Key:
        """The key with the same notes and the other mode (A minor <-> C major)."""
        if self.mode == "major":
            return Key((self.tonic + 9) % 12, "minor")
        return Key((self.tonic + 3) % 12, "major")

    def __str__(self) -> str:
        return self.name


ALL_KEYS: tuple[Key, ...] = tuple(Key(tonic, mode) for mode in MODES for tonic in range(12))


def parse_key(text: str) -> Key:
    """ "A minor", "a min", "Am", "F# major", "F♯", "Bb minor", "bbm", "C", "Ebmaj" -> Key; else `UnknownKey`."""
    match = _KEY_PATTERN.fullmatch(text.strip())
    if match is None or match.group(3) == "M":
        raise UnknownKey(text)
    letter, accidental, mode = match.groups()
    tonic = (_LETTERS[letter.lower()] + _ACCIDENTALS[accidental]) % 12
    return Key(tonic, _MODE_WORDS[mode.lower()])


def prompt_words(key: Key) -> str:
    """The key as MusicGen's training captions write it ("A minor"), for the end of a prompt."""
    return key.name


def shift_semitones(source: Key, target: Key) -> int:
    """The shortest move from `source` to `target` (or to its relative major/minor), -6..+5.

    A source that is the target or its relative (A minor for C major) is already in key: 0.
    A tritone goes down (-6): both ways are as far, and lowering never pushes cymbals and voices
    into the harsher top end.
    """
    aim = target if target.mode == source.mode else target.relative
    up = (aim.tonic - source.tonic) % 12
    return up - 12 if up >= 6 else up
