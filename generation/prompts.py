"""Turning a user's prompt into the description MusicGen is conditioned on."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .audio_io import AudioHeader, read_header
from .config import MAX_SOURCE_CHANNELS, MAX_SOURCE_SAMPLE_RATE, MAX_SOURCE_SAMPLES, MAX_SOURCE_SECONDS, PROMPT_MAX_CHARS
from .shape import LoopShape, format_bpm

# MusicGen's training captions name tempo as "<number> bpm"; meters as "3/4" and the like.
METER_BY_BEATS = {2: "2/4", 3: "3/4", 4: "4/4", 6: "6/8", 7: "7/8"}
_TEMPO = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b", re.IGNORECASE)


UNREADABLE_SOURCE = "I can't read that file as audio. Upload WAV, FLAC, OGG or MP3."


class InvalidRequest(ValueError):
    """A request a user can fix; the message says how, in one line."""


class UnreadableSource(InvalidRequest):
    """soundfile cannot read the file's header (the cause is soundfile's error)."""


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


def check_source(path: Path, name: str = "That file") -> AudioHeader:
    """The header of an audio file to loop, checked before any of it is decoded.

    Raises `UnreadableSource` when soundfile cannot read it, `InvalidRequest` when it holds no
    audio or is over a limit: the rate, the channels, the length, or the samples decoding it holds.
    """
    try:
        header = read_header(path)
    except Exception as error:  # soundfile's LibsndfileError (a RuntimeError), OSError for a missing file
        raise UnreadableSource(UNREADABLE_SOURCE) from error
    if header.frames <= 0 or header.sample_rate <= 0:
        raise InvalidRequest(f"{name} contains no audio.")
    if header.sample_rate > MAX_SOURCE_SAMPLE_RATE:
        raise InvalidRequest(
            f"{name} is sampled at {header.sample_rate:,} Hz; the limit is {MAX_SOURCE_SAMPLE_RATE:,} Hz."
        )
    if header.channels > MAX_SOURCE_CHANNELS:
        raise InvalidRequest(f"{name} has {header.channels} channels; the limit is {MAX_SOURCE_CHANNELS}.")
    if header.seconds > MAX_SOURCE_SECONDS:
        minutes = math.ceil(header.seconds / 6) / 10  # rounded up: 601 s is over 10 minutes, not "10.0"
        raise InvalidRequest(f"{name} is {minutes:.1f} minutes long; the limit is {MAX_SOURCE_SECONDS / 60:g} minutes.")
    if header.samples > MAX_SOURCE_SAMPLES:
        raise InvalidRequest(
            f"{name} holds {header.samples:,} samples ({header.channels} channels at {header.sample_rate:,} Hz); "
            f"the limit is {MAX_SOURCE_SAMPLES:,}, as many as {MAX_SOURCE_SECONDS / 60:g} minutes of 96 kHz stereo."
        )
    return header


def build_prompt(prompt: str, shape: LoopShape, key_words: str | None = None) -> BuiltPrompt:
    """Append the tempo (and the meter when not 4/4, and `key_words` such as "A minor") in the words
    the model learnt them in.

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
    if key_words is not None and key_words.lower() not in text.lower():
        text = f"{text}, {key_words}"
    return BuiltPrompt(text=text, tempo_note=note)
