"""The fast decoder against audiocraft's own decoding, on CPU in float32.

Teacher forcing: the same pattern sequence goes step by step through audiocraft's streaming LM
and through `FastDecoder`, and the logits of every step must agree within 1e-4. Then whole
generations: greedy and seeded sampling must give the same tokens on both paths. The fixed-shape
step that CUDA graphs capture (`generation.graphs`) must agree with the CPU's step the same way,
and the graphs' bookkeeping (buckets, static buffers shared and reused across batches, the
fallback when a capture fails) is checked here with a stand-in that replays a step eagerly.
"""

from __future__ import annotations

import logging
import typing as tp
from collections.abc import Iterator

import pytest
import torch
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes
from eager_replay import CAPTURE_FAILURES, EagerReplay

from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.fast_decode import ConditionTensors, FastDecoder
from generation.graphs import GraphedDecoder
from generation.model import SMALL, build_random_lm, load_musicgen

TOLERANCE = 1e-4
CFG_COEF = 3.0
DESCRIPTIONS = ["dusty boom bap drums", "a jazz trio"]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir) -> tp.Any:
    return load_musicgen(str(tiny_model_dir), "cpu").lm


@pytest.fixture(scope="module")
def small_lm() -> tp.Any:
    """musicgen-small's shape (24 layers, dim 1024) with random weights."""
    return build_random_lm(SMALL, seed=1)


def attributes(descriptions: tp.Sequence[str]) -> list[ConditioningAttributes]:
    return [ConditioningAttributes(text={"description": d}) for d in descriptions]


def pattern_feeds(lm: tp.Any, batch: int, frames: int, prompt_frames: int, seed: int) -> Iterator[torch.Tensor]:
    """What `LMModel.generate` feeds step by step for random codes: [B, K, T] chunks of the pattern
    sequence, the first one the whole prompt (T > 1 with a prompt)."""
    codes = torch.randint(0, lm.card, (batch, lm.num_codebooks, frames), generator=torch.Generator().manual_seed(seed))
    pattern = lm.pattern_provider.get_pattern(frames)
    sequence, _, _ = pattern.build_pattern_sequence(codes, lm.special_token_id)
    previous = 0
    for offset in range(pattern.get_first_step_with_timesteps(prompt_frames), sequence.shape[-1]):
        yield sequence[..., previous:offset]
        previous = offset


def eager_logits(lm: tp.Any, conditions: ConditionTensors, feeds: tp.Iterable[torch.Tensor], cfg: bool) -> list[torch.Tensor]:
    """audiocraft's streaming forward, step by step: the last position's logits, [B, K, card] per step."""
    out = []
    with torch.no_grad(), lm.streaming():
        for codes in feeds:
            if cfg:
                conditional, unconditional = lm(torch.cat([codes, codes]), [], conditions)[:, :, -1].split(codes.shape[0])
                out.append(unconditional + (conditional - unconditional) * CFG_COEF)
            else:
                out.append(lm(codes, [], conditions)[:, :, -1])
    return out


def fast_logits(lm: tp.Any, conditions: ConditionTensors, feeds: tp.Sequence[torch.Tensor], cfg: bool,
                decoder: FastDecoder | None = None) -> list[torch.Tensor]:
    """`decoder`'s logits for `feeds` (by default a `FastDecoder` with today's sliced step)."""
    decoder = decoder or FastDecoder(lm)
    rows = feeds[0].shape[0] * (2 if cfg else 1)
    with torch.no_grad():
        state = decoder.start(conditions, rows, sum(f.shape[-1] for f in feeds))
        if cfg:
            return [decoder.guided_logits(codes, state, CFG_COEF) for codes in feeds]
        return [decoder.forward(codes, state) for codes in feeds]


def max_difference(a: tp.Sequence[torch.Tensor], b: tp.Sequence[torch.Tensor]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def text_conditions(lm: tp.Any, descriptions: tp.Sequence[str], cfg: bool) -> ConditionTensors:
    attrs = attributes(descriptions)
    if cfg:
        attrs += ClassifierFreeGuidanceDropout(p=1.0)(attrs)
    with torch.no_grad():
        return lm.condition_provider(lm.condition_provider.tokenize(attrs))


@pytest.mark.parametrize(
    ("shape", "frames", "prompt_frames", "cfg"),
    [
        ("tiny", 40, 0, True),
        ("tiny", 40, 0, False),
        ("tiny", 40, 12, True),
        ("small", 6, 3, True),
        ("small", 5, 0, False),
    ],
    ids=["tiny-cfg", "tiny-no-cfg", "tiny-prompt-cfg", "small-prompt-cfg", "small-no-cfg"],
)
def test_teacher_forced_logits_match_audiocraft(request, shape: str, frames: int, prompt_frames: int, cfg: bool) -> None:
    lm = request.getfixturevalue(f"{shape}_lm")
    conditions = text_conditions(lm, DESCRIPTIONS, cfg)
    feeds = list(pattern_feeds(lm, len(DESCRIPTIONS), frames, prompt_frames, seed=frames))
    if prompt_frames:
        assert feeds[0].shape[-1] > 1  # the prompt goes in as one multi-step feed

    assert max_difference(fast_logits(lm, conditions, feeds, cfg), eager_logits(lm, conditions, feeds, cfg)) < TOLERANCE


def padded_conditions(lm: tp.Any, lengths: tp.Sequence[int], seed: int) -> list[ConditionTensors]:
    """Text-like conditioning of a few tokens per row (as T5 gives), zero-padded to the longest and
    masked as audiocraft's conditioners do: the batch's, then each row's alone unpadded."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = [torch.randn(1, n, lm.dim, generator=generator) for n in lengths]
    longest = max(lengths)
    padded = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, longest - e.shape[1])) for e in embeddings])
    mask = torch.stack([torch.arange(longest) < n for n in lengths]).int()
    alone = [{"description": (e, torch.ones(1, e.shape[1], dtype=torch.int))} for e in embeddings]
    return [{"description": (padded, mask)}, *alone]


@pytest.mark.parametrize(("shape", "frames", "lengths"), [("tiny", 30, (3, 9, 5)), ("small", 2, (3, 9))])
def test_a_row_does_not_depend_on_its_batch_mates_prompt_lengths(
    request, shape: str, frames: int, lengths: tuple[int, ...]
) -> None:
    lm = request.getfixturevalue(f"{shape}_lm")
    batch, *alone = padded_conditions(lm, lengths, seed=frames)
    feeds = list(pattern_feeds(lm, len(lengths), frames, 0, seed=frames))

    batched = fast_logits(lm, batch, feeds, cfg=False)
    for row, conditions in enumerate(alone):
        row_feeds = [f[row : row + 1] for f in feeds]
        fast_alone, eager_alone = fast_logits(lm, conditions, row_feeds, False), eager_logits(lm, conditions, row_feeds, False)
        assert max_difference(fast_alone, eager_alone) < TOLERANCE
        assert max_difference([s[row : row + 1] for s in batched], fast_alone) < TOLERANCE
    # audiocraft attends to the padding: the shorter rows change when batched with a longer one.
    eager_batched = eager_logits(lm, batch, feeds, cfg=False)
    assert max_difference([s[:1] for s in eager_batched], [s[:1] for s in batched]) > 10 * TOLERANCE


@pytest.fixture(scope="module")
def engines(tiny_model_dir) -> tuple[MusicGenEngine, MusicGenEngine]:
    """The fast and audiocraft decoders on one loaded tiny model."""
    model = load_musicgen(str(tiny_model_dir), "cpu")
    return MusicGenEngine(model, "tiny", "fast"), MusicGenEngine(model, "tiny", "audiocraft")


@pytest.mark.parametrize(
    "params",
    [SamplingParams(top_k=1), SamplingParams(top_k=50), SamplingParams(top_k=0, top_p=0.9, temperature=0.8)],
    ids=["greedy", "top-k", "top-p"],
)
def test_both_decoders_give_the_same_tokens(engines: tuple[MusicGenEngine, MusicGenEngine], params: SamplingParams) -> None:
    fast, eager = engines
    assert type(fast.fast) is FastDecoder and eager.fast is None  # no CUDA graphs on CPU
    requests = [GenerationRequest(d, duration, seed) for d, duration, seed in zip(DESCRIPTIONS, (1.0, 0.6), (3, 4))]
    tokens = fast.generate_tokens(requests, params)
    assert torch.equal(tokens.codes, eager.generate_tokens(requests, params).codes)
    # Seeded sampling: each row is its own seed's, whatever its batch-mates.
    alone = fast.generate_tokens(requests[1:], params)
    assert torch.equal(tokens.codes[1:, :, : tokens.frames[1]], alone.codes[:, :, : alone.frames[0]])


def test_both_decoders_run_every_frame_of_a_duration_that_rounds_down(engines: tuple[MusicGenEngine, MusicGenEngine]) -> None:
    # 0.5 s keeps 25 frames and runs 29 (4 past, for the delay pattern); 29 / 50 * 50 < 29 in floating point.
    fast, eager = engines
    requests = [GenerationRequest(DESCRIPTIONS[0], 0.5, 1)]
    tokens = fast.generate_tokens(requests, SamplingParams(top_k=50))
    assert tokens.codes.shape[-1] == 29
    assert torch.equal(tokens.codes, eager.generate_tokens(requests, SamplingParams(top_k=50)).codes)


def test_continuations_give_the_same_tokens(engines: tuple[MusicGenEngine, MusicGenEngine]) -> None:
    fast, eager = engines
    prompt = torch.randn(1, fast.sample_rate // 2, generator=torch.Generator().manual_seed(0)).numpy() * 0.1
    requests = [GenerationRequest(d, 0.6, seed, prompt_audio=prompt) for seed, d in enumerate(DESCRIPTIONS)]
    tokens = fast.generate_tokens(requests, SamplingParams(top_k=50))
    assert tokens.prompt_frames == 25
    assert torch.equal(tokens.codes, eager.generate_tokens(requests, SamplingParams(top_k=50)).codes)


def test_a_model_the_fast_decoder_cannot_run_falls_back_with_one_log_line(
    tiny_model_dir, caplog: pytest.LogCaptureFixture
) -> None:
    model = load_musicgen(str(tiny_model_dir), "cpu")
    model.lm.fuser.fuse2cond["prepend"] = ["self_wav"]  # as melody models fuse their chroma
    with caplog.at_level(logging.INFO, logger="generation.engine"):
        engine = MusicGenEngine(model, "melodic", "fast")

    assert engine.fast is None
    assert [r.getMessage() for r in caplog.records] == [
        "melodic: audiocraft's decoder instead of the fast one: conditions fused by prepend (melody conditioning)"
    ]
    assert engine.generate([GenerationRequest("a", 0.5, 1)], SamplingParams())[0].shape == (1, 16000)


def test_the_fast_decoder_runs_under_autocast(engines: tuple[MusicGenEngine, MusicGenEngine]) -> None:
    # As on a GPU, where MusicGen decodes under float16 autocast: the cache takes autocast's precision.
    decoder = engines[0].fast
    assert decoder is not None
    generators = [torch.Generator().manual_seed(1)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        codes = decoder.generate(attributes(DESCRIPTIONS[:1]), None, 20, SamplingParams(), generators)
    assert codes.shape == (1, decoder.lm.num_codebooks, 20)
    assert bool(((codes >= 0) & (codes < decoder.lm.card)).all())


@pytest.mark.parametrize(
    ("shape", "frames", "prompt_frames", "cfg"),
    [("tiny", 40, 0, True), ("tiny", 40, 12, False), ("small", 6, 3, True)],
    ids=["tiny-cfg", "tiny-prompt-no-cfg", "small-prompt-cfg"],
)
def test_the_fixed_shape_step_gives_the_logits_of_the_sliced_step(
    request, shape: str, frames: int, prompt_frames: int, cfg: bool
) -> None:
    lm = request.getfixturevalue(f"{shape}_lm")
    conditions = text_conditions(lm, DESCRIPTIONS, cfg)
    feeds = list(pattern_feeds(lm, len(DESCRIPTIONS), frames, prompt_frames, seed=frames))

    fixed = fast_logits(lm, conditions, feeds, cfg, FastDecoder(lm, fixed_shape=True))
    assert max_difference(fixed, fast_logits(lm, conditions, feeds, cfg)) < TOLERANCE


def generated(decoder: FastDecoder, descriptions: tp.Sequence[str], frames: int, params: SamplingParams,
              seeds: tp.Sequence[int], prompt: torch.Tensor | None = None) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    with torch.no_grad():
        return decoder.generate(attributes(descriptions), prompt, frames, params, generators)


SAMPLINGS = pytest.mark.parametrize(
    "params", [SamplingParams(top_k=1), SamplingParams(top_k=50)], ids=["greedy", "sampled"]
)


@SAMPLINGS
@pytest.mark.parametrize(("shape", "frames"), [("tiny", 40), ("small", 6)])
def test_fixed_shape_generations_give_the_same_tokens(request, shape: str, frames: int, params: SamplingParams) -> None:
    lm = request.getfixturevalue(f"{shape}_lm")
    fixed = generated(FastDecoder(lm, fixed_shape=True), DESCRIPTIONS, frames, params, (3, 4))
    assert torch.equal(fixed, generated(FastDecoder(lm), DESCRIPTIONS, frames, params, (3, 4)))


@SAMPLINGS
def test_graphed_steps_give_the_same_tokens_and_graphs_are_reused_across_batches(
    tiny_lm: tp.Any, params: SamplingParams
) -> None:
    capture = EagerReplay()
    graphed, sliced = GraphedDecoder(tiny_lm, capture), FastDecoder(tiny_lm)
    prompt = torch.randint(0, tiny_lm.card, (2, tiny_lm.num_codebooks, 12), generator=torch.Generator().manual_seed(0))
    # (descriptions, frames, seeds, prompt): 3 requests pad to a bucket of 4, then smaller batches
    # and another length reuse the buffers sized for it and a graph already captured.
    batches = [
        (["a", "dusty boom bap drums", "a jazz trio with a long description of many words"], 30, (1, 2, 3), None),
        (DESCRIPTIONS[:1], 40, (4,), None),
        (DESCRIPTIONS, 24, (5, 6), prompt),
        (["b", "c", "d"], 20, (7, 8, 9), None),
    ]
    for descriptions, frames, seeds, start in batches:
        tokens = generated(graphed, descriptions, frames, params, seeds, start)
        assert graphed.graphed
        assert torch.equal(tokens, generated(sliced, descriptions, frames, params, seeds, start))
    assert capture.captures == graphed.graphs == 3  # bucket 4, bucket 1, bucket 2; the last batch reuses bucket 4's


def test_graphed_steps_mask_each_rows_text_padding(tiny_lm: tp.Any) -> None:
    # Text of 3, 9 and 5 tokens (as T5 gives): the graph's rows and text run past the batch's,
    # padded to a bucket of 4 rows and 32 tokens, and none of it may reach a real row.
    batch, *_ = padded_conditions(tiny_lm, (3, 9, 5), seed=1)
    feeds = list(pattern_feeds(tiny_lm, 3, 30, 0, seed=1))
    graphed = GraphedDecoder(tiny_lm, EagerReplay())

    logits = fast_logits(tiny_lm, batch, feeds, False, graphed)
    assert graphed.graphed
    assert max_difference(logits, fast_logits(tiny_lm, batch, feeds, False)) < TOLERANCE


@CAPTURE_FAILURES
def test_a_failed_capture_turns_graphs_off_with_one_log_line(
    tiny_lm: tp.Any, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    capture = EagerReplay(failure)
    graphed = GraphedDecoder(tiny_lm, capture)
    params = SamplingParams(top_k=50)
    with caplog.at_level(logging.INFO, logger="generation.graphs"):
        tokens = [generated(graphed, DESCRIPTIONS[:n], 20, params, (1, 2)[:n]) for n in (2, 1)]

    assert [r.getMessage() for r in caplog.records] == [capture.log_line]
    assert capture.captures == 1 and not graphed.graphed
    assert torch.equal(tokens[0], generated(FastDecoder(tiny_lm), DESCRIPTIONS, 20, params, (1, 2)))


def test_graphs_under_autocast_keep_their_own_precision(tiny_lm: tp.Any) -> None:
    # As on a GPU, where steps run under float16 autocast: the static cache takes autocast's precision,
    # and a batch in another precision gets graphs of its own instead of reading the wrong buffers.
    capture = EagerReplay()
    graphed = GraphedDecoder(tiny_lm, capture)
    params = SamplingParams(top_k=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = generated(graphed, DESCRIPTIONS, 20, params, (1, 2))
    assert graphed.graphed and bool(((low >= 0) & (low < tiny_lm.card)).all())

    full = generated(graphed, DESCRIPTIONS, 20, params, (1, 2))
    assert torch.equal(full, generated(FastDecoder(tiny_lm), DESCRIPTIONS, 20, params, (1, 2)))
    assert capture.captures == 2 and graphed.graphs == 1  # the float32 cache replaced the bfloat16 one
