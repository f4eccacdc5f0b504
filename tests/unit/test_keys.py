"""Keys as users write them, their names, and the shortest move from one key to another."""

from __future__ import annotations

import pytest

from generation.music import ALL_KEYS, Key, UnknownKey, parse_key, prompt_words, shift_semitones

C_MAJOR, A_MINOR = Key(0, "major"), Key(9, "minor")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A minor", A_MINOR), ("a minor", A_MINOR), ("A MINOR", A_MINOR), ("Am", A_MINOR), ("am", A_MINOR),
        ("A min", A_MINOR), ("Amin", A_MINOR), ("  A minor  ", A_MINOR), ("A-minor", A_MINOR),
        ("F# major", Key(6, "major")), ("F#", Key(6, "major")), ("f#maj", Key(6, "major")), ("F♯ major", Key(6, "major")),
        ("Bb minor", Key(10, "minor")), ("bbm", Key(10, "minor")), ("B♭m", Key(10, "minor")), ("Bb", Key(10, "major")),
        ("B", Key(11, "major")), ("bm", Key(11, "minor")),
        ("C", C_MAJOR), ("c", C_MAJOR), ("C major", C_MAJOR), ("Cmaj", C_MAJOR),
        ("C#m", Key(1, "minor")), ("Ebmaj", Key(3, "major")), ("Eb Major", Key(3, "major")), ("Db", Key(1, "major")),
        ("E#", Key(5, "major")), ("Cb major", Key(11, "major")),
    ],
)
def test_accepted_forms(text: str, expected: Key) -> None:
    assert parse_key(text) == expected


@pytest.mark.parametrize("text", ["", "H", "H minor", "A dorian", "AM", "A minor key", "C7", "C#b", "Xm", "minor", "A\nminor x"])
def test_bad_forms_raise_one_line_listing_the_forms(text: str) -> None:
    with pytest.raises(UnknownKey) as raised:
        parse_key(text)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert "\n" not in message
    assert repr(text.strip()) in message
    assert '"A minor", "F# major", "Bb minor", "Am", "C"' in message


def test_names_spell_sharps_and_flats_as_musicians_do() -> None:
    names = [key.name for key in ALL_KEYS]
    assert names == [
        "C major", "Db major", "D major", "Eb major", "E major", "F major", "F# major", "G major", "Ab major", "A major", "Bb major", "B major",
        "C minor", "C# minor", "D minor", "Eb minor", "E minor", "F minor", "F# minor", "G minor", "G# minor", "A minor", "Bb minor", "B minor",
    ]
    assert all(parse_key(key.name) == key for key in ALL_KEYS)
    assert str(A_MINOR) == "A minor" and prompt_words(A_MINOR) == "A minor"


def test_relative_keys() -> None:
    assert C_MAJOR.relative == A_MINOR and A_MINOR.relative == C_MAJOR
    assert Key(6, "major").relative == Key(3, "minor")  # F# major - Eb (D#) minor
    assert all(key.relative.relative == key and key.relative.mode != key.mode for key in ALL_KEYS)


def test_a_key_outside_the_twelve_pitch_classes_is_refused() -> None:
    with pytest.raises(ValueError):
        Key(12, "major")
    with pytest.raises(ValueError):
        Key(0, "dorian")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "target", "semitones"),
    [
        ("C", "D", 2), ("C", "Bb", -2), ("C", "G", -5), ("C", "F", 5), ("Am", "Em", -5), ("Em", "C", 5),
        ("Am", "Am", 0), ("Am", "C", 0), ("C", "Am", 0), ("F#m", "A", 0), ("Ebm", "Gb", 0),
        ("C", "F#", -6), ("F#", "C", -6), ("Am", "Ebm", -6), ("Ebm", "Am", -6),  # a tritone always goes down
        ("Am", "G", -5),  # into G major's relative, E minor: A -> E is down a fourth, not up a fifth
    ],
)
def test_shortest_shift(source: str, target: str, semitones: int) -> None:
    assert shift_semitones(parse_key(source), parse_key(target)) == semitones


def test_every_shift_lands_in_the_target_or_its_relative_by_at_most_a_tritone() -> None:
    for source in ALL_KEYS:
        for target in ALL_KEYS:
            semitones = shift_semitones(source, target)
            assert -6 <= semitones <= 5
            moved = Key((source.tonic + semitones) % 12, source.mode)
            assert moved in (target, target.relative)
