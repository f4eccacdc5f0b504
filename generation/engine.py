"""The MusicGen engine: one loaded model, batched generation with a seed per request.

One `MusicGenEngine` owns one audiocraft model. audiocraft keeps generation parameters on the
model object, so an engine must only be used from one thread at a time (the worker has one).
"""

from __future__ import annotations

import logging
import math
import os
import time
import typing as tp
from dataclasses import dataclass

import numpy as np
import torch

from .config import Decoder
from .fast_decode import FastDecoder, unsupported_reason
from .graphs import GraphedDecoder
from .model import load_musicgen
from .sampling import SamplingParams

log = logging.getLogger(__name__)

ProgressCallback = tp.Callable[[float], None]
"""Called with the batch's progress in percent, 0 to 100."""


class GenerationCancelled(Exception):
    """The caller asked to stop; raised between two decoding steps."""


@dataclass(frozen=True)
class GenerationRequest:
    """One piece of audio to generate.

    `prompt_audio`, for continuations, is [C, T] float32 at the model's sample rate; it must have
    the same length for every request of a batch.
    """

    description: str
    duration: float
    seed: int
    prompt_audio: np.ndarray | None = None


@dataclass(frozen=True)
class GeneratedTokens:
    """A batch's tokens: [B, K, T] codes, the first `prompt_frames` of each row its prompt's."""

    codes: torch.Tensor
    prompt_frames: int
    frames: list[int]
    """Each request's own length in frames, after the prompt."""


class MusicGenEngine:
    def __init__(self, model: tp.Any, name: str, decoder: Decoder = "fast") -> None:
        """`decoder`: "fast" (`generation.fast_decode`; its steps replayed as CUDA graphs on a GPU,
        `generation.graphs`) unless the model needs audiocraft's own loop."""
        self.model = model
        self.name = name
        self.fast: FastDecoder | None = None
        if decoder == "fast":
            reason = unsupported_reason(model.lm)
            if reason is None:
                on_cuda = next(model.lm.parameters()).device.type == "cuda"
                self.fast = GraphedDecoder(model.lm) if on_cuda else FastDecoder(model.lm)
            else:
                log.warning("%s: audiocraft's decoder instead of the fast one: %s", name, reason)

    @classmethod
    def load(cls, name: str, device: str = "auto", decoder: Decoder = "fast") -> MusicGenEngine:
        """Load the model once per process; on CPU, leave one core to the rest of the process."""
        model = load_musicgen(name, device)
        if model.device.type == "cpu":
            # With every core in torch's thread pool, any other busy process (the bot's event loop,
            # the loop engine, a second worker) makes its threads wait on each other: one second of
            # audio then took up to 30 s here, against 0.05 s with a core left free
            # (`bench/cpu_threads.py`). oneDNN off is a little faster still on these small shapes.
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
            torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a settable flag; torch types it as a descriptor
        return cls(model, name, decoder)

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def channels(self) -> int:
        return int(self.model.audio_channels)

    @property
    def frame_rate(self) -> float:
        return float(self.model.frame_rate)

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def max_duration(self) -> float:
        return float(self.model.max_duration)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.lm.parameters()) + sum(
            p.numel() for p in self.model.compression_model.parameters()
        )

    def warm_up(self) -> float:
        """Run one short generation so the first user request pays no start-up cost; returns seconds."""
        started = time.perf_counter()
        self.generate([GenerationRequest("warm up", 1.0, 0)], SamplingParams())
        return time.perf_counter() - started

    def generate(
        self,
        requests: tp.Sequence[GenerationRequest],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        should_cancel: tp.Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        """Generate every request in one batch; returns one [C, T] float32 array per request.

        The batch runs for the longest duration; each result is decoded from its own tokens cut
        to its own duration, so it is exactly what the request would give alone with its seed.
        Raises `GenerationCancelled` when `should_cancel()` turns true between two steps.
        With prompts (continuation), each result is the new audio after its prompt.
        """
        return list(self.generate_each(requests, params, progress, should_cancel))

    def generate_each(
        self,
        requests: tp.Sequence[GenerationRequest],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        should_cancel: tp.Callable[[], bool] | None = None,
    ) -> tp.Iterator[np.ndarray]:
        """`generate`, yielding each request's audio as soon as it is decoded.

        The first `next` generates the whole batch's tokens; each later one decodes one more
        request, so the caller can work on a result while the next is being decoded.
        """
        if not requests:
            return
        tokens = self.generate_tokens(requests, params, progress, should_cancel)
        for i, frames in enumerate(tokens.frames):
            yield self.decode_row(tokens.codes[i], tokens.prompt_frames, frames)
        if progress is not None:
            progress(100.0)

    def generate_tokens(
        self,
        requests: tp.Sequence[GenerationRequest],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        should_cancel: tp.Callable[[], bool] | None = None,
    ) -> GeneratedTokens:
        """The batch's tokens, before the codec decodes them; see `generate`. `requests` must not be empty."""
        frames = [self.frames(r) for r in requests]
        prompts = [r.prompt_audio for r in requests]
        if any(p is not None for p in prompts) and len({None if p is None else p.shape[-1] for p in prompts}) != 1:
            raise ValueError("every request of a continuation batch needs a prompt of the same length")

        descriptions = [r.description for r in requests]
        prompt = None if prompts[0] is None else torch.from_numpy(np.stack([p for p in prompts if p is not None])).float()
        attributes, prompt_tokens = self.model._prepare_tokens_and_attributes(descriptions, prompt)
        prompt_frames = 0 if prompt_tokens is None else prompt_tokens.shape[-1]
        total_frames = self.frames_to_run(prompt_frames, max(frames))

        def on_step(generated: int, _chunk_total: int) -> None:
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled()
            if progress is not None:
                progress(min(99.0, 100.0 * generated / max(frames)))

        generators = [torch.Generator(device=self.model.device).manual_seed(r.seed) for r in requests]
        if progress is not None:
            progress(0.0)
        if self.fast is not None and self.fits_one_window(total_frames):
            with torch.no_grad(), self.model.autocast:
                codes = self.fast.generate(attributes, prompt_tokens, total_frames, params, generators, on_step)
        else:
            codes = self._audiocraft_tokens(attributes, prompt_tokens, total_frames, params, generators, on_step)
        return GeneratedTokens(codes, prompt_frames, frames)

    def frames(self, request: GenerationRequest) -> int:
        """The frames a request keeps, after its prompt."""
        return max(1, math.ceil(request.duration * self.frame_rate))

    def frames_to_run(self, prompt_frames: int, frames: int) -> int:
        """The frames to generate for `frames` kept after a prompt of `prompt_frames`.

        With the delay pattern, the last frames of a run see the end-of-sequence padding of the
        later codebooks; generating n_q frames past the longest request keeps every kept frame
        independent of where the run stops.
        """
        return prompt_frames + frames + self.model.lm.num_codebooks

    def fits_one_window(self, total_frames: int) -> bool:
        """Whether a generation of `total_frames` fits the model's `max_duration`, as the fast decoder needs.

        Past it audiocraft generates in overlapping windows, which only its loop does.
        """
        return total_frames <= self.max_duration * self.frame_rate

    def _audiocraft_tokens(
        self, attributes: list[tp.Any], prompt_tokens: torch.Tensor | None, total_frames: int,
        params: SamplingParams, generators: list[torch.Generator], on_step: tp.Callable[[int, int], None],
    ) -> torch.Tensor:
        """Tokens [B, K, T] from audiocraft's own decoding loop, sampled with LoopJam's row generators."""
        self.model.set_generation_params(
            use_sampling=True, top_k=params.top_k, top_p=params.top_p, temperature=params.temperature,
            duration=self._audiocraft_duration(total_frames), cfg_coef=params.cfg_coef,
        )
        self.model.set_custom_progress_callback(on_step)
        lm = self.model.lm
        lm.row_generators = generators
        try:
            with torch.no_grad():
                return self.model._generate_tokens(attributes, prompt_tokens, progress=True)
        finally:
            lm.row_generators = None
            self.model.set_custom_progress_callback(None)

    def _audiocraft_duration(self, frames: int) -> float:
        """The duration audiocraft turns back into exactly `frames` frames: it truncates
        `duration * frame_rate`, and 29 / 50 * 50 is 28.999... (73 frame counts up to 30 s)."""
        duration = frames / self.frame_rate
        while int(duration * self.frame_rate) < frames:
            duration = math.nextafter(duration, math.inf)
        return duration

    def decode_row(self, codes: torch.Tensor, prompt_frames: int, frames: int) -> np.ndarray:
        """One request's tokens [K, T] -> its new audio [C, frames * hop] float32, after its prompt.

        Each row is decoded alone at its own length, so it does not depend on its batch-mates
        (decoded together, rows differ from their solo decoding in the last bits).
        """
        hop = round(self.sample_rate / self.frame_rate)
        with torch.no_grad():
            audio = self.model.compression_model.decode(codes[None, :, : prompt_frames + frames], None)
        return audio[0, :, prompt_frames * hop :].float().cpu().numpy()
