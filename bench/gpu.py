"""MusicGen-small throughput and peak GPU memory on one CUDA device, with random weights.

    python -m bench.gpu [--seconds 12] [--repeats 3] [--bars 4] [--bpm 120]
    python -m bench.gpu --device cpu --tiny --seconds 1     # smoke test of this script, no GPU

The LM has musicgen-small's shape (`generation.model.SMALL`: 24 layers, dim 1024, 4 codebooks of
2048) and attention as released models configure it (`memory_efficient`, torch's
scaled_dot_product_attention); text goes through a lookup table instead of T5, so nothing is
downloaded. Precision follows audiocraft on a GPU: `load_lm_model` builds the transformer in
float16 (embeddings, output heads and conditioner stay float32) and `MusicGen` generates under
float16 autocast.

Measured, each with the peak of `torch.cuda.max_memory_allocated`:
- the engine alone (`MusicGenEngine.generate`) at batch 1, 8 and 16, `--seconds` per request;
- the worker's path (continuous batching as the worker runs it, `ContinuousLoops`: candidates, the
  loop engine in the worker's loop-engine processes, retries) over 8 loop requests of
  `--bars` bars at `--bpm`, with the worker's default `[generation]` settings unless
  `--candidates` / `--retries` say otherwise.

Each result is one line, `engine` or `worker` then `key=value` pairs, then the goal where it
applies. Without CUDA (and no `--device cpu`) it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import typing as tp
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from generation.config import GenerationSettings, LoopSettings
from generation.continuous_loops import ContinuousLoops
from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
from generation.loop.parallel import LoopProcesses, auto_processes
from generation.model import MEDIUM, SMALL, TINY, ModelShape, build_random_musicgen_parts
from generation.pipeline import LoopMaker, LoopOutcome, LoopSpec
from generation.sampling import RowSeededLMModel
from generation.shape import LoopShape

ENGINE_BATCHES = (1, 8, 16)
WORKER_BATCH = 8
GOAL_BATCH, GOAL_PEAK_GB = 8, 8.0
MAX_DURATION_S = 30.0
"""Released MusicGen's `max_duration`: longer requests would need audiocraft's extension path."""
GB = 1e9
"""Decimal gigabytes: stricter than the 8 GiB of an '8 GB' card."""
WARM_UP_SECONDS = 1.0


@dataclass(frozen=True)
class Measurement:
    """One timed configuration: how much audio, how long it took, how much GPU memory at most."""

    label: str
    batch: int
    audio_seconds: float
    wall_seconds: float
    peak_gpu_bytes: int | None
    """None off CUDA."""
    extra: tuple[tuple[str, str], ...] = ()
    """More `key=value` pairs for the line (the worker's candidates and rounds)."""

    @property
    def audio_per_wall_second(self) -> float:
        return self.audio_seconds / self.wall_seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to smoke-test the script")
    parser.add_argument("--tiny", action="store_true", help="the tiny test shape instead of musicgen-small's")
    parser.add_argument("--seconds", type=float, default=12.0, help="audio per engine request (default 12)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration; the median is kept")
    parser.add_argument("--bars", type=int, default=4, help="bars per loop on the worker path (default 4)")
    parser.add_argument("--bpm", type=float, default=120.0, help="tempo of the worker path's loops (default 120)")
    defaults = GenerationSettings()
    parser.add_argument("--candidates", type=int, default=defaults.candidates,
                        help=f"candidates per loop on the worker path (default {defaults.candidates}, as the worker)")
    parser.add_argument("--retries", type=int, default=defaults.retry_budget,
                        help=f"retry rounds on the worker path (default {defaults.retry_budget}, as the worker); "
                             "random weights seldom make a good loop, so most rounds run")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= MAX_DURATION_S - 1:
        parser.error(f"--seconds must be in (0, {MAX_DURATION_S - 1:g}]")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def shape_name(shape: ModelShape) -> str:
    return {TINY: "tiny", MEDIUM: "musicgen-medium"}.get(shape, "musicgen-small")


def build_engine(shape: ModelShape, device: str) -> MusicGenEngine:
    """A random MusicGen wrapped as the worker wraps a loaded one, in audiocraft's GPU precision."""
    from audiocraft.models import MusicGen

    lm, codec = build_random_musicgen_parts(shape, seed=0, device=device)
    if is_cuda(device):
        lm.transformer.half()  # what load_lm_model's dtype=float16 reaches; the rest stays float32
    else:
        torch.backends.mkldnn.enabled = False  # as MusicGenEngine.load does on CPU
    model = MusicGen(f"random-{shape_name(shape)}", codec, lm, max_duration=MAX_DURATION_S)
    RowSeededLMModel.adopt(model.lm)
    return MusicGenEngine(model, model.name)


def measure(label: str, batch: int, device: str, repeats: int, run: Callable[[], float]) -> Measurement:
    """Time `run` (which returns the seconds of audio it made) `repeats` times: median wall time, peak memory."""
    on_cuda = is_cuda(device)
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timings, audio_seconds = [], 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        audio_seconds = run()
        if on_cuda:
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    return Measurement(label, batch, audio_seconds, statistics.median(timings), peak)


def engine_run(engine: MusicGenEngine, batch: int, seconds: float) -> Callable[[], float]:
    requests = [GenerationRequest(f"dusty boom bap drums, take {i}", seconds, seed=i) for i in range(batch)]

    def run() -> float:
        engine.generate(requests, SamplingParams())
        return batch * seconds

    return run


def worker_specs(bars: int, bpm: float) -> list[LoopSpec]:
    return [LoopSpec(f"funky drum loop, take {i}", LoopShape(bpm, bars), seed=1000 * i) for i in range(WORKER_BATCH)]


def warm_up(engine: MusicGenEngine, maker: LoopMaker) -> None:
    """One short generation and one loop, so no timing includes kernel set-up or librosa's JIT compiling."""
    engine.generate([GenerationRequest("warm up", WARM_UP_SECONDS, seed=0)], SamplingParams())
    maker.make([LoopSpec("warm up", LoopShape(120.0, 1), seed=0, exact_seed=True)])


def continuously(maker: LoopMaker, specs: Sequence[LoopSpec]) -> list[LoopOutcome]:
    """One loop per spec as the worker makes them: every request joining one `ContinuousLoops` with
    the worker's slots (its batch size times the candidates per loop)."""
    loops = ContinuousLoops(maker, specs[0].params, len(specs) * maker.generation.candidates)
    for index, spec in enumerate(specs):
        loops.join(index, [spec])
    finished: dict[tp.Hashable, LoopOutcome] = {}
    while len(loops):
        finished.update((left.key, left.outcomes[0]) for left in loops.step())
    return [finished[index] for index in range(len(specs))]


def measure_worker(maker: LoopMaker, device: str, repeats: int, bars: int, bpm: float) -> Measurement:
    """The worker's path for one batch of loop requests.

    `audio_s` counts every candidate generated; `loop_s_per_s` counts only the loops delivered.
    """
    specs = worker_specs(bars, bpm)
    request_seconds = LoopShape(bpm, bars).seconds + maker.generation.extra_seconds
    outcomes: list[LoopOutcome] = []

    def run() -> float:
        outcomes[:] = continuously(maker, specs)
        return request_seconds * sum(outcome.candidates_tried for outcome in outcomes)

    measured = measure("worker", WORKER_BATCH, device, repeats, run)
    candidates = sum(outcome.candidates_tried for outcome in outcomes)
    rounds = max(outcome.candidates_tried for outcome in outcomes) // maker.generation.candidates
    delivered = sum(spec.shape.seconds for spec, o in zip(specs, outcomes) if o.ok)
    extra = (
        ("candidates", str(candidates)), ("rounds", str(rounds)), ("loops_ok", str(sum(o.ok for o in outcomes))),
        ("loop_s_per_s", f"{delivered / measured.wall_seconds:.2f}"),
    )
    return replace(measured, extra=extra)


def goal_note(measurement: Measurement, shape: ModelShape) -> str:
    """The goal beside the batch-8 figures: met or missed when measurable, else why not checked."""
    if measurement.batch != GOAL_BATCH:
        return ""
    goal = f"goal: musicgen-small at batch {GOAL_BATCH} under {GOAL_PEAK_GB:g} GB"
    if measurement.peak_gpu_bytes is None or shape != SMALL:
        return f"  {goal} (not checked: needs CUDA and the musicgen-small shape)"
    met = measurement.peak_gpu_bytes < GOAL_PEAK_GB * GB
    return f"  {goal} ({'met' if met else 'MISSED'})"


def result_line(measurement: Measurement, shape: ModelShape) -> str:
    peak = "n/a" if measurement.peak_gpu_bytes is None else f"{measurement.peak_gpu_bytes / GB:.2f}"
    pairs = (
        ("batch", str(measurement.batch)),
        *measurement.extra,
        ("audio_s", f"{measurement.audio_seconds:.1f}"),
        ("wall_s", f"{measurement.wall_seconds:.3f}"),
        ("audio_s_per_s", f"{measurement.audio_per_wall_second:.2f}"),
        ("peak_gpu_gb", peak),
    )
    return f"{measurement.label} " + " ".join(f"{key}={value}" for key, value in pairs) + goal_note(measurement, shape)


def header_line(engine: MusicGenEngine, shape: ModelShape, device: str, args: argparse.Namespace) -> str:
    on_cuda = is_cuda(device)
    where = f"{device} ({torch.cuda.get_device_name(device)})" if on_cuda else device
    precision = "float16 transformer under float16 autocast" if on_cuda else "float32"
    weights = f", weights {torch.cuda.memory_allocated(device) / GB:.2f} GB" if on_cuda else ""
    lm_parameters = sum(p.numel() for p in engine.model.lm.parameters())
    return (
        f"bench.gpu: {shape_name(shape)} shape, random weights, "
        f"{lm_parameters / 1e6:.1f}M LM parameters, {precision}, {where}{weights}; "
        f"engine requests of {args.seconds:g} s, worker loops of {args.bars} bar(s) at {args.bpm:g} BPM "
        f"({args.candidates} candidate(s), up to {args.retries} retry round(s)); "
        f"median of {args.repeats}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if is_cuda(args.device) and not torch.cuda.is_available():
        print("bench.gpu needs CUDA, and none is available here (smoke-test the script with --device cpu --tiny).")
        return 0
    shape = TINY if args.tiny else SMALL
    engine = build_engine(shape, args.device)
    generation = GenerationSettings(candidates=args.candidates, retry_budget=args.retries)
    processes = LoopProcesses(auto_processes())  # as a worker has them
    maker = LoopMaker(engine, generation, LoopSettings(), processes)
    processes.wait_ready()
    warm_up(engine, maker)
    print(header_line(engine, shape, args.device, args), flush=True)
    for batch in ENGINE_BATCHES:
        measurement = measure("engine", batch, args.device, args.repeats, engine_run(engine, batch, args.seconds))
        print(result_line(measurement, shape), flush=True)
    print(result_line(measure_worker(maker, args.device, args.repeats, args.bars, args.bpm), shape), flush=True)
    processes.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
