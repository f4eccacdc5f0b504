"""Which notes sound, frame by frame: the harmonic part of a log-frequency spectrum explained as notes.

A plain chroma counts every overtone as a note: a bass A's fifth harmonic is a C#, so an A minor
groove reads as half A major. Here the spectrum is explained as a non-negative sum of note
templates, each a fundamental with its decaying harmonic series (as NNLS chroma does), so the
energy of the overtones goes back to the notes that made them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import librosa
import numpy as np
from scipy.sparse import csr_array

ANALYSIS_RATE = 8000  # harmony lives below 2 kHz; 8 kHz keeps the transform cheap
N_FFT = 4096  # 0.5 s: resolves semitones from about C2 (65 Hz); lower notes are placed by their harmonics
HOP = 1024  # 128 ms frames: chords change far slower
LOWEST_NOTE = 24  # MIDI C1 (32.7 Hz)
OCTAVES = 6  # C1 .. B6
NOTES = 12 * OCTAVES
BINS_PER_NOTE = 3  # a third of a semitone: room for tuning and inharmonic partials
HARMONICS = 8
HARMONIC_DECAY = 0.7  # amplitude of harmonic h is DECAY ** (h - 1) in a note's template
UNMIXING_ITERATIONS = 50
HPSS_KERNEL = (7, 9)  # harmonic: ~0.9 s along time; percussive: 3 semitones along frequency
BASS_TOP, TREBLE_BOTTOM = 52, 45  # MIDI: bass fades out towards E3, treble fades in from A2


@dataclass(frozen=True)
class NoteActivity:
    """How loud each note is in each frame, and how much of the signal is pitched at all."""

    activation: np.ndarray
    """[NOTES, F] non-negative; row n is MIDI note LOWEST_NOTE + n."""
    harmonic_ratio: float
    """Energy of the harmonic (sustained) part over the whole spectrum's energy, 0..1; drums score low."""

    def chroma(self, weights: np.ndarray) -> np.ndarray:
        """[12, F] activations weighted per note ([NOTES]) and folded onto pitch classes (0 = C)."""
        weighted = self.activation * weights[:, None]
        return weighted.reshape(OCTAVES, 12, -1).sum(axis=0)

    @property
    def bass(self) -> np.ndarray:
        """[12, F] chroma of the low register (up to about E3)."""
        return self.chroma(_register_weights()[0])

    @property
    def treble(self) -> np.ndarray:
        """[12, F] chroma of the middle and upper registers (from about A2)."""
        return self.chroma(_register_weights()[1])


@functools.cache
def _register_weights() -> tuple[np.ndarray, np.ndarray]:
    midi = LOWEST_NOTE + np.arange(NOTES)
    bass = np.clip((BASS_TOP - midi) / 12, 0.0, 1.0)
    treble = np.clip((midi - TREBLE_BOTTOM) / 12, 0.0, 1.0)
    return bass, treble


@functools.cache
def _log_frequency_bank() -> csr_array:
    """[NOTES * BINS_PER_NOTE, N_FFT // 2 + 1] triangles on the STFT bins, centred on thirds of a semitone.

    Below ~100 Hz the STFT is coarser than a third of a semitone and a triangle interpolates between
    two STFT bins; above, it sums the bins within a third of a semitone (as a constant-Q bin would).
    librosa's CQT gives the same picture but rebuilds its filters on every call (~40 ms a loop).
    """
    offsets = (np.arange(NOTES * BINS_PER_NOTE) - BINS_PER_NOTE // 2) / BINS_PER_NOTE
    centres = librosa.midi_to_hz(LOWEST_NOTE + offsets)
    frequencies = np.fft.rfftfreq(N_FFT, 1.0 / ANALYSIS_RATE)
    widths = np.maximum(frequencies[1], centres * (2 ** (1 / (12 * BINS_PER_NOTE)) - 1))
    return csr_array(np.maximum(0.0, 1.0 - np.abs(frequencies[None, :] - centres[:, None]) / widths[:, None]))


@functools.cache
def _note_templates() -> np.ndarray:
    """[NOTES * BINS_PER_NOTE, NOTES] unit-norm spectra of notes with their harmonic series."""
    bins_per_octave = 12 * BINS_PER_NOTE
    templates = np.zeros((NOTES * BINS_PER_NOTE, NOTES))
    for note in range(NOTES):
        for harmonic in range(1, HARMONICS + 1):
            row = BINS_PER_NOTE * note + BINS_PER_NOTE // 2 + round(bins_per_octave * np.log2(harmonic))
            if row < templates.shape[0]:
                templates[row, note] += HARMONIC_DECAY ** (harmonic - 1)
    return templates / np.linalg.norm(templates, axis=0, keepdims=True)


def _unmix(spectrum: np.ndarray) -> np.ndarray:
    """[NOTES, F] non-negative note activations whose templates best sum to `spectrum` [bins, F].

    Multiplicative updates (Lee & Seung, Euclidean) with the templates held fixed: an NNLS fit per frame.
    """
    templates = _note_templates()
    gram = templates.T @ templates
    projected = templates.T @ spectrum
    activation = np.maximum(projected, 0.0) + 1e-9
    for _ in range(UNMIXING_ITERATIONS):
        activation *= projected / (gram @ activation + 1e-9)
    return activation


def note_activity(audio: np.ndarray, sample_rate: int) -> NoteActivity:
    """Note activations of `audio` ([C, T] or [T] float32), from its harmonic part (HPSS) only."""
    signal = np.asarray(audio, dtype=np.float32)
    signal = signal.mean(axis=0) if signal.ndim == 2 else signal
    signal = librosa.resample(signal, orig_sr=sample_rate, target_sr=ANALYSIS_RATE, res_type="soxr_hq")
    spectrum = _log_frequency_bank() @ np.abs(librosa.stft(signal, n_fft=N_FFT, hop_length=HOP))
    harmonic, _ = librosa.decompose.hpss(spectrum, kernel_size=HPSS_KERNEL)
    total = float(np.sum(np.square(spectrum)))
    ratio = float(np.sum(np.square(harmonic))) / total if total > 0 else 0.0
    return NoteActivity(activation=_unmix(harmonic), harmonic_ratio=ratio)
