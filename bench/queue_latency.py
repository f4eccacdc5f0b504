"""Time to loop under Poisson arrivals: the worker's static batches against its continuous batching.

    python -m bench.queue_latency                      # a few minutes on a 2-core CPU
    python -m bench.queue_latency --load 0.5 --load 0.8 --requests 80 --shape tiny
    python -m bench.queue_latency --shape small --device cuda --bpm 120 --bars 2,4,8 --slots 8

Loop requests of mixed lengths (`--bars`, one drawn at random per request, at `--bpm`) arrive at
random times, a Poisson process at `--load` times the worker's capacity. The capacity is measured
first: requests per second of full static batches of `--slots` requests. Then the same arrivals go,
in real time, through the worker's two ways of making loops, each with the worker's classes:
- static batches (`LoopMaker.make`), as the worker ran them before it batched continuously: when it
  is free it takes up to `--slots` waiting requests and makes their loops in one generation, which
  lasts as long as its longest request, then cuts them; those arriving meanwhile wait for all of it;
- continuous batching (`generation.continuous_loops.ContinuousLoops`, as the embedded worker runs
  now): a request's candidates join free slots at the next decoding step, each is cut as soon as it
  is decoded, and the request leaves with its loop.
Time to loop is from arrival to the finished loop (generated, cut, loudness-matched), with
`--candidates` per request (default 1) and no retry rounds.

On CPU the clock is this process's CPU time (torch on one thread, as the worker runs it on a
2-core machine), the loop engine cuts in this process so that its time counts, and an idle worker
skips to the next arrival instead of sleeping: other processes on a shared machine would otherwise
slow one path and not the other. `--wall-clock` (and CUDA, where the wall clock is the only one)
times by the wall clock and cuts loops in the worker's own processes (`auto_processes`), as a
worker does. Each path prints its p50, p95, mean and max; then how the decoding steps ran
(`cuda_graphs`, or eager and why), how much longer a decoding step takes with `--slots` requests
than with one, and the last line is the ratio of the p95s at the last `--load`, against the goal
of at most half the static figure.

The model has random weights; `--shape bench` (the default: dim 256, 6 layers, 4 codebooks of 1024)
decodes one request on one CPU core at about the per-step time a GPU takes for musicgen-small, and
`tiny` is the test model, `small` musicgen-small's shape. A GPU's step takes hardly longer for 8
requests than for one; a CPU's takes about twice as long for 4 (the step-time line says how much on
this machine). A request that joins a continuous batch slows every other one down on a CPU, so
the gain measured here is smaller than a GPU's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import typing as tp
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.gpu import build_engine, is_cuda
from generation.config import GenerationSettings, LoopSettings
from generation.continuous_loops import ContinuousLoops
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.graphs import GraphedDecoder
from generation.loop.parallel import LoopProcesses, auto_processes
from generation.model import SMALL, TINY, ModelShape
from generation.pipeline import LoopMaker, LoopSpec
from generation.shape import LoopShape

SHAPES: dict[str, ModelShape] = {
    "tiny": TINY,
    "bench": ModelShape(dim=256, num_heads=8, num_layers=6, card=1024, n_q=4, codec_filters=4, codec_dimension=32),
    "small": SMALL,
}
PARAMS = SamplingParams()
"""The worker's default sampling."""


@dataclass(frozen=True)
class Arrival:
    at: float
    """Seconds after the run's start."""
    spec: LoopSpec


@dataclass(frozen=True)
class Latencies:
    label: str
    load: float
    seconds: list[float]
    wall: float

    def line(self) -> str:
        ordered = sorted(self.seconds)
        return (f"{self.label:<10} load={self.load:.2f} requests={len(ordered)} p50={percentile(ordered, 50):.2f}s "
                f"p95={percentile(ordered, 95):.2f}s mean={statistics.fmean(ordered):.2f}s max={ordered[-1]:.2f}s "
                f"wall={self.wall:.1f}s")

    @property
    def p95(self) -> float:
        return percentile(sorted(self.seconds), 95)


def percentile(ordered: Sequence[float], q: float) -> float:
    return float(np.percentile(ordered, q))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.queue_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--slots", type=int, default=4, help="requests in a static batch, and in the continuous batch's slots")
    parser.add_argument("--bpm", type=float, default=240.0, help="the loops' tempo (default 240: a bar is a second)")
    parser.add_argument("--bars", default="1,2,4", help="loop lengths in bars, one drawn per request")
    parser.add_argument("--candidates", type=int, default=1, help="candidates per loop (best-of-N), no retry rounds")
    parser.add_argument("--requests", type=int, default=120, help="requests per run (default 120)")
    parser.add_argument("--load", type=float, action="append", help="arrival rate over capacity (repeatable; default 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="of the arrival times and lengths")
    parser.add_argument("--wall-clock", action="store_true", help="on CPU, time by the wall clock, not CPU time")
    args = parser.parse_args(argv)
    args.shapes = [LoopShape(args.bpm, int(bars)) for bars in args.bars.split(",")]
    args.loads = args.load or [0.8]
    return args


def make_arrivals(count: int, rate: float, shapes: Sequence[LoopShape], seed: int) -> list[Arrival]:
    """`count` requests, Poisson at `rate` per second, each of a shape drawn from `shapes`."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, count))
    drawn = rng.integers(len(shapes), size=count)
    return [Arrival(float(t), LoopSpec(f"dusty boom bap drums, take {i}", shapes[d], seed=i, params=PARAMS))
            for i, (t, d) in enumerate(zip(times, drawn))]


def capacity(maker: LoopMaker, slots: int, shapes: Sequence[LoopShape], seed: int, cpu: bool,
             batches: int = 4) -> float:
    """Requests per second the worker makes in full static batches of `slots` requests of the mix."""
    arrivals = make_arrivals(slots * batches, 1.0, shapes, seed + 1)
    clock = Clock(arrivals, cpu)
    for first in range(0, len(arrivals), slots):
        maker.make([a.spec for a in arrivals[first : first + slots]])
    return len(arrivals) / clock.now()


class Clock:
    """Time since the run's start, and the arrivals it has passed.

    Wall time, or with `cpu` this process's CPU time plus the idle gaps skipped (see the module):
    the time the run would take on a core of its own, whatever else the machine runs meanwhile.
    """

    def __init__(self, arrivals: Sequence[Arrival], cpu: bool) -> None:
        self.arrivals = arrivals
        self.cpu = cpu
        self._read = time.process_time if cpu else time.perf_counter
        self.started = self._read()
        self.skipped = 0.0
        self._next = 0

    def now(self) -> float:
        return self._read() - self.started + self.skipped

    def arrived(self) -> list[int]:
        """The indices of the requests that arrived since the last call."""
        first, now = self._next, self.now()
        while self._next < len(self.arrivals) and self.arrivals[self._next].at <= now:
            self._next += 1
        return list(range(first, self._next))

    def wait_for_next(self) -> None:
        """Wait until the next request arrives (the worker is idle): sleep, or skip the gap on CPU time."""
        if self._next < len(self.arrivals):
            gap = max(0.0, self.arrivals[self._next].at - self.now())
            if self.cpu:
                self.skipped += gap
            else:
                time.sleep(gap)

    def latency(self, index: int) -> float:
        """Seconds from request `index`'s arrival to now."""
        return self.now() - self.arrivals[index].at


def run_static(maker: LoopMaker, arrivals: Sequence[Arrival], slots: int, cpu: bool) -> list[float]:
    """Time to loop of each request with static batches of up to `slots` waiting requests."""
    clock, waiting, latencies = Clock(arrivals, cpu), deque[int](), dict[int, float]()
    while len(latencies) < len(arrivals):
        waiting.extend(clock.arrived())
        if not waiting:
            clock.wait_for_next()
            continue
        batch = [waiting.popleft() for _ in range(min(slots, len(waiting)))]
        maker.make([arrivals[index].spec for index in batch])  # the worker delivers a batch's loops together
        for index in batch:
            latencies[index] = clock.latency(index)
    return [latencies[index] for index in range(len(arrivals))]


def run_continuous(maker: LoopMaker, arrivals: Sequence[Arrival], slots: int, cpu: bool) -> list[float]:
    """Time to loop of each request joining a continuous batch of `slots` requests' candidates at the next step."""
    clock, latencies = Clock(arrivals, cpu), dict[int, float]()
    loops = ContinuousLoops(maker, PARAMS, slots * maker.generation.candidates)
    while len(latencies) < len(arrivals):
        for index in clock.arrived():
            loops.join(index, [arrivals[index].spec])
        if not len(loops):
            clock.wait_for_next()
            continue
        for finished in loops.step():
            latencies[tp.cast(int, finished.key)] = clock.latency(tp.cast(int, finished.key))
    return [latencies[index] for index in range(len(arrivals))]


def step_growth(engine: MusicGenEngine, slots: int, shape: LoopShape, cpu: bool) -> float:
    """How many times longer decoding `slots` requests of `shape` takes than decoding one."""
    read = time.process_time if cpu else time.perf_counter
    seconds = []
    for batch in (1, slots):
        started = read()
        engine.generate([GenerationRequest("step time", shape.seconds, seed) for seed in range(batch)], PARAMS)
        seconds.append(read() - started)
    return seconds[1] / seconds[0]


def steps_kind(engine: MusicGenEngine) -> str:
    """How the fast decoder ran its steps: CUDA graphs (`generation.graphs`), or eagerly and why."""
    decoder = engine.fast
    if not isinstance(decoder, GraphedDecoder):
        return "eager (no CUDA graphs on this device)"
    return "cuda_graphs" if decoder.failure is None else f"eager (CUDA graphs off: {decoder.failure})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if is_cuda(args.device) and not torch.cuda.is_available():
        print("bench.queue_latency: no CUDA device here; use --device cpu")
        return 0
    if not is_cuda(args.device):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # as `MusicGenEngine.load` does on CPU
    engine = build_engine(SHAPES[args.shape], args.device)
    generation = GenerationSettings(candidates=args.candidates, retry_budget=0, extra_seconds=0.5)
    cpu = not is_cuda(args.device) and not args.wall_clock
    processes = LoopProcesses(1 if cpu else auto_processes())
    maker = LoopMaker(engine, generation, LoopSettings(), processes)
    processes.wait_ready()
    print(f"bench.queue_latency: {args.shape} shape, random weights, {args.device}, {torch.get_num_threads()} CPU "
          f"thread(s); {args.slots} per batch; loops of {'/'.join(str(shape.bars) for shape in args.shapes)} bars at "
          f"{args.bpm:g} BPM, {args.candidates} candidate(s) each; "
          f"{'CPU' if cpu else 'wall'} clock, loops cut in {processes.processes} process(es)", flush=True)
    engine.generate([GenerationRequest("warm up", 0.2, 0)] * args.slots, PARAMS)
    maker.make([LoopSpec("warm up", args.shapes[0], 0, PARAMS)])  # the loop engine's first call compiles
    per_second = capacity(maker, args.slots, args.shapes, args.seed, cpu)
    print(f"capacity: {per_second:.2f} requests/s in full static batches of {args.slots}", flush=True)
    results = []
    for load in args.loads:
        arrivals = make_arrivals(args.requests, load * per_second, args.shapes, args.seed)
        print(f"load {load:.2f}: {args.requests} requests, Poisson at {load * per_second:.2f}/s over "
              f"{arrivals[-1].at:.0f} s", flush=True)
        for label, run in (("static", run_static), ("continuous", run_continuous)):
            started = time.perf_counter()
            seconds = run(maker, arrivals, args.slots, cpu)
            result = Latencies(label, load, seconds, time.perf_counter() - started)
            print(result.line(), flush=True)
            results.append(result)
    static, continuous = results[-2:]
    print(f"decoding steps: {steps_kind(engine)}; decoding {args.slots} requests takes "
          f"{step_growth(engine, args.slots, max(args.shapes, key=lambda shape: shape.bars), cpu):.2f}x as long as one")
    print(f"p95 time to loop at load {static.load:.2f} ({args.shape}, {args.device}), continuous/static: "
          f"{continuous.p95 / static.p95:.2f} ({continuous.p95:.2f} s against {static.p95:.2f} s; goal <= 0.50)")
    processes.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
