"""Time to loop under Poisson arrivals: static batches against continuous batching, same requests.

    python -m bench.queue_latency                      # a few minutes on a 2-core CPU
    python -m bench.queue_latency --load 0.5 --load 0.8 --requests 80 --shape tiny
    python -m bench.queue_latency --shape small --device cuda --seconds 4,8,12 --slots 16

Requests of mixed lengths (`--seconds`, one drawn at random per request: they stand in for loops of
a few bars at different tempos) arrive at random times, a Poisson process at `--load` times the
worker's capacity. The capacity is measured first: requests per second of full static batches of
`--slots` requests. Then the same arrivals go, in real time, through
- static batching, as the dispatcher batches today: when the worker is free it takes up to `--slots`
  waiting requests (all compatible here) and runs them as one `MusicGenEngine.generate` call, which
  lasts as long as its longest request; those arriving meanwhile wait for all of it;
- continuous batching (`generation.continuous`): a request joins a free slot at the next decoding
  step and leaves with its audio as soon as its own last step is done.
Time to loop is from arrival to the request's audio decoded (the loop engine's cut, the same on both
paths, is left out).

On CPU the clock is this process's CPU time (torch on one thread, as the worker runs it on a
2-core machine), and an idle worker skips to the next arrival instead of sleeping: other processes
on a shared machine would otherwise slow one path and not the other. `--wall-clock` times by the
wall clock instead; on CUDA the wall clock is the only one. Each path prints its p50, p95, mean and max; the last line is the ratio of the
p95s at the last `--load`, against the goal of at most half the static figure.

The model has random weights; `--shape bench` (the default: dim 256, 6 layers, 4 codebooks of 1024)
decodes on one CPU core at about the per-step cost a GPU has for musicgen-small, where a step's time
hardly grows with the batch; `tiny` is the test model, `small` musicgen-small's shape.
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
from generation.continuous import ContinuousGeneration
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.model import SMALL, TINY, ModelShape

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
    request: GenerationRequest


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
    parser.add_argument("--slots", type=int, default=4, help="the static batch size and the continuous batch's slots")
    parser.add_argument("--seconds", default="0.5,1,2", help="request lengths in seconds, one drawn per request")
    parser.add_argument("--requests", type=int, default=200, help="requests per run (default 200)")
    parser.add_argument("--load", type=float, action="append", help="arrival rate over capacity (repeatable; default 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="of the arrival times and lengths")
    parser.add_argument("--wall-clock", action="store_true", help="on CPU, time by the wall clock, not CPU time")
    args = parser.parse_args(argv)
    args.lengths = [float(s) for s in args.seconds.split(",")]
    args.loads = args.load or [0.8]
    return args


def make_arrivals(count: int, rate: float, lengths: Sequence[float], seed: int) -> list[Arrival]:
    """`count` requests, Poisson at `rate` per second, each of a length drawn from `lengths`."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, count))
    seconds = rng.choice(lengths, count)
    return [Arrival(float(t), GenerationRequest(f"dusty boom bap drums, take {i}", float(s), seed=i))
            for i, (t, s) in enumerate(zip(times, seconds))]


def capacity(engine: MusicGenEngine, slots: int, lengths: Sequence[float], seed: int, cpu: bool,
             batches: int = 4) -> float:
    """Requests per second the worker makes in full static batches of `slots` requests of the mix."""
    arrivals = make_arrivals(slots * batches, 1.0, lengths, seed + 1)
    clock = Clock(arrivals, cpu)
    for first in range(0, len(arrivals), slots):
        engine.generate([a.request for a in arrivals[first : first + slots]], PARAMS)
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


def run_static(engine: MusicGenEngine, arrivals: Sequence[Arrival], slots: int, cpu: bool) -> list[float]:
    """Time to loop of each request with static batches of up to `slots` waiting requests."""
    clock, waiting, latencies = Clock(arrivals, cpu), deque[int](), dict[int, float]()
    while len(latencies) < len(arrivals):
        waiting.extend(clock.arrived())
        if not waiting:
            clock.wait_for_next()
            continue
        batch = [waiting.popleft() for _ in range(min(slots, len(waiting)))]
        clips = engine.generate_each([arrivals[index].request for index in batch], PARAMS)
        for index, _clip in zip(batch, clips):  # each clip as soon as it is decoded
            latencies[index] = clock.latency(index)
    return [latencies[index] for index in range(len(arrivals))]


def run_continuous(engine: MusicGenEngine, arrivals: Sequence[Arrival], slots: int, cpu: bool) -> list[float]:
    """Time to loop of each request joining a continuous batch of `slots` slots at the next step."""
    clock, waiting, latencies = Clock(arrivals, cpu), deque[int](), dict[int, float]()
    generation = ContinuousGeneration(engine, PARAMS, slots)
    while len(latencies) < len(arrivals):
        waiting.extend(clock.arrived())
        while waiting and generation.free:
            index = waiting.popleft()
            generation.join(index, arrivals[index].request)
        if not len(generation):
            clock.wait_for_next()
            continue
        for index, _clip in generation.step():
            latencies[tp.cast(int, index)] = clock.latency(tp.cast(int, index))
    return [latencies[index] for index in range(len(arrivals))]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if is_cuda(args.device) and not torch.cuda.is_available():
        print("bench.queue_latency: no CUDA device here; use --device cpu")
        return 0
    if not is_cuda(args.device):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # as `MusicGenEngine.load` does on CPU
    engine = build_engine(SHAPES[args.shape], args.device)
    print(f"bench.queue_latency: {args.shape} shape, random weights, {args.device}, {torch.get_num_threads()} CPU "
          f"thread(s); {args.slots} per batch; requests of {'/'.join(f'{s:g}' for s in args.lengths)} s; "
          f"{'CPU' if not is_cuda(args.device) and not args.wall_clock else 'wall'} clock", flush=True)
    engine.generate([GenerationRequest("warm up", 0.2, 0)] * args.slots, PARAMS)
    cpu = not is_cuda(args.device) and not args.wall_clock
    per_second = capacity(engine, args.slots, args.lengths, args.seed, cpu)
    print(f"capacity: {per_second:.2f} requests/s in full static batches of {args.slots}", flush=True)
    results = []
    for load in args.loads:
        arrivals = make_arrivals(args.requests, load * per_second, args.lengths, args.seed)
        print(f"load {load:.2f}: {args.requests} requests, Poisson at {load * per_second:.2f}/s over "
              f"{arrivals[-1].at:.0f} s", flush=True)
        for label, run in (("static", run_static), ("continuous", run_continuous)):
            started = time.perf_counter()
            seconds = run(engine, arrivals, args.slots, cpu)
            result = Latencies(label, load, seconds, time.perf_counter() - started)
            print(result.line(), flush=True)
            results.append(result)
    static, continuous = results[-2:]
    print(f"p95 time to loop at load {static.load:.2f} ({args.shape}, {args.device}), continuous/static: "
          f"{continuous.p95 / static.p95:.2f} ({continuous.p95:.2f} s against {static.p95:.2f} s; goal <= 0.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
