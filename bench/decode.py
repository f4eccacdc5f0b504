"""audiocraft's decoding loop against LoopJam's fast decoder, on the same random-weight model.

    python -m bench.decode --shape small --device cpu --seconds 10 --batch 16
    python -m bench.decode --shape small --device cuda                 # batches 1, 4, 8, 16, 32, 64
    python -m bench.decode --quick        # tiny then small, CPU, batch 4, 1 s of audio (a few minutes)

Both decoders run `MusicGenEngine.generate_tokens` (the LM's tokens; the codec's decoding, the
same for both, is left out) with the worker's default sampling and one seed per row, so their
tokens can be compared. The model is built as `bench.gpu` builds it: random weights in a released
shape (`tiny`, `small` = musicgen-small, `medium` = musicgen-medium), text through a lookup table,
float16 transformer under autocast on CUDA, float32 on CPU.

One line per batch size: seconds of audio generated per wall second for each decoder, their ratio,
peak memory (CUDA: `max_memory_allocated`; CPU: the most the process's resident memory grew during
the run, sampled every 2 ms), whether the tokens were identical, and how the fast decoder ran its
steps (`fast_steps=cuda_graphs` where they replayed CUDA graphs, `generation.graphs`; else `eager`,
and on CUDA the log line saying why). The last line of each shape:
`fast/eager at batch B (SHAPE, DEVICE): R.RRx; tokens identical: yes|no`, B the largest batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bench.gpu import build_engine, is_cuda
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.graphs import GraphedDecoder
from generation.model import MEDIUM, SMALL, TINY, ModelShape

SHAPES: dict[str, ModelShape] = {"tiny": TINY, "small": SMALL, "medium": MEDIUM}
CPU_BATCHES = (1, 4, 8, 16)
CUDA_BATCHES = (*CPU_BATCHES, 32, 64)
QUICK = (("tiny", 4, 1.0), ("small", 4, 1.0))
"""`--quick`: (shape, batch, seconds), on CPU, the small shape last."""
MB = 1e6


@dataclass(frozen=True)
class Run:
    """One decoder at one batch size: the median wall time, peak memory, the tokens of the last run."""

    wall_seconds: float
    peak_bytes: int
    codes: torch.Tensor


@dataclass(frozen=True)
class Comparison:
    shape: str
    device: str
    batch: int
    audio_seconds: float
    eager: Run
    fast: Run
    fast_steps: str
    """"cuda_graphs" or "eager"."""

    @property
    def ratio(self) -> float:
        return self.eager.wall_seconds / self.fast.wall_seconds

    @property
    def identical(self) -> bool:
        return torch.equal(self.eager.codes, self.fast.codes)

    def line(self) -> str:
        memory = "peak_gpu_mb" if is_cuda(self.device) else "peak_rss_gain_mb"
        pairs = (
            ("shape", self.shape), ("device", self.device), ("batch", str(self.batch)),
            ("audio_s", f"{self.audio_seconds:g}"),
            ("eager_wall_s", f"{self.eager.wall_seconds:.3f}"), ("fast_wall_s", f"{self.fast.wall_seconds:.3f}"),
            ("eager_audio_s_per_s", f"{self.audio_seconds / self.eager.wall_seconds:.2f}"),
            ("fast_audio_s_per_s", f"{self.audio_seconds / self.fast.wall_seconds:.2f}"),
            (f"eager_{memory}", f"{self.eager.peak_bytes / MB:.0f}"), (f"fast_{memory}", f"{self.fast.peak_bytes / MB:.0f}"),
            ("fast_over_eager", f"{self.ratio:.2f}"), ("tokens_identical", "yes" if self.identical else "no"),
            ("fast_steps", self.fast_steps),
        )
        return "decode " + " ".join(f"{key}={value}" for key, value in pairs)

    def summary(self) -> str:
        return (
            f"fast/eager at batch {self.batch} ({self.shape}, {self.device}): {self.ratio:.2f}x; "
            f"tokens identical: {'yes' if self.identical else 'no'}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per request (default 10)")
    parser.add_argument("--batch", type=int, action="append",
                        help=f"a batch size (repeatable); default {CPU_BATCHES} on CPU, {CUDA_BATCHES} on CUDA")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per decoder and batch; the median is kept")
    parser.add_argument("--quick", action="store_true", help="tiny then small on CPU, batch 4, 1 s; ignores the rest")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 29:
        parser.error("--seconds must be in (0, 29]: longer needs audiocraft's windowed generation")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


class _PeakRss:
    """The most this process's resident memory grew above its level at start, sampled in a thread."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._start = self._peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())

    @property
    def gain(self) -> int:
        return self._peak - self._start


@contextmanager
def peak_memory(device: str) -> Iterator[Callable[[], int]]:
    """Yields a function giving the peak bytes of the block, once it has ended."""
    if is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device)
        return
    with _PeakRss() as rss:
        yield lambda: rss.gain


def timed(engine: MusicGenEngine, requests: list[GenerationRequest], device: str, repeats: int) -> Run:
    if is_cuda(device):  # the CUDA graphs of this batch size and length captured out of the timings, as a worker has them
        engine.generate_tokens(requests, SamplingParams())
    timings, peaks, codes = [], [], torch.empty(0)
    for _ in range(repeats):
        with peak_memory(device) as peak:
            started = time.perf_counter()
            codes = engine.generate_tokens(requests, SamplingParams()).codes
            if is_cuda(device):
                torch.cuda.synchronize(device)
            timings.append(time.perf_counter() - started)
        peaks.append(peak())
    return Run(statistics.median(timings), max(peaks), codes.cpu())


def compare(shape: str, device: str, batches: Sequence[int], seconds: float, repeats: int) -> list[Comparison]:
    fast = build_engine(SHAPES[shape], device)
    eager = MusicGenEngine(fast.model, fast.name, "audiocraft")
    if fast.fast is None:
        raise SystemExit("the fast decoder refused this model (see the log line above)")
    warm = [GenerationRequest("warm up", 0.2, seed=0)]
    for engine in (eager, fast):  # kernel set-up and first allocations out of the timings
        engine.generate_tokens(warm, SamplingParams())
    results = []
    for batch in batches:
        requests = [GenerationRequest(f"dusty boom bap drums, take {i}", seconds, seed=i) for i in range(batch)]
        eager_run, fast_run = timed(eager, requests, device, repeats), timed(fast, requests, device, repeats)
        graphed = isinstance(fast.fast, GraphedDecoder) and fast.fast.graphed
        comparison = Comparison(shape, device, batch, batch * seconds, eager_run, fast_run, "cuda_graphs" if graphed else "eager")
        print(comparison.line(), flush=True)
        results.append(comparison)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        plan = [(shape, "cpu", (batch,), seconds) for shape, batch, seconds in QUICK]
    else:
        if is_cuda(args.device) and not torch.cuda.is_available():
            print("bench.decode: no CUDA device here; use --device cpu")
            return 0
        batches = tuple(args.batch or (CUDA_BATCHES if is_cuda(args.device) else CPU_BATCHES))
        plan = [(args.shape, args.device, batches, args.seconds)]
    if any(not is_cuda(device) for _, device, _, _ in plan):
        # As `MusicGenEngine.load` does on CPU: one core left to the rest of the machine.
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    for shape, device, batches, seconds in plan:
        print(f"bench.decode: {shape} shape, random weights, {device}, {seconds:g} s of audio per request, "
              f"{torch.get_num_threads()} CPU thread(s)", flush=True)
        results = compare(shape, device, batches, seconds, args.repeats)
        print(max(results, key=lambda c: c.batch).summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
