"""From a loop request to a finished loop: MusicGen candidates, the loop engine, best-of-N, retries.

A user should practically never see "try again": each request gets several candidates in one
batch, and new seeds when none is good. When the budget runs out the best candidate is delivered,
marked with its verdict. Only silence is an error.
"""

from __future__ import annotations

import functools
import typing as tp
from dataclasses import dataclass, field

import numpy as np

from .config import GenerationSettings, LoopSettings
from .engine import GenerationRequest, MusicGenEngine, SamplingParams
from .loop import LoopGrid, LoopReport, LoopResult, make_loop, make_variation_loop, variation_prompt
from .loop.keyed import in_key
from .loop.parallel import LoopProcesses
from .music import Key
from .shape import LoopShape

StageCallback = tp.Callable[[str, float], None]
"""Called with a stage ("generating", "retrying", "looping") and its progress in percent, which
never goes back within a stage: the retry rounds share one "retrying" bar."""

VERDICT_RANK = {"good": 2, "usable": 1, "unusable": 0}
SILENCE_ERROR = "The model produced only silence for this prompt. Try describing instruments or a genre."
VARIATION_PROMPT_BARS = 2
"""A variation prompts the model with its parent's last bars (all of them when the loop is shorter)."""


@dataclass(frozen=True)
class LoopSpec:
    """One loop to make. `prompt` is the text sent to the model (see `prompts.build_prompt`)."""

    prompt: str
    shape: LoopShape
    seed: int
    params: SamplingParams = field(default_factory=SamplingParams)
    exact_seed: bool = False
    """Generate only `seed` (one candidate, no retries): how `/replay` reproduces a loop."""
    previous: LoopResult | None = field(default=None, compare=False)
    """For a variation: the loop to continue (see `LoopMaker.loop_to_continue`). Its last bars
    prompt the model, and the new loop is cut on its grid, as long as it. A batch's variations
    must share one prompt length."""
    key: Key | None = field(default=None, kw_only=True)
    """Move the delivered loop into this key (a jam's); every loop's own key is detected either way."""


@dataclass
class LoopOutcome:
    spec: LoopSpec
    seed: int
    """The seed of the candidate delivered; replaying it with `exact_seed` gives the same loop."""
    loop: LoopResult | None = None
    error: str | None = None
    candidates_tried: int = 0

    @property
    def ok(self) -> bool:
        return self.loop is not None


def candidate_rank(loop: LoopResult) -> tuple[int, float]:
    """Higher is better: the verdict first, then the report's overall quality."""
    return VERDICT_RANK[loop.report.verdict], loop.report.quality


def _looping_from_first(clips: tp.Iterator[np.ndarray], on_stage: StageCallback | None) -> tp.Iterator[np.ndarray]:
    """The clips; the "looping" stage starts with the first (the batch's tokens are all made then)."""
    for index, clip in enumerate(clips):
        if index == 0 and on_stage:
            on_stage("looping", 0.0)
        yield clip


class LoopMaker:
    """Turns `LoopSpec`s into loops with one engine. Not thread-safe (the engine is not).

    A batch's candidates are cut into loops on `processes` (in this process when not given).
    """

    def __init__(
        self, engine: MusicGenEngine, generation: GenerationSettings, loop: LoopSettings,
        processes: LoopProcesses | None = None,
    ) -> None:
        self.engine = engine
        self.generation = generation
        self.loop_settings = loop
        self.processes = processes or LoopProcesses(1)

    def loop_to_continue(self, audio: np.ndarray, sample_rate: int, shape: LoopShape) -> LoopResult:
        """A finished loop [C, N] (from a file or made again) as a variation's `previous`.

        Converted to the model's rate and channels and fitted to the exact loop length there. A
        finished loop starts on a downbeat at the requested tempo, so its grid is the nominal
        one: no stretch, starting at 0. Its report is nominal too; only the grid and length are used.
        """
        import torch
        from audiocraft.data.audio_utils import convert_audio

        rate, samples = self.engine.sample_rate, shape.samples(self.engine.sample_rate)
        converted = convert_audio(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), sample_rate, rate,
                                  self.engine.channels).numpy()
        fitted = np.zeros((converted.shape[0], samples), dtype=np.float32)
        fitted[:, : min(samples, converted.shape[1])] = converted[:, :samples]
        grid = LoopGrid(shape, shape.beat_seconds, 1.0, 0.0)
        report = LoopReport(
            source_bpm=shape.bpm, metric_relation=1.0, stretch_ratio=1.0, source_start_seconds=0.0, downbeat_confidence=1.0,
            seam_score=1.0, tempo_stability=1.0, loudness_lufs=None, verdict="good", reason=None, reason_code=None,
        )
        return LoopResult(audio=fitted, sample_rate=rate, report=report, grid=grid)

    def candidate_seeds(self, spec: LoopSpec, round_index: int) -> list[int]:
        """Seeds of one round: the spec's seed first, all derived from it so a rerun is identical."""
        if spec.exact_seed:
            return [spec.seed] if round_index == 0 else []
        count = self.generation.candidates
        return [spec.seed + round_index * count + k for k in range(count)]

    def make(
        self,
        specs: tp.Sequence[LoopSpec],
        on_stage: StageCallback | None = None,
        should_cancel: tp.Callable[[], bool] | None = None,
    ) -> list[LoopOutcome]:
        """Make one loop per spec, generating every pending candidate of a round in one batch.

        Every spec must share the same `params`: audiocraft samples a whole batch with one setting.
        Raises `engine.GenerationCancelled` if `should_cancel()` turns true while generating.
        """
        if len({spec.params for spec in specs}) > 1:
            raise ValueError("a batch must share its sampling parameters")
        outcomes = [LoopOutcome(spec=spec, seed=spec.seed) for spec in specs]
        for round_index in range(1 + self.generation.retry_budget):
            pending = [o for o in outcomes if not self.settled(o)]
            batch = [(o, seed) for o in pending for seed in self.candidate_seeds(o.spec, round_index)]
            if not batch:
                break
            requests = [self.request(outcome.spec, seed) for outcome, seed in batch]
            progress = self.round_progress(on_stage, round_index)
            clips = _looping_from_first(
                self.engine.generate_each(requests, pending[0].spec.params, progress, should_cancel), on_stage
            )
            # Each clip goes to the loop engine as soon as it is decoded, while the next one decodes.
            loops = self.processes.run_all(self.cut(outcome.spec, clip) for (outcome, _), clip in zip(batch, clips))
            for (outcome, seed), loop in zip(batch, loops):
                self.consider(outcome, seed, loop)
        keying = self.keying(outcomes)
        for (outcome, _), loop in zip(keying, self.processes.run_all(call for _, call in keying)):
            outcome.loop = loop
        if on_stage:
            on_stage("looping", 100.0)
        return outcomes

    def keying(self, outcomes: tp.Sequence[LoopOutcome]) -> list[tuple[LoopOutcome, tp.Callable[[], LoopResult]]]:
        """Once the outcomes' candidates are all judged: those with no loop get the silence error,
        and each delivered loop the loop-engine call (picklable) that moves it into its spec's key."""
        for outcome in outcomes:
            if outcome.loop is None:
                outcome.error = SILENCE_ERROR
        # Keys only for the loops delivered: a shift costs a few hundred ms, too much for every candidate.
        return [
            (outcome, functools.partial(in_key, outcome.loop, outcome.spec.key, self.loop_settings))
            for outcome in outcomes if outcome.loop is not None
        ]

    def round_progress(self, on_stage: StageCallback | None, round_index: int) -> tp.Callable[[float], None] | None:
        """The engine's progress in one round as the request's: "generating" for the first round; the
        retry rounds fill one "retrying" bar in turn, so a new round never starts it over."""
        if on_stage is None:
            return None
        if round_index == 0:
            return functools.partial(on_stage, "generating")
        rounds_before, retries = round_index - 1, self.generation.retry_budget
        return lambda percent: on_stage("retrying", (100.0 * rounds_before + percent) / retries)

    def request(self, spec: LoopSpec, seed: int) -> GenerationRequest:
        seconds = spec.shape.seconds + self.generation.extra_seconds
        prompt = None if spec.previous is None else self._prompt(spec.previous)
        return GenerationRequest(spec.prompt, seconds, seed, prompt_audio=prompt)

    def _prompt(self, previous: LoopResult) -> np.ndarray:
        """A variation's prompt [C, T]: the last bars of the loop it continues, starting on a downbeat."""
        return variation_prompt(previous, previous.audio, self.engine.sample_rate, VARIATION_PROMPT_BARS)

    def cut(self, spec: LoopSpec, clip: np.ndarray) -> tp.Callable[[], LoopResult]:
        """The loop engine's call (picklable) that makes a candidate's loop: the best window of a
        new clip, or of a continuation on its parent's grid."""
        rate = self.engine.sample_rate
        if spec.previous is None:
            return functools.partial(make_loop, clip, rate, spec.shape, settings=self.loop_settings)
        # The prompt ends on a bar line of the previous loop's grid, so the new bars start there.
        prompt = self._prompt(spec.previous)
        source = np.concatenate([prompt, clip], axis=1)
        return functools.partial(
            make_variation_loop, spec.previous, source, rate, prompt.shape[1] / rate, settings=self.loop_settings
        )

    def consider(self, outcome: LoopOutcome, seed: int, result: LoopResult) -> None:
        outcome.candidates_tried += 1
        if result.report.silent:
            return
        if outcome.loop is None or candidate_rank(result) > candidate_rank(outcome.loop):
            outcome.loop, outcome.seed = result, seed

    @staticmethod
    def settled(outcome: LoopOutcome) -> bool:
        return outcome.loop is not None and outcome.loop.report.verdict == "good"
