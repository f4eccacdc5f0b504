"""Continuous batching at the engine's level: requests join a running batch and leave it with their audio.

`ContinuousGeneration` wraps a `slots.SlotBatch` on one engine's fast decoder: `join` admits a
`GenerationRequest` in a free slot (its prompt audio encoded alone), `step` advances every request
by one decoding step and returns the audio of those that finished, decoded alone at their own
length as `MusicGenEngine.generate` decodes them. A request gets the same tokens and audio as when
it runs alone with its seed (`tests/unit/test_continuous.py`).

Only the fast decoder batches this way: with audiocraft's decoder, or for a request past the model's
`max_duration` (`MusicGenEngine.fits_one_window`), the caller runs a static batch (`MusicGenEngine.generate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .engine import GenerationRequest, MusicGenEngine
from .sampling import SamplingParams
from .slots import Key, SlotBatch


@dataclass(frozen=True)
class _Joined:
    prompt_frames: int
    frames: int


class ContinuousGeneration:
    """Up to `slots` requests sharing `params`, decoded together, each joining and leaving between steps.

    Not thread-safe, like the engine. Steps run under `torch.no_grad()` and the model's autocast.
    """

    def __init__(self, engine: MusicGenEngine, params: SamplingParams, slots: int) -> None:
        if engine.fast is None:
            raise ValueError("continuous batching needs the fast decoder")
        self.engine = engine
        self.params = params
        # The cache grows to the longest request admitted (not the longest the model allows: 4.7 GB
        # for musicgen-small's 30 s at 16 slots in float16).
        self._batch = SlotBatch(engine.fast, slots, params)
        self._joined: dict[Key, _Joined] = {}

    @property
    def free(self) -> int:
        """Slots free for `join`."""
        return self._batch.free

    @property
    def admitted(self) -> list[Key]:
        """The requests decoding now."""
        return self._batch.admitted

    def __len__(self) -> int:
        return len(self._batch)

    def fits(self, request: GenerationRequest) -> bool:
        """Whether `request` can join: within the model's `max_duration`, its prompt counted at the
        most frames its audio can encode to."""
        engine = self.engine
        prompt = 0 if request.prompt_audio is None else request.prompt_audio.shape[-1]
        prompt_frames = math.ceil(prompt * engine.frame_rate / engine.sample_rate)
        return engine.fits_one_window(engine.frames_to_run(prompt_frames, engine.frames(request)))

    def join(self, key: Key, request: GenerationRequest) -> None:
        """Admit `request` under `key` in a free slot; it takes its first step with the next `step`."""
        engine = self.engine
        prompt = None if request.prompt_audio is None else torch.from_numpy(request.prompt_audio[None]).float()
        with torch.no_grad(), engine.model.autocast:
            attributes, prompt_tokens = engine.model._prepare_tokens_and_attributes([request.description], prompt)
            assert engine.fast is not None
            conditions = engine.fast.conditions(attributes)
            prompt_frames = 0 if prompt_tokens is None else prompt_tokens.shape[-1]
            frames = engine.frames(request)
            if not engine.fits_one_window(engine.frames_to_run(prompt_frames, frames)):
                raise ValueError(f"{request.duration:g} s is past the model's {engine.max_duration:g} s: "
                                 "a static batch (audiocraft's windows) makes it")
            generator = torch.Generator(device=engine.model.device).manual_seed(request.seed)
            self._batch.admit(key, conditions, None if prompt_tokens is None else prompt_tokens[0],
                              engine.frames_to_run(prompt_frames, frames), generator)
        self._joined[key] = _Joined(prompt_frames, frames)

    def step(self) -> list[tuple[Key, np.ndarray]]:
        """One decoding step for every request in; (key, audio [C, T] float32) of each one that finished."""
        with torch.no_grad(), self.engine.model.autocast:
            finished = self._batch.step()
        done = []
        for row in finished:
            joined = self._joined.pop(row.key)
            done.append((row.key, self.engine.decode_row(row.codes, joined.prompt_frames, joined.frames)))
        return done

    def progress(self, key: Key) -> float:
        """A request's progress in percent, as `MusicGenEngine.generate` reports a batch's: kept frames made."""
        done, _ = self._batch.progress(key)
        return min(99.0, 100.0 * done / self._joined[key].frames)

    def leave(self, key: Key) -> None:
        """Drop a request (cancelled): its slot is free for the next `join`."""
        self._batch.remove(key)
        del self._joined[key]
