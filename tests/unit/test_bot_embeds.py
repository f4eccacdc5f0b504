"""What a posted loop's embed says of its key."""

from __future__ import annotations

import pytest

from bot.embeds import key_text, progress_embed, result_embed


@pytest.mark.parametrize(
    ("report", "shown"),
    [
        ({"source_key": "C# minor", "target_key": "A minor", "key_shift_semitones": -4}, "A minor (moved -4 semitones from C# minor)"),
        ({"source_key": "E minor", "target_key": "G major", "key_shift_semitones": 0}, "E minor"),  # the relative: in key
        ({"source_key": "F major", "target_key": None, "key_shift_semitones": None}, "F major"),
        ({"source_key": None, "target_key": "A minor", "key_shift_semitones": 0}, "none (unpitched)"),
        ({}, "none (unpitched)"),  # a loop made before keys were detected
    ],
)
def test_the_key_is_shown_as_found_or_as_moved(report: dict, shown: str) -> None:
    assert key_text(report) == shown
    embed = result_embed("abcdefgh", "“dub” · 120 BPM", {"verdict": "good", **report}, 1, "facebook/musicgen-small", 8.0, "by <@1>")
    assert {field.name: field.value for field in embed.fields}["Key"] == shown


@pytest.mark.parametrize(("stage", "mixing", "title"), [
    ("looping", False, "Cutting the loop"), ("looping", True, "Mixing the layers"),
    ("generating", True, "Generating"), ("queued", True, "Queued, position 3"),
])
def test_progress_says_what_the_worker_does(stage: str, mixing: bool, title: str) -> None:
    """A jam's mix reports the "looping" stage too: its reply says it is mixing, not cutting a loop."""
    embed = progress_embed("abcdefgh", "“jam mix: 2 layers” · 92 BPM", stage, 40.0, 3, mixing=mixing)
    assert embed.title == title
