"""Turning a user's prompt into the description MusicGen is conditioned on."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .config import MAX_SOURCE_SECONDS, PROMPT_MAX_CHARS
from .shape import LoopShape, format_bpm

# MusicGen's training captions name tempo as "<number> bpm"; meters as "3/4" and the like.
METER_BY_BEATS = {2: "2/4", 3: "3/4", 4: "4/4", 6: "6/8", 7: "7/8"}
_TEMPO = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b", re.IGNORECASE)


class InvalidRequest(ValueError):
    """A request a user can fix; the message says how, in one line."""


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    """What the model is conditioned on."""
    tempo_note: str | None
    """Set when the prompt named another tempo than the `bpm` option, which won."""


def printable(text: str) -> str:
    """`text` without control (Cc) and format (Cf) characters, for quoting it to a terminal or in Discord.

    Terminal escapes could restyle or link the output; right-to-left overrides and zero-width
    characters could reorder or hide what is quoted around them.
    """
    return "".join(char for char in text if unicodedata.category(char) not in ("Cc", "Cf"))


def validate_request(prompt: str, shape: LoopShape) -> str:
    """Check a loop request; returns the prompt stripped, or raises `InvalidRequest`."""
    text = prompt.strip()
    if not text:
        raise InvalidRequest("The prompt is empty: describe the loop, e.g. \"dusty boom bap, vinyl crackle\".")
    if len(text) > PROMPT_MAX_CHARS:
        raise InvalidRequest(f"The prompt is {len(text)} characters long; the limit is {PROMPT_MAX_CHARS}.")
    problem = shape.problem()
    if problem is not None:
        raise InvalidRequest(problem)
    return text


def validate_source_seconds(seconds: float, name: str = "That file") -> None:
    """Raise `InvalidRequest` when an audio file to loop is longer than `MAX_SOURCE_SECONDS`."""
    if seconds > MAX_SOURCE_SECONDS:
        raise InvalidRequest(f"{name} is {seconds / 60:.1f} minutes long; the limit is {MAX_SOURCE_SECONDS / 60:g} minutes.")


def build_prompt(prompt: str, shape: LoopShape) -> BuiltPrompt:
    """Append the tempo (and the meter when not 4/4) in the words the model learnt them in.

    A tempo already in the prompt is kept when it matches the shape's and replaced when it does not.
    """
    text, bpm, beats_per_bar = prompt.strip(), shape.bpm, shape.beats_per_bar
    tempo = f"{format_bpm(bpm)} bpm"
    note = None
    named = _TEMPO.search(text)
    if named is None:
        text = f"{text}, {tempo}"
    elif abs(float(named.group(1)) - bpm) > 0.005:
        note = f"The prompt said {named.group(0)}; the loop is at {format_bpm(bpm)} BPM as the bpm option asks."
        text = _TEMPO.sub(tempo, text, count=1)
    if beats_per_bar != 4 and METER_BY_BEATS[beats_per_bar] not in text:
        text = f"{text}, {METER_BY_BEATS[beats_per_bar]} time"
    return BuiltPrompt(text=text, tempo_note=note)
