"""Continuous batching up to the finished loops: a request that joins others mid-way gets its loops alone.

`ContinuousLoops` on the tiny random MusicGen (the real model call) and the real loop engine:
requests join at different steps, with more candidates than slots, retry rounds (the random
model's loops are rarely good), an exact-seed request and one cancelled midway. Each finished
request must have the loops, seeds and verdicts `LoopMaker.make` gives it alone, sample for sample.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from generation.config import GenerationSettings, LoopSettings
from generation.continuous_loops import ContinuousLoops, Finished
from generation.engine import MusicGenEngine, SamplingParams
from generation.music import parse_key
from generation.pipeline import LoopMaker, LoopOutcome, LoopSpec
from generation.shape import LoopShape

PARAMS = SamplingParams(top_k=50)
SHAPE = LoopShape(bpm=240.0, bars=1)  # one second: the tiny model decodes it in a moment


@pytest.fixture(scope="module")
def maker(tiny_engine: MusicGenEngine) -> LoopMaker:
    return LoopMaker(tiny_engine, GenerationSettings(candidates=2, retry_budget=1, extra_seconds=0.5), LoopSettings())


def spec(prompt: str, seed: int, **changes: object) -> LoopSpec:
    return dataclasses.replace(LoopSpec(prompt, SHAPE, seed, PARAMS), **changes)


def run(loops: ContinuousLoops, arrivals: dict[int, list[tuple[str, list[LoopSpec]]]], cancelled: str | None = None,
        stages: dict[str, list[tuple[str, float]]] | None = None) -> dict[str, Finished]:
    """Step until every request of `arrivals` (step -> (key, specs) joining then) has left; what
    each left with. `cancelled` leaves three steps after it joined."""
    finished: dict[str, Finished] = {}
    step, joined = 0, {}
    while step <= max(arrivals) or len(loops):
        for key, specs in arrivals.get(step, []):
            on_stage = None if stages is None else (lambda stage, percent, key=key: stages[key].append((stage, percent)))
            loops.join(key, specs, on_stage)
            joined[key] = step
        if cancelled in joined and step == joined[cancelled] + 3:
            loops.leave(cancelled)
        finished.update((left.key, left) for left in loops.step())
        step += 1
    return finished


def assert_same(together: list[LoopOutcome], alone: list[LoopOutcome]) -> None:
    assert [o.seed for o in together] == [o.seed for o in alone]
    assert [o.candidates_tried for o in together] == [o.candidates_tried for o in alone]
    assert [o.error for o in together] == [o.error for o in alone]
    for mine, theirs in zip(together, alone):
        assert mine.loop is not None and theirs.loop is not None
        assert mine.loop.report.verdict == theirs.loop.report.verdict
        assert mine.loop.audio.shape == theirs.loop.audio.shape == (1, SHAPE.samples(mine.loop.sample_rate))
        assert np.array_equal(mine.loop.audio, theirs.loop.audio)


def test_requests_that_join_mid_way_get_the_loops_they_get_alone(maker: LoopMaker) -> None:
    requests = {
        "first": [spec("dusty boom bap drums", 11)],
        "two loops": [spec("a jazz trio", 21), spec("a jazz trio", 22)],
        "replay": [spec("an ambient pad", 31, exact_seed=True)],
        "in a key": [spec("a brass section", 41, key=parse_key("D minor"))],
        "cancelled": [spec("a brass section", 51)],
    }
    loops = ContinuousLoops(maker, PARAMS, slots=3)  # fewer than the candidates in: some wait for a slot
    arrivals = {0: [("first", requests["first"])], 6: [("two loops", requests["two loops"]), ("cancelled", requests["cancelled"])],
                9: [("replay", requests["replay"]), ("in a key", requests["in a key"])]}

    finished = run(loops, arrivals, cancelled="cancelled")

    assert sorted(finished) == ["first", "in a key", "replay", "two loops"]
    for key, left in finished.items():
        assert left.error is None
        assert_same(left.outcomes, maker.make(requests[key]))
    assert finished["replay"].outcomes[0].candidates_tried == 1
    assert finished["first"].outcomes[0].candidates_tried in (2, 4)  # best of 2, and 2 more when neither was good
    assert loops._generation.free == 3  # every slot was given back


def test_progress_goes_generating_then_looping_and_never_back(maker: LoopMaker) -> None:
    loops = ContinuousLoops(maker, PARAMS, slots=4)
    stages: dict[str, list[tuple[str, float]]] = {"a": [], "b": []}

    run(loops, {0: [("a", [spec("drums", 1)])], 4: [("b", [spec("bass", 2)])]}, stages=stages)

    for reported in stages.values():
        assert reported[0][0] == "generating" and reported[-1] == ("looping", 100.0)
        for stage in ("generating", "retrying"):
            percents = [percent for name, percent in reported if name == stage]
            assert percents == sorted(percents) and all(0.0 <= p <= 100.0 for p in percents)
        assert ("looping", 0.0) in reported


def test_a_request_with_other_sampling_or_too_long_cannot_join(maker: LoopMaker) -> None:
    loops = ContinuousLoops(maker, PARAMS, slots=2)
    too_long = LoopSpec("drums", LoopShape(bpm=60.0, bars=8), 1, PARAMS)  # 32 s: past the model's 30 s

    assert not loops.fits([spec("drums", 1, params=SamplingParams(top_k=10))])
    assert not loops.fits([too_long])
    with pytest.raises(ValueError, match="cannot join"):
        loops.join("long", [too_long])
    assert len(loops) == 0
