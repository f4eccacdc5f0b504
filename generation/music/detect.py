"""Key detection: tonic and mode of any audio, with a confidence, or no key for unpitched audio.

Three cues score each of the 24 keys, as good key finders combine them:
  - the pitch classes of the middle and upper registers against Temperley's (Kostka-Payne) key profiles;
  - the bass against Albrecht & Shanahan's profiles, which weigh the tonic (and fifth) the most;
  - harmonic function: the chord heard in each frame (a major or minor triad) votes for the keys
    it belongs to, the tonic chord most, then the dominant (major, so in minor it carries the raised
    leading tone: V-i is what tells A minor from C major), then the subdominant.
Mean chroma against one profile is not enough: overtones of the bass and the relative major's
shared notes make most minor grooves read major. Notes come from `notes.note_activity`, which
gives the overtones back to their fundamentals.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from .keys import ALL_KEYS, Key
from .notes import NoteActivity, note_activity

# Key profiles, index 0 = the tonic.
TEMPERLEY_MAJOR = np.array([0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400])
TEMPERLEY_MINOR = np.array([0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330])
ALBRECHT_SHANAHAN_MAJOR = np.array([0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081])
ALBRECHT_SHANAHAN_MINOR = np.array([0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052])

# Harmonic function of a triad in a key: (root above the tonic, minor triad) -> weight; other triads count against.
MAJOR_FUNCTIONS = {(0, False): 1.0, (7, False): 0.8, (5, False): 0.6, (2, True): 0.3, (9, True): 0.3, (4, True): 0.2}
MINOR_FUNCTIONS = {(0, True): 1.0, (7, False): 0.8, (5, True): 0.6, (7, True): 0.3, (8, False): 0.3, (3, False): 0.3, (10, False): 0.3}
FOREIGN_CHORD = -0.5

BASS_WEIGHT, FUNCTION_WEIGHT = 0.5, 1.0  # the treble profile's weight is 1
CHORD_SMOOTHING_FRAMES = 3  # ~0.4 s: a chord is what holds through a few frames, not a passing note
CHORD_FIT_TEMPERATURE = 0.05  # a triad that misses one note of the frame's chord fits ~0.3 worse: no share
SOFTMAX_TEMPERATURE = 0.2  # in combined-score units; turns the 24 scores into probabilities
# Pitched audio has a strong sustained (harmonic) part: a drum loop keeps under 5 % of its energy there,
# music with chords or a bass 40 % and more. Between the two bounds the confidence is scaled down.
HARMONIC_RATIO_NONE, HARMONIC_RATIO_FULL = 0.1, 0.3
# A key needs more than a note or a fifth: the pitch variety (see _pitch_variety) of a lone note is
# under 2, of a bare fifth under 3, of a triad 3-4, of a progression 5 and more.
PITCH_VARIETY_NONE, PITCH_VARIETY_FULL = 2.0, 4.0
MIN_CONFIDENCE = 0.3  # below this the audio has no key we would act on
MIN_SECONDS = 1.0  # shorter audio is too short to tell a key


@dataclass(frozen=True)
class KeyEstimate:
    """A detected key; `key` is None for audio with no key (unpitched, silent, or too ambiguous)."""

    key: Key | None
    confidence: float
    """0..1: how sure the detector is of `key`; 0 when `key` is None."""


NO_KEY = KeyEstimate(None, 0.0)


def _profile_scores(chroma: np.ndarray, major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """[24] Pearson correlation of `chroma` [12] with each key's profile, in ALL_KEYS order."""
    centred = chroma - chroma.mean()
    norm = np.linalg.norm(centred)
    if norm == 0:
        return np.zeros(len(ALL_KEYS))
    profiles = _rotated_profiles(tuple(major), tuple(minor))
    return profiles @ (centred / norm)


@functools.cache
def _rotated_profiles(major: tuple[float, ...], minor: tuple[float, ...]) -> np.ndarray:
    """[24, 12] centred, unit-norm profiles of every key in ALL_KEYS order."""
    rows = np.array([np.roll(major if key.mode == "major" else minor, key.tonic) for key in ALL_KEYS])
    rows -= rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@functools.cache
def _triads() -> np.ndarray:
    """[24, 12] unit-norm templates: major triads on C..B, then minor triads on C..B."""
    templates = np.zeros((24, 12))
    for root in range(12):
        templates[root, [root, (root + 4) % 12, (root + 7) % 12]] = 1.0
        templates[12 + root, [root, (root + 3) % 12, (root + 7) % 12]] = 1.0
    return templates / np.sqrt(3.0)


@functools.cache
def _function_weights() -> np.ndarray:
    """[24 keys, 24 triads]: how much hearing each triad speaks for each key."""
    weights = np.full((len(ALL_KEYS), 24), FOREIGN_CHORD)
    for row, key in enumerate(ALL_KEYS):
        functions = MAJOR_FUNCTIONS if key.mode == "major" else MINOR_FUNCTIONS
        for (interval, minor), weight in functions.items():
            weights[row, 12 * minor + (key.tonic + interval) % 12] = weight
    return weights


def _function_scores(chroma: np.ndarray) -> np.ndarray:
    """[24] each key's mean harmonic-function weight over the frames' chords, frames weighted by loudness.

    A frame's vote goes to the triads that fit it best, shared among equal fits: a lone note or a
    bare fifth fits several triads alike and so speaks for no key in particular.
    """
    loudness = chroma.sum(axis=0)
    if loudness.sum() == 0:
        return np.zeros(len(ALL_KEYS))
    unit = chroma / np.maximum(np.linalg.norm(chroma, axis=0), 1e-12)
    fit = uniform_filter1d(_triads() @ unit, size=CHORD_SMOOTHING_FRAMES, axis=1, mode="nearest")
    share = np.exp((fit - fit.max(axis=0)) / CHORD_FIT_TEMPERATURE)
    heard = (share / share.sum(axis=0)) @ (loudness / loudness.sum())
    return _function_weights() @ heard


def key_scores(notes: NoteActivity) -> np.ndarray:
    """[24] combined score of each key in ALL_KEYS order (higher is likelier)."""
    bass, treble = notes.bass, notes.treble
    return (
        _profile_scores(treble.sum(axis=1), TEMPERLEY_MAJOR, TEMPERLEY_MINOR)
        + BASS_WEIGHT * _profile_scores(bass.sum(axis=1), ALBRECHT_SHANAHAN_MAJOR, ALBRECHT_SHANAHAN_MINOR)
        + FUNCTION_WEIGHT * _function_scores(bass + treble)
    )


def _ramp(value: float, none: float, full: float) -> float:
    """0 at or below `none`, 1 at or above `full`, linear between."""
    return float(np.clip((value - none) / (full - none), 0.0, 1.0))


def _pitch_variety(notes: NoteActivity) -> float:
    """How many pitch classes effectively sound (participation ratio of the chroma): 1 for a pure drone, 3 for a pure triad."""
    chroma = (notes.bass + notes.treble).sum(axis=1)
    shares = chroma / max(float(chroma.sum()), 1e-12)
    return 1.0 / max(float(np.sum(np.square(shares))), 1e-12)


def _confidence(scores: np.ndarray, notes: NoteActivity) -> float:
    """0..1: the best key's softmax probability among the 24, scaled down for weak evidence.

    Weak evidence: little sustained (pitched) energy, or too few pitch classes to imply a key
    (a lone note or a bare fifth fits several keys, whatever the scores say).
    """
    probabilities = np.exp((scores - scores.max()) / SOFTMAX_TEMPERATURE)
    return (
        float(1.0 / probabilities.sum())
        * _ramp(notes.harmonic_ratio, HARMONIC_RATIO_NONE, HARMONIC_RATIO_FULL)
        * _ramp(_pitch_variety(notes), PITCH_VARIETY_NONE, PITCH_VARIETY_FULL)
    )


def detect_key(audio: np.ndarray, sample_rate: int) -> KeyEstimate:
    """The key of `audio` ([C, T] or [T] float32): tonic and mode with a confidence, or NO_KEY.

    NO_KEY for silence, for unpitched audio (a drum loop), for under a second of audio and when no
    key is likely enough.
    """
    if np.shape(audio)[-1] < MIN_SECONDS * sample_rate or not np.any(audio):
        return NO_KEY
    notes = note_activity(audio, sample_rate)
    scores = key_scores(notes)
    certainty = _confidence(scores, notes)
    if certainty < MIN_CONFIDENCE:
        return NO_KEY
    return KeyEstimate(ALL_KEYS[int(np.argmax(scores))], round(certainty, 3))
