"""Best-of-N and retries around the real (tiny) model and the loop engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from generation.config import GenerationSettings, LoopSettings
from generation.engine import MusicGenEngine, SamplingParams
from generation.jobs.api import Stage
from generation.jobs.backend import WorkDone, WorkItem, WorkProgress
from generation.jobs.runner import BatchRunner, WorkerConfig
from generation.music import parse_key, shift_semitones
from generation.pipeline import LoopMaker, LoopOutcome, LoopSpec
from generation.shape import LoopShape


def maker(engine: MusicGenEngine, candidates: int, retries: int) -> LoopMaker:
    generation = GenerationSettings(candidates=candidates, retry_budget=retries, extra_seconds=2.0)
    return LoopMaker(engine, generation, LoopSettings())


def test_every_spec_gets_an_exact_loop_from_its_own_candidates(tiny_engine: MusicGenEngine) -> None:
    specs = [LoopSpec("dub techno, 120 bpm", LoopShape(120.0, 1, 4), seed=100), LoopSpec("waltz, 90 bpm", LoopShape(90.0, 1, 3), seed=200)]
    stages: list[tuple[str, float]] = []
    outcomes = maker(tiny_engine, candidates=2, retries=1).make(specs, on_stage=lambda s, p: stages.append((s, p)))

    for spec, outcome in zip(specs, outcomes):
        assert outcome.ok and outcome.error is None
        assert outcome.loop.audio.shape[-1] == spec.shape.samples(32000)
        assert spec.seed <= outcome.seed < spec.seed + 4
        # A random model's noise is never "good", so every candidate of both rounds was tried,
        # and the best is delivered, marked, rather than an error.
        if outcome.loop.report.verdict != "good":
            assert outcome.candidates_tried == 4 and outcome.loop.report.reason
    assert stages[0] == ("generating", 0.0) and stages[-1] == ("looping", 100.0)
    assert any(stage == "retrying" for stage, _ in stages) == any(o.loop.report.verdict != "good" for o in outcomes)


def test_exact_seed_makes_one_candidate_and_reproduces_the_loop(tiny_engine: MusicGenEngine) -> None:
    first = maker(tiny_engine, 2, 0).make([LoopSpec("house, 124 bpm", LoopShape(124.0, 1, 4), seed=7)])[0]
    replay = maker(tiny_engine, 2, 2).make([LoopSpec("house, 124 bpm", LoopShape(124.0, 1, 4), seed=first.seed, exact_seed=True)])[0]
    assert replay.candidates_tried == 1 and replay.seed == first.seed
    np.testing.assert_array_equal(replay.loop.audio, first.loop.audio)


def test_silent_candidates_are_never_delivered(tiny_engine: MusicGenEngine) -> None:
    outcome = LoopOutcome(spec=LoopSpec("silence", LoopShape(120.0, 1, 4), seed=1), seed=1)
    silent_maker = maker(tiny_engine, 1, 0)
    silence = np.zeros((1, 32000 * 4), dtype=np.float32)
    silent_maker.consider(outcome, 1, silent_maker.cut(outcome.spec, silence)())
    assert outcome.loop is None and outcome.candidates_tried == 1


def test_a_batch_must_share_sampling_parameters(tiny_engine: MusicGenEngine) -> None:
    specs = [LoopSpec("a", LoopShape(120.0, 1, 4), 1), LoopSpec("b", LoopShape(120.0, 1, 4), 2, params=SamplingParams(temperature=0.5))]
    with pytest.raises(ValueError, match="sampling parameters"):
        maker(tiny_engine, 1, 0).make(specs)


def test_progress_never_goes_back_when_best_of_n_tries_again(tiny_engine: MusicGenEngine) -> None:
    # A stretch limit no take can meet: no take is "good", so all three rounds run.
    strict = LoopMaker(tiny_engine, GenerationSettings(candidates=1, retry_budget=2, extra_seconds=2.0), LoopSettings(max_stretch=1e-6))
    stages: list[tuple[str, float]] = []
    (outcome,) = strict.make([LoopSpec("dub, 120 bpm", LoopShape(120.0, 1, 4), seed=3)], on_stage=lambda s, p: stages.append((s, p)))
    assert outcome.candidates_tried == 3
    named = [s for s, _ in stages]
    assert named.index("retrying") > len(named) - 1 - named[::-1].index("generating")  # the first round comes first
    for stage in ("generating", "retrying", "looping"):
        percents = [p for s, p in stages if s == stage]
        assert percents and percents == sorted(percents), (stage, percents)
    retrying = [p for s, p in stages if s == "retrying"]
    assert retrying[0] < 50 < retrying[-1] <= 100  # both retry rounds fill one bar


def test_a_batch_that_tries_again_reports_stages_the_queue_knows_and_never_goes_back(
    tiny_engine: MusicGenEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(MusicGenEngine, "load", lambda *_: tiny_engine)  # the session's tiny model, loaded once
    generation = GenerationSettings(candidates=1, retry_budget=1, extra_seconds=2.0)
    runner = BatchRunner(WorkerConfig("w", "tiny", "cpu", generation, LoopSettings(max_stretch=1e-6, processes=1), tmp_path))
    events: list = []
    item = WorkItem("progress", "tiny", "dub, 120 bpm", LoopShape(120.0, 1), 1.0, 250, 0.0, 3.0, ("progress",), (3,))
    runner.run([item], events.append, set())
    assert isinstance(events[-1], WorkDone)
    shown = [(Stage(e.stage), e.percent) for e in events if isinstance(e, WorkProgress)]
    assert Stage.RETRYING in dict(shown)
    for stage in Stage:
        percents = [p for s, p in shown if s is stage]
        assert percents == sorted(percents), (stage, percents)


def test_the_delivered_loop_gets_its_key_and_is_moved_into_the_key_asked_for(tiny_engine: MusicGenEngine) -> None:
    keyed, plain = maker(tiny_engine, candidates=1, retries=0).make([
        LoopSpec("organ chords, 120 bpm, A minor", LoopShape(120.0, 1), seed=7, key=parse_key("A minor")),
        LoopSpec("organ chords, 120 bpm", LoopShape(120.0, 1), seed=7),
    ])
    assert keyed.loop is not None and plain.loop is not None
    assert keyed.loop.audio.shape[-1] == plain.loop.audio.shape[-1] == LoopShape(120.0, 1).samples(32000)
    report = keyed.loop.report
    assert report.target_key == "A minor" and report.key_confidence is not None
    # A random model's noise has no key, or one it is moved from by the shortest way.
    expected = 0 if report.source_key is None else shift_semitones(parse_key(report.source_key), parse_key("A minor"))
    assert report.key_shift_semitones == expected
    assert (plain.loop.report.target_key, plain.loop.report.key_shift_semitones) == (None, None)
