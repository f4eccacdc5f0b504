"""The MusicGen engine on a tiny random model, loaded through audiocraft's real loader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.engine import GenerationCancelled, GenerationRequest, MusicGenEngine, SamplingParams
from generation.model import (
    CODEC_CHECKPOINT,
    LM_CHECKPOINT,
    TINY,
    ModelNotFoundError,
    build_random_musicgen_parts,
    check_model_name,
    load_musicgen,
    write_random_checkpoint,
)
from generation.sampling import keep_top_k, sample_rows

PARAMS = SamplingParams(temperature=1.0, top_k=50, top_p=0.0, cfg_coef=3.0)


def _greedy_tokens(lm, description: str, frames: int) -> torch.Tensor:
    from audiocraft.modules.conditioners import ConditioningAttributes

    return lm.generate(
        None, [ConditioningAttributes(text={"description": description})],
        max_gen_len=frames, use_sampling=False, cfg_coef=3.0,
    )


@pytest.mark.parametrize("cfg_as_omegaconf", [True, False], ids=["omegaconf-cfg", "dict-cfg"])
def test_checkpoint_round_trip_gives_same_weights_and_tokens(tmp_path: Path, cfg_as_omegaconf: bool) -> None:
    directory = write_random_checkpoint(tmp_path / "m", TINY, seed=7, cfg_as_omegaconf=cfg_as_omegaconf)
    assert {p.name for p in directory.iterdir()} == {LM_CHECKPOINT, CODEC_CHECKPOINT}
    built_lm, built_codec = build_random_musicgen_parts(TINY, seed=7)

    loaded = load_musicgen(str(directory), "cpu")

    for built, restored in ((built_lm, loaded.lm), (built_codec, loaded.compression_model)):
        expected, actual = built.state_dict(), restored.state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key
    assert torch.equal(_greedy_tokens(built_lm, "lofi piano", 40), _greedy_tokens(loaded.lm, "lofi piano", 40))
    assert loaded.sample_rate == 32000 and loaded.frame_rate == 50


def test_omegaconf_checkpoint_needs_the_allowlist_and_nothing_more(tmp_path: Path) -> None:
    directory = write_random_checkpoint(tmp_path / "m", TINY, cfg_as_omegaconf=True)
    # torch's safe default refuses the OmegaConf config on its own...
    with pytest.raises(pickle.UnpicklingError):
        torch.load(directory / LM_CHECKPOINT, weights_only=True)
    # ...and our loader still refuses a checkpoint that smuggles in anything else.
    torch.save({"xp.cfg": {}, "best_state": {}, "payload": Path("/etc/passwd")}, directory / LM_CHECKPOINT)
    with pytest.raises(pickle.UnpicklingError):
        load_musicgen(str(directory), "cpu")


def test_unknown_model_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="Unknown model"):
        check_model_name("facebook/musicgen-gigantic")
    with pytest.raises(ModelNotFoundError, match=r"missing state_dict\.bin"):
        check_model_name(str(tmp_path))
    check_model_name("facebook/musicgen-small")


def test_batch_of_three_matches_each_request_alone(tiny_engine: MusicGenEngine) -> None:
    requests = [
        GenerationRequest("dusty boom bap, 92 bpm", 1.5, seed=11),
        GenerationRequest("techno", 2.5, seed=22),
        GenerationRequest("a much longer description of a jazz drum groove", 1.0, seed=33),
    ]
    batch = tiny_engine.generate(requests, PARAMS)

    assert [clip.shape for clip in batch] == [(1, 48000), (1, 80000), (1, 32000)]
    for request, clip in zip(requests, batch):
        alone = tiny_engine.generate([request], PARAMS)[0]
        np.testing.assert_array_equal(alone, clip)
    # Different seeds make different audio.
    assert not np.array_equal(batch[0][:, :32000], batch[2])


def test_same_seed_reproduces_and_new_seed_changes(tiny_engine: MusicGenEngine) -> None:
    first = tiny_engine.generate([GenerationRequest("house", 1.0, seed=5)], PARAMS)[0]
    again = tiny_engine.generate([GenerationRequest("house", 1.0, seed=5)], PARAMS)[0]
    other = tiny_engine.generate([GenerationRequest("house", 1.0, seed=6)], PARAMS)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_continuation_returns_new_audio_after_the_prompt(tiny_engine: MusicGenEngine) -> None:
    source = tiny_engine.generate([GenerationRequest("ambient pads", 2.0, seed=1)], PARAMS)[0]
    prompts = [source[:, -16000:], np.zeros((1, 16000), dtype=np.float32)]
    # Greedy decoding: a random model's sampling is close to uniform and would hide the prompt.
    greedy = SamplingParams(temperature=0.0)
    continued = tiny_engine.generate(
        [GenerationRequest("ambient pads", 1.0, seed=2, prompt_audio=p) for p in prompts], greedy
    )
    assert [c.shape for c in continued] == [(1, 32000), (1, 32000)]
    assert np.all(np.isfinite(continued[0])) and np.abs(continued[0]).max() > 0
    # Same description, different audio prompt: the continuation follows the prompt.
    assert not np.array_equal(continued[0], continued[1])


def test_continuation_prompts_of_different_lengths_are_refused(tiny_engine: MusicGenEngine) -> None:
    audio = np.zeros((1, 16000), dtype=np.float32)
    with pytest.raises(ValueError, match="same length"):
        tiny_engine.generate(
            [GenerationRequest("a", 1.0, 1, audio), GenerationRequest("b", 1.0, 2, audio[:, :8000])], PARAMS
        )


def test_progress_rises_to_100(tiny_engine: MusicGenEngine) -> None:
    reports: list[float] = []
    tiny_engine.generate([GenerationRequest("a", 1.0, 1), GenerationRequest("b", 2.0, 2)], PARAMS, progress=reports.append)
    assert reports[0] == 0.0 and reports[-1] == 100.0
    assert reports == sorted(reports)
    assert len(reports) > 50  # one report per decoding step, not just start and end


def test_cancel_stops_between_steps_and_engine_still_works(tiny_engine: MusicGenEngine) -> None:
    steps: list[float] = []

    def cancel_after_ten() -> bool:
        return len(steps) >= 10

    with pytest.raises(GenerationCancelled):
        tiny_engine.generate([GenerationRequest("a", 5.0, 1)], PARAMS, progress=steps.append, should_cancel=cancel_after_ten)
    assert len(steps) == 10 and steps[-1] < 10.0
    clip = tiny_engine.generate([GenerationRequest("a", 1.0, 1)], PARAMS)[0]
    assert clip.shape == (1, 32000)


@pytest.mark.parametrize("seed", range(5))
def test_sampling_a_batch_draws_what_multinomial_draws_row_by_row(seed: int) -> None:
    # Seeds recorded in the history must keep giving the same audio whichever way rows are sampled.
    torch.manual_seed(seed)
    probs = keep_top_k(torch.softmax(3 * torch.randn(8, 4, 2048), dim=-1), 250)
    by_row = [torch.Generator().manual_seed(seed * 100 + i) for i in range(8)]
    batched = [torch.Generator().manual_seed(seed * 100 + i) for i in range(8)]

    expected = torch.stack([torch.multinomial(row, 1, generator=gen) for row, gen in zip(probs, by_row)])
    assert torch.equal(sample_rows(probs, batched), expected)
    # Each generator moved on exactly as far, so the next step's draws match too.
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(by_row, batched))
