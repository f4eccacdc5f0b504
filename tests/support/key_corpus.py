"""A key-detection corpus: grooves in all 24 keys (and one drums-only groove), written with mido, rendered by FluidSynth.

Every groove plays an unambiguous cadential progression, one chord per bar: I-IV-V-I in major,
i-iv-V-i in minor (V with the raised leading tone). The truth is the key we write, never the detector's.
Instrument sets (General MIDI programs), accompaniment styles and tempos rotate through the keys.
Audio is rendered at test time into a cache directory (corpus.render_midi); nothing is committed as audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mido
import numpy as np
from corpus import DRUMS, HAT, KICK, SNARE, TICKS_PER_BEAT, midi_file, render_midi

from generation.music.keys import ALL_KEYS, Key
from generation.shape import LoopShape

BASS, CHORDS = 0, 1  # MIDI channels
OPEN_HAT, CRASH = 46, 49
BEATS_PER_BAR = 4
BASS_LOW, CHORDS_LOW = 36, 55  # bass notes in C2..B2, chord tones in G3..F#4

Style = Literal["sustain", "stabs", "arpeggio"]
# (root above the tonic, chord intervals above the root), one chord per bar.
PROGRESSIONS: dict[str, list[tuple[int, tuple[int, ...]]]] = {
    "major": [(0, (0, 4, 7)), (5, (0, 4, 7)), (7, (0, 4, 7)), (0, (0, 4, 7))],
    "minor": [(0, (0, 3, 7)), (5, (0, 3, 7)), (7, (0, 4, 7)), (0, (0, 3, 7))],
}


@dataclass(frozen=True)
class Band:
    """Who plays: General MIDI programs for the bass and the chords, and how the chords are played."""

    name: str
    bass_program: int
    chord_program: int
    style: Style


BANDS = [
    Band("rhodes", 33, 4, "stabs"),  # finger bass, electric piano
    Band("strings", 32, 48, "sustain"),  # acoustic bass, string ensemble
    Band("guitar", 34, 25, "arpeggio"),  # picked bass, steel guitar
    Band("organ", 38, 16, "sustain"),  # synth bass, drawbar organ
    Band("piano", 33, 0, "arpeggio"),  # finger bass, grand piano
    Band("pad", 38, 89, "stabs"),  # synth bass, warm pad
]
TEMPOS = [84.0, 96.0, 110.0, 124.0, 138.0]


@dataclass(frozen=True)
class KeyGroove:
    """One corpus case: `key` None is a drums-only groove (it has no key). `bars` of music are rendered."""

    name: str
    key: Key | None
    bpm: float
    band: Band | None
    bars: int = 8
    sample_rate: int = 32000


@dataclass
class KeyRendered:
    groove: KeyGroove
    audio: np.ndarray  # [C, T] float32, the groove's bars and the release tail
    sample_rate: int

    def bars(self, count: int, first: int = 0) -> np.ndarray:
        """[C, N] `count` bars from bar `first` (0-based) on, N exactly LoopShape(bpm, count).samples(rate)."""
        start = LoopShape(self.groove.bpm, first).samples(self.sample_rate)
        return self.audio[:, start : start + LoopShape(self.groove.bpm, count).samples(self.sample_rate)]


def _groove_name(key: Key) -> str:
    return key.name.replace("#", "sharp").replace(" ", "_")


KEY_CORPUS: list[KeyGroove] = [
    KeyGroove(_groove_name(key), key, TEMPOS[index % len(TEMPOS)], BANDS[index % len(BANDS)])
    for index, key in enumerate(ALL_KEYS)
]
DRUMS_ONLY = KeyGroove("drums_only", None, 120.0, None)


def _in_register(pitch_class: int, low: int) -> int:
    """The MIDI note of `pitch_class` in the octave [low, low + 12)."""
    return low + (pitch_class - low) % 12


def groove_midi(groove: KeyGroove) -> mido.MidiFile:
    """Drums on every beat; with a key, the progression's chord and bass in every bar (one chord a bar)."""
    tpb, bar_ticks = TICKS_PER_BEAT, BEATS_PER_BAR * TICKS_PER_BEAT
    events: list[tuple[int, mido.Message | mido.MetaMessage]] = [(0, mido.MetaMessage("set_tempo", tempo=round(60e6 / groove.bpm)))]
    if groove.band is not None:
        events.append((0, mido.Message("program_change", channel=BASS, program=groove.band.bass_program)))
        events.append((0, mido.Message("program_change", channel=CHORDS, program=groove.band.chord_program)))

    def note(channel: int, pitch: int, start: int, length: int, velocity: int) -> None:
        events.append((start, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)))
        events.append((start + length, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))

    for bar in range(groove.bars):
        start = bar * bar_ticks
        for beat in range(BEATS_PER_BAR):
            at = start + beat * tpb
            note(DRUMS, KICK if beat % 2 == 0 else SNARE, at, tpb // 2, 110 if beat == 0 else 95)
            note(DRUMS, HAT, at, tpb // 4, 70)
            note(DRUMS, OPEN_HAT if groove.key is None and beat == 3 else HAT, at + tpb // 2, tpb // 4, 50)
        if groove.key is None or groove.band is None:
            if bar % 4 == 0:
                note(DRUMS, CRASH, start, tpb, 90)
            continue
        root, intervals = PROGRESSIONS[groove.key.mode][bar % 4]
        root = (groove.key.tonic + root) % 12
        chord = sorted(_in_register(root + interval, CHORDS_LOW) for interval in intervals)
        bass = _in_register(root, BASS_LOW)
        for beat, pitch in ((0, bass), (2, bass), (3, _in_register(root + 7, BASS_LOW))):
            note(BASS, pitch, start + beat * tpb, tpb - 20, 105 if beat == 0 else 90)
        if groove.band.style == "sustain":
            for pitch in chord:
                note(CHORDS, pitch, start, bar_ticks - 20, 75)
        elif groove.band.style == "stabs":
            for beat in range(BEATS_PER_BAR):
                for pitch in chord:
                    note(CHORDS, pitch, start + beat * tpb, tpb // 2, 85 if beat == 0 else 70)
        else:  # arpeggio: eighths up the chord and its octave
            tones = [*chord, chord[0] + 12]
            for eighth in range(2 * BEATS_PER_BAR):
                note(CHORDS, tones[eighth % len(tones)], start + eighth * tpb // 2, tpb // 2, 80)

    return midi_file(events)


def render_key_groove(groove: KeyGroove, directory: Path) -> KeyRendered:
    """Render (or reuse) the groove's WAV in `directory`."""
    audio, rate = render_midi(groove_midi(groove), directory / f"key_{groove.name}.wav", groove.sample_rate)
    return KeyRendered(groove, audio, rate)
