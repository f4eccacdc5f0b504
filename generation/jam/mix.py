"""Layering loops into one: conformed to one shape, one rate, stereo, level-matched, summed, normalised.

    result = mix_layers([Layer(drums, 32000, LayerOrigin(file="drums.wav")), ...], LoopShape(92, 4))
    result.audio     # [2, N] float32, N = shape.samples(result.sample_rate), exactly

A layer that is already an exact loop of the shape (as many samples as the shape at its own rate)
is used as it is: its first sample is its downbeat, so it is never re-cut or moved. Any other
layer is cut by the loop engine first. The mix runs at the highest of the layers' rates: no layer
loses bandwidth; lower-rate loops are resampled in the frequency domain, which treats them as
periodic, so their wrap stays seamless and their length exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample

from ..audio_io import stereo_fold
from ..config import LoopSettings
from ..loop import LoopReport, make_loop
from ..loop.loudness import integrated_lufs, normalise
from ..loop.source import read_checked
from ..music import Key
from ..music.detect import detect_key
from ..music.shift import match_key
from ..shape import LoopShape
from .duck import duck_gain, find_kicks, pick_drum_layer


@dataclass(frozen=True)
class LayerOrigin:
    """Where a layer came from: what jam.json keeps so the jam can be found again or remade."""

    file: str | None = None
    prompt: str | None = None
    seed: int | None = None
    model: str | None = None
    loop_id: str | None = None
    """The loop's short id in the history, for a layer of a jam made in Discord."""

    @property
    def name(self) -> str:
        """What the layer is called: its prompt, else its file's stem."""
        return self.prompt or (Path(self.file).stem if self.file else "layer")


@dataclass(frozen=True)
class Layer:
    """One loop to layer."""

    audio: np.ndarray
    """[C, T] (or [T]) float32 at `sample_rate`, any channel count."""
    sample_rate: int
    origin: LayerOrigin = LayerOrigin()
    gain_db: float = 0.0
    """Level on top of the loudness matching."""


@dataclass(frozen=True)
class MixedLayer:
    """A layer as it went into the mix."""

    audio: np.ndarray
    """[2, N] float32 at the mix's rate: conformed, loudness-matched, its gain applied (not ducked)."""
    origin: LayerOrigin
    gain_db: float
    report: LoopReport | None
    """The loop engine's report when the layer had to be conformed; None when it was used as it is."""
    shift_semitones: int = 0
    drum: bool = False
    """Its kick ducked the other layers."""
    source_key: str | None = None
    """Its key before any shift ("C# minor"), when it was looked for (with --key or --duck); None also for drums."""

    @property
    def conformed(self) -> bool:
        return self.report is not None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: origin, gain, shift, whether it was conformed and the engine's verdict then."""
        return {
            "file": self.origin.file, "loop_id": self.origin.loop_id, "prompt": self.origin.prompt, "seed": self.origin.seed,
            "model": self.origin.model,
            "gain_db": self.gain_db, "shift_semitones": self.shift_semitones, "conformed": self.conformed,
            "verdict": self.report.verdict if self.report else None, "drum": self.drum, "source_key": self.source_key,
        }


@dataclass(frozen=True)
class MixResult:
    audio: np.ndarray
    """[2, N] float32, N = shape.samples(sample_rate)."""
    sample_rate: int
    shape: LoopShape
    layers: tuple[MixedLayer, ...]
    loudness_lufs: float | None
    """Integrated loudness of the mix; None when it is silent."""
    key: Key | None = None
    """The key the layers were moved into, when one was asked for."""

    def report(self) -> dict[str, Any]:
        """The mix as a loop report (`LoopReport.as_dict`'s field names, JSON scalars only), for the history.

        Its verdict and reason are those of the worst layer the loop engine had to cut ("good" when
        every layer was an exact loop); its key is the one found in the mix; `key_shift_semitones` is
        0: the mix itself is not moved (its layers' shifts are in jam.json).
        """
        cut = [(number, layer.report) for number, layer in enumerate(self.layers, start=1) if layer.report is not None]
        worst = min(cut, key=lambda each: each[1].quality, default=None)
        estimate = detect_key(self.audio, self.sample_rate)
        return {
            "source_bpm": self.shape.bpm, "stretch_ratio": 1.0, "source_start_seconds": 0.0,
            "loudness_lufs": None if self.loudness_lufs is None else round(self.loudness_lufs, 4),
            "verdict": worst[1].verdict if worst is not None else "good",
            "reason": f"layer {worst[0]}: {worst[1].reason}" if worst is not None and worst[1].reason else None,
            "source_key": estimate.key.name if estimate.key is not None else None,
            "key_confidence": round(estimate.confidence, 3),
            "target_key": self.key.name if self.key is not None else None,
            "key_shift_semitones": 0 if self.key is not None else None,
            "layers": len(self.layers), "conformed_layers": len(cut),
        }


def read_layer(path: Path, gain_db: float = 0.0) -> Layer:
    """A layer from a file (decoded as the loop engine reads sources: stereo, 48 kHz at most).

    Raises `prompts.UnreadableSource` or `prompts.InvalidRequest` like `loop.source.read_checked`.
    """
    audio, rate = read_checked(path, str(path))
    return Layer(audio, rate, LayerOrigin(file=str(path)), gain_db)


def is_exact(layer: Layer, shape: LoopShape) -> bool:
    """Whether the layer is already a loop of `shape`: exactly its samples at the layer's own rate."""
    return np.shape(layer.audio)[-1] == shape.samples(layer.sample_rate)


def to_stereo(audio: np.ndarray) -> np.ndarray:
    """[T] or [C, T] -> [2, T] float32: mono doubled, more than 2 channels folded (`audio_io.stereo_fold`)."""
    array = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    if array.shape[0] == 1:
        return np.repeat(array, 2, axis=0)
    if array.shape[0] > 2:
        return (stereo_fold(array.shape[0]).T @ array).astype(np.float32)
    return array


def resample_loop(audio: np.ndarray, samples: int) -> np.ndarray:
    """[C, N] -> [C, samples] in the frequency domain, read as one period: the wrap stays seamless."""
    if audio.shape[1] == samples:
        return audio
    return resample(audio, samples, axis=1).astype(np.float32)


def _conformed(layer: Layer, shape: LoopShape, settings: LoopSettings) -> tuple[np.ndarray, LoopReport | None]:
    """The layer as an exact loop at its own rate [C, N], and the engine's report when it had to cut it."""
    if is_exact(layer, shape):
        return np.atleast_2d(np.asarray(layer.audio, dtype=np.float32)), None
    loop = make_loop(layer.audio, layer.sample_rate, shape, settings=settings)
    return loop.audio, loop.report


def _matched(audio: np.ndarray, sample_rate: int, target_lufs: float, gain_db: float) -> np.ndarray:
    """[2, N] brought to `target_lufs` (a plain gain: the mix is limited once, at the end), then `gain_db`."""
    loudness = integrated_lufs(audio, sample_rate)  # -inf for silence: left as it is
    match_db = target_lufs - loudness if math.isfinite(loudness) else 0.0
    return audio * np.float32(10 ** ((match_db + gain_db) / 20))


def mix_layers(
    layers: list[Layer], shape: LoopShape, settings: LoopSettings | None = None, duck: bool = False, key: Key | None = None,
) -> MixResult:
    """Layer loops into one loop of `shape` at the highest of their rates; see the module's docstring.

    Each layer is moved into `key` when given (layers with no key, drums, never are), then
    loudness-matched to the target, its `gain_db` on top; the sum gets the loop engine's
    treatment (target LUFS under the true-peak ceiling, limited across the wrap).
    `duck`: the kick of the layer with the strongest low-band onsets, among those with no key, ducks the others.
    Raises ValueError when `layers` is empty.
    """
    if not layers:
        raise ValueError("nothing to mix: no layers")
    settings = settings or LoopSettings()
    rate = max(layer.sample_rate for layer in layers)
    samples = shape.samples(rate)
    mixed = []
    for layer in layers:
        audio, report = _conformed(layer, shape, settings)
        audio, shift = resample_loop(to_stereo(audio), samples), 0
        estimate = detect_key(audio, rate) if key is not None or duck else None
        if key is not None and estimate is not None:
            match = match_key(audio, rate, key, estimate)
            audio, shift = match.audio, match.shift_semitones
        matched = _matched(audio, rate, settings.target_lufs, layer.gain_db)
        mixed.append(MixedLayer(matched, layer.origin, layer.gain_db, report, shift_semitones=shift,
                                source_key=estimate.key.name if estimate is not None and estimate.key is not None else None))
    ducked: np.ndarray | None = None  # [N] the gain of every layer but the drums
    if duck:  # every layer's key was looked for: one in a key is no drum layer, however strong its low end
        kicks = [find_kicks(each.audio, rate) if each.source_key is None else None for each in mixed]
        drum = pick_drum_layer(kicks)
        if drum is not None and (drum_kicks := kicks[drum]) is not None:
            ducked = duck_gain(drum_kicks, samples, rate)
            mixed[drum] = replace(mixed[drum], drum=True)
    total = np.zeros((2, samples), np.float32)
    for each in mixed:
        total += each.audio if ducked is None or each.drum else each.audio * ducked
    audio, lufs = normalise(total, rate, settings.target_lufs, settings.true_peak_dbtp)
    return MixResult(audio, rate, shape, tuple(mixed), lufs if math.isfinite(lufs) else None, key)
