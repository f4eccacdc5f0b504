"""Continuous batching on CUDA graphs, checked on CPU with a stand-in capture (float32).

A `SlotBatch` whose decoder is a `GraphedDecoder` steps its slots in graphs captured over its own
cache. `EagerReplay` stands in for the CUDA capture: a replay runs the step again on the graph's
static tensors, so a graph reading a cache that was since reallocated, a static input not copied
in, or a dummy row leaking into a real one changes the tokens. Requests joining and leaving must
get their tokens (and audio) alone, graphs must be reused across steps and captured again once
the cache grows, and a failed capture must turn graphs off with one log line.
"""

from __future__ import annotations

import logging
import typing as tp

import numpy as np
import pytest
import torch
from audiocraft.modules.conditioners import ConditioningAttributes
from eager_replay import CAPTURE_FAILURES, EagerReplay

from generation.continuous import ContinuousGeneration
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.fast_decode import ConditionTensors, FastDecoder
from generation.graphs import GraphedDecoder
from generation.model import load_musicgen
from generation.slots import SlotBatch

PARAMS = SamplingParams(top_k=50)


class Request(tp.NamedTuple):
    description: str
    frames: int
    joins_at: int
    text_tokens: int = 1
    """Its conditioning's tokens: the tiny model's text is one token, repeated to make it longer."""


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir) -> tp.Any:
    return load_musicgen(str(tiny_model_dir), "cpu").lm


def conditioning(decoder: FastDecoder, request: Request) -> ConditionTensors:
    """The request's conditioning then its null twin's, its text repeated to `text_tokens` tokens."""
    conditions = decoder.conditions([ConditioningAttributes(text={"description": request.description})])
    return {name: (embedding.repeat(1, request.text_tokens, 1), mask.repeat(1, request.text_tokens))
            for name, (embedding, mask) in conditions.items()}


def decoded(decoder: FastDecoder, slots: int, requests: dict[str, Request]) -> dict[str, torch.Tensor]:
    """Each request's tokens [K, frames] from a `SlotBatch` of `slots` slots that each joins at its
    step (or once a slot is free), seeded by its frames."""
    batch = SlotBatch(decoder, slots, PARAMS)
    waiting, done, step = sorted(requests, key=lambda key: requests[key].joins_at), {}, 0
    with torch.no_grad():
        while waiting or len(batch):
            while waiting and batch.free and requests[waiting[0]].joins_at <= step:
                key = waiting.pop(0)
                request = requests[key]
                batch.admit(key, conditioning(decoder, request), None, request.frames,
                            torch.Generator().manual_seed(request.frames))
            done.update((row.key, row.codes) for row in batch.step())
            step += 1
    return done


def assert_tokens_alone(lm: tp.Any, together: dict[str, torch.Tensor], requests: dict[str, Request]) -> None:
    assert sorted(together) == sorted(requests)
    for key, request in requests.items():
        alone = decoded(FastDecoder(lm), 1, {key: request._replace(joins_at=0)})[key]
        assert together[key].shape == alone.shape == (lm.num_codebooks, request.frames)
        assert torch.equal(together[key], alone), key


def test_requests_joining_and_leaving_graphed_steps_get_their_tokens_alone(tiny_lm: tp.Any) -> None:
    capture = EagerReplay()
    requests = {
        "first": Request("dusty boom bap drums", 30, joins_at=0),  # 1 slot stepped: a graph
        "second": Request("a jazz trio", 20, joins_at=2),  # 2 slots: a graph
        "third": Request("an ambient pad", 14, joins_at=4),  # 3 slots: 4's graph, the free one a dummy
        # After "third" and "second" leave, 2 and then 1 slot are stepped again: their graphs reused.
        # 263 pattern steps grow the cache past 256: its graphs are dropped, 2 slots captured again.
        "long": Request("a brass section", 260, joins_at=26),
        # 40 text tokens grow the text cache past 32 tokens: dropped again, 2 slots captured again.
        "wordy": Request("a string quartet", 10, joins_at=40, text_tokens=40),
    }

    together = decoded(GraphedDecoder(tiny_lm, capture), 4, requests)

    assert_tokens_alone(tiny_lm, together, requests)
    assert capture.captures == 5


def test_a_request_that_joins_graphed_steps_gets_its_audio_alone(
    tiny_model_dir, tiny_engine: MusicGenEngine
) -> None:
    engine = MusicGenEngine(load_musicgen(str(tiny_model_dir), "cpu"), "graphed", "fast")
    capture = EagerReplay()
    engine.fast = GraphedDecoder(engine.model.lm, capture)  # as on CUDA, with the stand-in capture
    prompt = np.random.default_rng(0).standard_normal((1, engine.sample_rate // 4)).astype(np.float32) * 0.1
    requests = {
        "first": GenerationRequest("dusty boom bap drums", 0.5, seed=1),
        "continues": GenerationRequest("an ambient pad", 0.4, seed=3, prompt_audio=prompt),
        "cancelled": GenerationRequest("a brass section", 0.6, seed=5),
    }
    batch = ContinuousGeneration(engine, PARAMS, slots=3)
    batch.join("first", requests["first"])
    done: dict[str, np.ndarray] = {}
    for step in range(60):
        if step == 3:
            batch.join("continues", requests["continues"])
            batch.join("cancelled", requests["cancelled"])
        if step == 8:
            batch.leave("cancelled")
        done.update(batch.step())

    assert sorted(done) == ["continues", "first"] and batch.free == 3
    assert capture.captures == 3  # 1 slot stepped, then all 3 (bucket 4 capped at the slot count), then 2
    for key, audio in done.items():
        assert np.array_equal(audio, tiny_engine.generate([requests[key]], PARAMS)[0]), key


@CAPTURE_FAILURES
def test_a_failed_capture_in_a_slot_batch_turns_graphs_off_with_one_log_line(
    tiny_lm: tp.Any, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    capture = EagerReplay(failure)
    decoder = GraphedDecoder(tiny_lm, capture)
    requests = {"first": Request("dusty boom bap drums", 20, joins_at=0), "joins": Request("a jazz trio", 12, joins_at=3)}
    with caplog.at_level(logging.INFO, logger="generation.graphs"):
        together = decoded(decoder, 2, requests)

    assert [r.getMessage() for r in caplog.records] == [capture.log_line]
    assert capture.captures == 1 and decoder.failure is not None
    assert_tokens_alone(tiny_lm, together, requests)
