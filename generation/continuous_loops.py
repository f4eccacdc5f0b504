"""`LoopMaker.make` for requests that come and go: continuous batching up to the finished loops.

A `ContinuousLoops` keeps one engine's `continuous.ContinuousGeneration` busy. A request (its
`LoopSpec`s, under the caller's key) joins between two decoding steps: each candidate of its round
takes a free slot, or waits for one in the order the candidates came. A decoded candidate goes to
the loop engine at once (`LoopProcesses.submit`) while the others go on decoding. Once a round's
candidates are all judged, the request either starts its next round (new seeds, which join like
any candidate) or is settled: its loops are moved into their key and it leaves with its outcomes.

The rounds, seeds and choice are `LoopMaker.make`'s, and each candidate's audio is what it is
alone, so a request gets the loops `LoopMaker.make` makes for it alone, whoever it shared the
slots with (`tests/integration/test_continuous_loops.py`).
"""

from __future__ import annotations

import concurrent.futures
import typing as tp
from dataclasses import dataclass, field

import numpy as np

from .continuous import ContinuousGeneration
from .loop import LoopResult
from .loop.parallel import Cut
from .pipeline import LoopMaker, LoopOutcome, LoopSpec, StageCallback
from .sampling import SamplingParams
from .slots import Key

IDLE_WAIT_S = 0.05
"""How long a `step` with nothing to decode waits for the loop engine."""


@dataclass(frozen=True)
class _Candidate:
    """One seed of one of a request's specs in one round; its key in the `ContinuousGeneration`."""

    request: Key
    index: int
    """The spec's, in the request's outcomes."""
    seed: int
    round: int


@dataclass
class _Request:
    outcomes: list[LoopOutcome]
    on_stage: StageCallback | None
    round: int = 0
    candidates: int = 0
    """This round's."""
    decoding: set[_Candidate] = field(default_factory=set)
    """This round's candidates in a slot or waiting for one."""
    judging: int = 0
    """This round's candidates whose loop is not judged yet."""
    keying: list[tuple[LoopOutcome, Cut[LoopResult]]] | None = None
    """Once settled: each delivered loop being moved into its key."""


@dataclass(frozen=True)
class Finished:
    """A request that left with its outcomes (one per spec, as `LoopMaker.make` returns them), or
    with the error the loop engine raised on one of its candidates."""

    key: Key
    outcomes: list[LoopOutcome]
    error: Exception | None = None


class ContinuousLoops:
    """Requests sharing `params`, their candidates decoded in `slots` slots (see the module).

    Not thread-safe, like the engine.
    """

    def __init__(self, maker: LoopMaker, params: SamplingParams, slots: int) -> None:
        self.maker = maker
        self.params = params
        self._generation = ContinuousGeneration(maker.engine, params, slots)
        self._requests: dict[Key, _Request] = {}
        self._waiting: list[_Candidate] = []
        """Candidates waiting for a slot, first come first served."""
        self._cutting: dict[_Candidate, Cut[LoopResult]] = {}

    def __len__(self) -> int:
        """Requests in: decoding, waiting for a slot or in the loop engine."""
        return len(self._requests)

    def __contains__(self, key: object) -> bool:
        return key in self._requests

    def fits(self, specs: tp.Sequence[LoopSpec]) -> bool:
        """Whether these specs can join: this batch's sampling, and every candidate within the
        model's `max_duration` (longer ones are audiocraft's windows, a static batch)."""
        return all(
            spec.params == self.params and self._generation.fits(self.maker.request(spec, spec.seed)) for spec in specs
        )

    def join(self, key: Key, specs: tp.Sequence[LoopSpec], on_stage: StageCallback | None = None) -> None:
        """Admit a request under `key`; its first candidates decode from the next `step` on.

        `on_stage` gets its progress as `LoopMaker.make` reports it. Raises ValueError when the
        specs do not `fit` or `key` is in already.
        """
        if key in self._requests:
            raise ValueError(f"{key!r} is in already")
        if not self.fits(specs):
            raise ValueError("these loops cannot join this batch: other sampling, or past the model's max_duration")
        request = _Request([LoopOutcome(spec=spec, seed=spec.seed) for spec in specs], on_stage)
        self._requests[key] = request
        self._start_round(key, request)

    def leave(self, key: Key) -> None:
        """Drop a request (cancelled): its slots are free for the next candidates, its loops are not made."""
        request = self._requests.pop(key)
        admitted = set(self._generation.admitted)
        for candidate in request.decoding & admitted:
            self._generation.leave(candidate)
        self._waiting = [candidate for candidate in self._waiting if candidate.request != key]
        # A cut in a process runs to its end there; its result is dropped.
        for candidate in [candidate for candidate in self._cutting if candidate.request == key]:
            del self._cutting[candidate]

    def step(self) -> list[Finished]:
        """Admit waiting candidates, take one decoding step (or wait a moment for the loop engine
        when nothing decodes), judge the loops that are ready; the requests that finished."""
        while self._waiting and self._generation.free:
            candidate = self._waiting.pop(0)
            spec = self._requests[candidate.request].outcomes[candidate.index].spec
            self._generation.join(candidate, self.maker.request(spec, candidate.seed))
        if len(self._generation):
            for key, audio in self._generation.step():
                self._decoded(tp.cast(_Candidate, key), audio)
            self._report_generating()
        else:
            self._wait_for_loop_engine()
        return self._judged() + self._keyed()

    def _start_round(self, key: Key, request: _Request) -> None:
        """Queue the request's candidates of its round, or settle it when there are none."""
        candidates = [
            _Candidate(key, index, seed, request.round)
            for index, outcome in enumerate(request.outcomes) if not self.maker.settled(outcome)
            for seed in self.maker.candidate_seeds(outcome.spec, request.round)
        ] if request.round <= self.maker.generation.retry_budget else []
        if not candidates:
            request.keying = [(outcome, self.maker.processes.submit(call))
                              for outcome, call in self.maker.keying(request.outcomes)]
            return
        request.candidates = request.judging = len(candidates)
        request.decoding = set(candidates)
        self._waiting += candidates

    def _decoded(self, candidate: _Candidate, audio: np.ndarray) -> None:
        """A candidate's audio [C, T] is made: to the loop engine with it."""
        request = self._requests[candidate.request]
        request.decoding.discard(candidate)
        if not request.decoding and request.on_stage is not None:
            request.on_stage("looping", 0.0)
        spec = request.outcomes[candidate.index].spec
        self._cutting[candidate] = self.maker.processes.submit(self.maker.cut(spec, audio))

    def _report_generating(self) -> None:
        """Each decoding request's round progress: its decoded candidates and how far the others are."""
        admitted = set(self._generation.admitted)
        for request in self._requests.values():
            if request.on_stage is None or not request.decoding:
                continue
            decoding = sum(self._generation.progress(candidate) for candidate in request.decoding & admitted)
            decoded = 100.0 * (request.candidates - len(request.decoding))
            progress = self.maker.round_progress(request.on_stage, request.round)
            assert progress is not None
            progress((decoded + decoding) / request.candidates)

    def _wait_for_loop_engine(self) -> None:
        pending = [cut.future for cut in self._cutting.values()]
        pending += [cut.future for request in self._requests.values() for _, cut in request.keying or []]
        if pending:
            concurrent.futures.wait(pending, IDLE_WAIT_S, concurrent.futures.FIRST_COMPLETED)

    def _judged(self) -> list[Finished]:
        """Judge each candidate whose loop is ready; a request whose round is judged goes on to the next."""
        failed = []
        for candidate, cut in list(self._cutting.items()):
            if candidate.request not in self._requests or not cut.future.done():
                continue  # its request failed on an earlier candidate, or its loop is not ready
            del self._cutting[candidate]
            request = self._requests[candidate.request]
            try:
                loop = cut.result()
            except Exception as error:
                failed.append(self._failed(candidate.request, error))
                continue
            self.maker.consider(request.outcomes[candidate.index], candidate.seed, loop)
            request.judging -= 1
            if not request.judging:
                request.round += 1
                self._start_round(candidate.request, request)
        return failed

    def _keyed(self) -> list[Finished]:
        """The settled requests whose loops are all in their key: they leave."""
        finished = []
        for key, request in list(self._requests.items()):
            if request.keying is None or not all(cut.future.done() for _, cut in request.keying):
                continue
            try:
                for outcome, cut in request.keying:
                    outcome.loop = cut.result()
            except Exception as error:
                finished.append(self._failed(key, error))
                continue
            del self._requests[key]
            if request.on_stage is not None:
                request.on_stage("looping", 100.0)
            finished.append(Finished(key, request.outcomes))
        return finished

    def _failed(self, key: Key, error: Exception) -> Finished:
        outcomes = self._requests[key].outcomes
        self.leave(key)
        return Finished(key, outcomes, error)
