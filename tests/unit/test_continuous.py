"""Continuous batching: a request that joins a running batch gets what it gets alone (float32, CPU).

Requests join a `ContinuousGeneration` at different steps, in different slots, with different
lengths, a continuation among them, more requests than slots (a slot is reused after its request
left), and one cancelled midway; each must come out with the audio it has when generated alone
with its seed. At the decoder's level, text conditionings of different token lengths (as T5 gives)
must not change each other's tokens either.
"""

from __future__ import annotations

import typing as tp

import numpy as np
import pytest
import torch

from generation.continuous import ContinuousGeneration
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.slots import SlotBatch

PARAMS = SamplingParams(top_k=50)


def run(batch: ContinuousGeneration, arrivals: dict[int, list[tuple[str, GenerationRequest]]],
        cancelled: str | None = None) -> dict[str, np.ndarray]:
    """Step `batch` until every request of `arrivals` (step -> (key, request), joining at that step
    or as soon as a slot is free after it) is done; their audio by key. `cancelled` leaves after
    five steps in the batch."""
    waiting: list[tuple[str, GenerationRequest]] = []
    done: dict[str, np.ndarray] = {}
    step, joined = 0, {}
    while step <= max(arrivals) or waiting or len(batch):
        waiting += arrivals.get(step, [])
        while waiting and batch.free:
            key, request = waiting.pop(0)
            batch.join(key, request)
            joined[key] = step
        if cancelled in joined and step == joined[cancelled] + 5:
            batch.leave(cancelled)
        done.update(batch.step())
        step += 1
    return done


def test_a_request_that_joins_a_running_batch_gets_its_audio_alone(tiny_engine: MusicGenEngine) -> None:
    prompt = np.random.default_rng(0).standard_normal((1, tiny_engine.sample_rate // 4)).astype(np.float32) * 0.1
    requests = {
        "first": GenerationRequest("dusty boom bap drums", 0.6, seed=1),
        "joins": GenerationRequest("a jazz trio", 0.3, seed=2),
        "continues": GenerationRequest("an ambient pad", 0.4, seed=3, prompt_audio=prompt),
        "waits": GenerationRequest("dusty boom bap drums", 0.2, seed=4),
        "cancelled": GenerationRequest("a brass section", 0.6, seed=5),
    }
    batch = ContinuousGeneration(tiny_engine, PARAMS, slots=2)
    arrivals = {0: [("first", requests["first"])], 3: [("joins", requests["joins"])],
                5: [("continues", requests["continues"]), ("waits", requests["waits"]), ("cancelled", requests["cancelled"])]}

    done = run(batch, arrivals, cancelled="cancelled")

    assert sorted(done) == ["continues", "first", "joins", "waits"]
    for key, audio in done.items():
        alone = tiny_engine.generate([requests[key]], PARAMS)[0]
        assert audio.shape == alone.shape
        assert np.array_equal(audio, alone), key
    assert batch.free == 2


def test_progress_counts_each_requests_own_frames(tiny_engine: MusicGenEngine) -> None:
    batch = ContinuousGeneration(tiny_engine, PARAMS, slots=2)
    batch.join("long", GenerationRequest("drums", 0.8, seed=1))
    for _ in range(10):
        batch.step()
    batch.join("short", GenerationRequest("drums", 0.2, seed=2))
    batch.step()

    assert batch.progress("long") == pytest.approx(100 * 11 / 40)  # 0.8 s at 50 frames/s
    assert batch.progress("short") == pytest.approx(100 * 1 / 10)


def text_conditions(dim: int, tokens: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A request's conditioning of `tokens` text tokens (as T5 gives), then its null twin's (zeros, masked out)."""
    embedding = torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed))
    return {"description": (torch.cat([embedding, torch.zeros_like(embedding)]),
                            torch.tensor([[1] * tokens, [0] * tokens], dtype=torch.int))}


def test_text_of_other_lengths_in_the_batch_does_not_change_a_requests_tokens(tiny_engine: MusicGenEngine) -> None:
    decoder = tiny_engine.fast
    assert decoder is not None
    requests = [("three", 3, 20, 0), ("nine", 9, 14, 2), ("five", 5, 24, 4)]  # key, text tokens, frames, joins at

    def slot_batch(slots: int, admitted: tp.Sequence[tuple[str, int, int, int]]) -> dict[str, torch.Tensor]:
        batch, done, step = SlotBatch(decoder, slots, PARAMS), {}, 0
        with torch.no_grad():
            while step == 0 or len(batch):
                for key, tokens, frames, at in admitted:
                    if at == step:
                        conditions = text_conditions(decoder.lm.dim, tokens, seed=tokens)
                        batch.admit(key, conditions, None, frames, torch.Generator().manual_seed(tokens))
                done.update((row.key, row.codes) for row in batch.step())
                step += 1
        return done

    together = slot_batch(3, requests)
    for key, tokens, frames, _ in requests:
        alone = slot_batch(1, [(key, tokens, frames, 0)])[key]
        assert together[key].shape == alone.shape == (decoder.lm.num_codebooks, frames)
        assert torch.equal(together[key], alone), key


def test_a_request_past_the_models_window_is_refused(tiny_engine: MusicGenEngine) -> None:
    batch = ContinuousGeneration(tiny_engine, PARAMS, slots=1)
    with pytest.raises(ValueError, match="past the model's 30 s"):
        batch.join("long", GenerationRequest("drums", tiny_engine.max_duration, seed=1))  # + n_q frames past it
    assert batch.free == 1
