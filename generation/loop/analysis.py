"""Features the loop engine reads: onset strength, low-band onsets and level, chroma and log-mel, per frame.

Everything is computed once from one STFT of the mono mix. Frames are `hop` samples apart
(about 5 ms, so beat times are precise to a few ms); frame f is centred on sample f * hop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import librosa
import numpy as np
import scipy.fft
import scipy.signal
from numpy.lib.stride_tricks import sliding_window_view

FRAME_RATE_HZ = 200.0  # analysis frames per second (5 ms)
LONG_INPUT_S = 60.0  # beyond this the hop grows so memory stays bounded on minutes-long files
N_FFT = 2048
N_MELS = 64
LOW_BAND_HZ = 200.0  # kick and bass live below this
SILENCE_DBFS = -60.0
FRAMES_PER_FFT = 256  # frames transformed at a time: bounds the memory on long sources


@dataclass(frozen=True)
class Analysis:
    """Frame-wise features of a mono signal. Arrays are [F] or [bins, F]."""

    sample_rate: int
    hop: int
    onset: np.ndarray  # [F] spectral flux of log-mel (all bands)
    low_onset: np.ndarray  # [F] spectral flux below LOW_BAND_HZ
    low_level: np.ndarray  # [F] power below LOW_BAND_HZ in dB
    chroma: np.ndarray  # [12, F], each frame max-normalised
    log_mel: np.ndarray  # [N_MELS, F] in dB
    duration: float  # seconds of the analysed signal

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def frame(self, seconds: float | np.ndarray) -> np.ndarray:
        """Nearest frame index (clipped to the signal) for a time or array of times."""
        index = np.rint(np.asarray(seconds) * self.frame_rate).astype(int)
        return np.clip(index, 0, len(self.onset) - 1)

    @property
    def blind_seconds(self) -> float:
        """How long the onset envelopes read zero at the start: librosa pads them by the flux's lag
        and half an FFT (they are centred on the frames), so an attack in this span is not seen."""
        return (1 + N_FFT // (2 * self.hop)) / self.frame_rate

    def span(self, start: float, seconds: float) -> slice:
        """Frames of [start, start + seconds), clipped to the signal."""
        first, last = self.frame(start), self.frame(start + seconds)
        return slice(int(first), int(max(last, first + 1)))


def mono(audio: np.ndarray) -> np.ndarray:
    """[C, T] -> [T], the channel mean."""
    return audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]


def level_dbfs(signal: np.ndarray) -> float:
    """RMS level of [..., T] in dBFS (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def is_silent(audio: np.ndarray) -> bool:
    """True when [C, T] audio has no content above the silence floor."""
    return level_dbfs(audio) < SILENCE_DBFS


def _power_spectrogram(signal: np.ndarray, hop: int) -> np.ndarray:
    """[1 + N_FFT // 2, F] |STFT|^2 of [T]: librosa.stft's Hann frames, frame f centred on sample f * hop.

    librosa transforms in float64 along a strided axis, a few frames at a time; float32 FFTs over
    contiguous frames give the same power to a few parts in 10^7 in half the time.
    """
    frames = sliding_window_view(np.pad(signal, N_FFT // 2), N_FFT)[::hop]  # [F, N_FFT], a view
    window = scipy.signal.get_window("hann", N_FFT).astype(np.float32)
    power = np.empty((len(frames), N_FFT // 2 + 1), dtype=np.float32)
    for first in range(0, len(frames), FRAMES_PER_FFT):
        spectrum = scipy.fft.rfft(frames[first : first + FRAMES_PER_FFT] * window, axis=1)
        power[first : first + len(spectrum)] = np.abs(spectrum) ** 2
    return power.T


def analyse(signal: np.ndarray, sample_rate: int) -> Analysis:
    """Features of a mono [T] signal."""
    duration = len(signal) / sample_rate
    hop = max(1, round(sample_rate / FRAME_RATE_HZ)) * max(1, math.ceil(duration / LONG_INPUT_S))
    power = _power_spectrogram(signal, hop)
    fmax = min(16000.0, sample_rate / 2)
    mel = librosa.feature.melspectrogram(S=power, sr=sample_rate, n_mels=N_MELS, fmax=fmax)
    log_mel = librosa.power_to_db(mel, ref=1.0, top_db=None)
    low_bands = max(2, int(np.searchsorted(librosa.mel_frequencies(N_MELS + 2, fmax=fmax), LOW_BAND_HZ)))
    flux = librosa.onset.onset_strength_multi(S=log_mel, sr=sample_rate, hop_length=hop, channels=[0, low_bands, N_MELS])
    # tuning=0: chroma only compares the clip with itself, so estimating its tuning (half the
    # analysis time, and warnings on noise) buys nothing.
    chroma = librosa.feature.chroma_stft(S=power, sr=sample_rate, hop_length=hop, n_fft=N_FFT, tuning=0.0)
    return Analysis(
        sample_rate=sample_rate,
        hop=hop,
        onset=(flux[0] * low_bands + flux[1] * (N_MELS - low_bands)) / N_MELS,  # mean over all bands
        low_onset=flux[0],
        low_level=librosa.power_to_db(mel[:low_bands].sum(axis=0), ref=1.0, top_db=None),
        chroma=chroma,
        log_mel=log_mel,
        duration=duration,
    )
