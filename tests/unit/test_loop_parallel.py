"""A batch's candidates cut in loop-engine processes: the same loops as in one process, and a
process that dies costs no loop."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import numpy as np
import pytest

from generation.config import GenerationSettings, LoopSettings
from generation.engine import MusicGenEngine
from generation.loop.parallel import LoopProcesses
from generation.pipeline import LoopMaker, LoopSpec
from generation.shape import LoopShape

FINISHED_HERE = "finished in the caller"


def exit_unless_in(pid: int) -> str:
    """A call that kills any process it runs in but `pid`'s."""
    if os.getpid() != pid:
        os._exit(1)
    return FINISHED_HERE


@pytest.fixture(scope="module")
def processes() -> Iterator[LoopProcesses]:
    processes = LoopProcesses(2)
    processes.wait_ready()
    yield processes
    processes.close()


def test_loops_cut_in_processes_are_the_loops_cut_here(tiny_engine: MusicGenEngine, processes: LoopProcesses) -> None:
    specs = [LoopSpec("dub techno, 120 bpm", LoopShape(120.0, 1, 4), seed=100), LoopSpec("waltz, 90 bpm", LoopShape(90.0, 2, 3), seed=200)]
    generation = GenerationSettings(candidates=3, retry_budget=0, extra_seconds=2.0)
    here = LoopMaker(tiny_engine, generation, LoopSettings()).make(specs)
    stages: list[tuple[str, float]] = []
    there = LoopMaker(tiny_engine, generation, LoopSettings(), processes).make(specs, lambda s, p: stages.append((s, p)))

    for spec, alone, parallel in zip(specs, here, there):
        assert parallel.ok and parallel.candidates_tried == 3
        assert parallel.loop.audio.shape == (1, spec.shape.samples(32000))
        # The same candidate wins, with the same report and, bit for bit, the same audio.
        assert parallel.seed == alone.seed and parallel.loop.report == alone.loop.report
        np.testing.assert_array_equal(parallel.loop.audio, alone.loop.audio)
    assert [s for s, _ in stages].index("looping") > 0 and stages[-1] == ("looping", 100.0)


def test_a_process_that_dies_is_replaced_and_its_batch_still_finishes(processes: LoopProcesses) -> None:
    me = os.getpid()
    assert processes.run_all(functools.partial(exit_unless_in, me) for _ in range(3)) == [FINISHED_HERE] * 3
    processes.wait_ready()
    served_by = processes.run_all(functools.partial(os.getpid) for _ in range(4))
    assert me not in served_by


def test_one_process_means_cutting_in_the_caller() -> None:
    single = LoopProcesses(1)
    single.wait_ready()
    assert single.run_all([os.getpid, os.getpid]) == [os.getpid()] * 2


def test_a_call_sent_off_alone_comes_back_even_when_its_process_dies(processes: LoopProcesses) -> None:
    me = os.getpid()
    cuts = [processes.submit(functools.partial(exit_unless_in, me)) for _ in range(2)]
    assert [cut.result() for cut in cuts] == [FINISHED_HERE] * 2
    processes.wait_ready()
    assert processes.submit(os.getpid).result() != me  # new processes serve the next calls
    assert LoopProcesses(1).submit(os.getpid).result() == me
