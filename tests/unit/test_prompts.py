"""Prompt building: tempo and meter in the model's words; the bpm option wins."""

from __future__ import annotations

import pytest

from generation.prompts import InvalidRequest, build_prompt, validate_request
from generation.shape import LoopShape


@pytest.mark.parametrize(
    ("prompt", "bpm", "beats", "sent", "noted"),
    [
        ("dusty boom bap, vinyl crackle", 92, 4, "dusty boom bap, vinyl crackle, 92 bpm", False),
        ("lofi piano", 60.23, 4, "lofi piano, 60.23 bpm", False),
        ("waltz on a music box", 87.5, 3, "waltz on a music box, 87.5 bpm, 3/4 time", False),
        ("jungle break at 174 BPM", 174, 4, "jungle break at 174 BPM", False),
        ("house at 120 bpm", 124, 4, "house at 124 bpm", True),
        ("odd groove in 7/8", 140, 7, "odd groove in 7/8, 140 bpm", False),
    ],
)
def test_build_prompt(prompt: str, bpm: float, beats: int, sent: str, noted: bool) -> None:
    built = build_prompt(prompt, LoopShape(bpm, 4, beats))
    assert built.text == sent
    assert (built.tempo_note is not None) == noted
    if noted:
        assert "120 bpm" in built.tempo_note and "124 BPM" in built.tempo_note


@pytest.mark.parametrize(
    ("prompt", "sent"),
    [
        ("dark techno", "dark techno, 128 bpm, A minor"),
        ("sad piano in a minor", "sad piano in a minor, 128 bpm"),  # named already: not twice
    ],
)
def test_a_jam_key_is_named_in_the_prompt_once(prompt: str, sent: str) -> None:
    assert build_prompt(prompt, LoopShape(128, 4), "A minor").text == sent


@pytest.mark.parametrize(
    ("bpm", "bars", "beats", "rate", "samples"),
    [(60.23, 2, 4, 32000, 255022), (92, 4, 4, 32000, 333913), (174, 8, 4, 44100, 486621), (87.5, 1, 3, 32000, 65829)],
)
def test_loop_samples_are_exact(bpm: float, bars: int, beats: int, rate: int, samples: int) -> None:
    assert LoopShape(bpm, bars, beats).samples(rate) == samples
    assert LoopShape(bpm, bars, beats).seconds == pytest.approx(samples / rate, abs=1 / rate)


@pytest.mark.parametrize(
    ("prompt", "bpm", "bars", "beats", "message"),
    [
        ("", 90, 4, 4, "empty"),
        ("x" * 501, 90, 4, 4, "501 characters"),
        ("ok", 39.99, 4, 4, "between 40 and 240"),
        ("ok", 90, 16, 4, "Bars must be one of"),
        ("ok", 90, 4, 5, "Beats per bar must be one of"),
    ],
)
def test_invalid_requests_say_what_to_fix(prompt: str, bpm: float, bars: int, beats: int, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate_request(prompt, LoopShape(bpm, bars, beats))
