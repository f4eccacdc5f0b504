"""Dynamic batching through the real queue and worker process: 8 concurrent requests, B=8 vs B=1.

    .venv/bin/python -m bench.batching [--requests 8] [--bars 1] [--bpm 120] [--rounds 5]

Uses the tiny random MusicGen on CPU (written to a temporary directory), short loops, one
candidate and no retries. Each run starts its own worker, waits for one warm-up job, then times
`--rounds` rounds of requests, each from submission until its last loop is done; the ratio is of
the medians.

Then it splits a loop's cost, in this process: the model (one `generate` call of 8 rows against 8
calls of 1; on CPU the codec's decoding is compute-bound and hardly batches) and what is done per
loop: the loop engine with the file and its waveform one loop at a time, and the loop engine for a
whole batch in the worker's loop-engine processes (`[loop] processes`, one per core by default).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from pathlib import Path

from generation.config import GenerationSettings, ModelSettings, QueueSettings, Settings, StorageSettings
from generation.jobs import FINAL_EVENT_TYPES, JobDone, JobRequest, QueueService
from generation.loop.parallel import auto_processes
from generation.shape import LoopShape
from generation.storage import Database

EXTRA_SECONDS = 0.5
"""Generated past each loop's end: the same in the queue runs and in the cost split."""


async def wait_done(service: QueueService, job_ids: list[str]) -> None:
    async def one(job_id: str, events: asyncio.Queue) -> None:
        while not isinstance(event := await events.get(), FINAL_EVENT_TYPES):
            pass
        assert isinstance(event, JobDone), event

    await asyncio.gather(*(one(job_id, service.subscribe(job_id)) for job_id in job_ids))


async def run(model_dir: Path, data_dir: Path, batch_size: int, args: argparse.Namespace) -> list[float]:
    """Seconds for `args.requests` concurrent requests with batches of up to `batch_size`, each round."""
    settings = Settings(
        model=ModelSettings(name=str(model_dir), allowed=[str(model_dir)], device="cpu"),
        generation=GenerationSettings(extra_seconds=EXTRA_SECONDS, candidates=1, retry_budget=0),
        queue=QueueSettings(batch_size=batch_size, batch_wait_ms=300, max_queue=100),
        storage=StorageSettings(data_dir=data_dir),
    )
    database = Database.from_settings(settings.storage)
    database.upgrade()
    service = QueueService(settings, database)
    await service.start()
    try:
        def request(user: int) -> JobRequest:
            return JobRequest(user_id=user, prompt="funky drums", shape=LoopShape(args.bpm, args.bars), seed=user)

        warm_up = await service.submit(request(0))
        await wait_done(service, [warm_up.job_id])
        rounds = []
        for first_user in range(1, args.rounds * args.requests, args.requests):  # new users: no rate limit
            started = time.perf_counter()
            users = range(first_user, first_user + args.requests)
            accepted = await asyncio.gather(*(service.submit(request(user)) for user in users))
            await wait_done(service, [a.job_id for a in accepted])
            rounds.append(time.perf_counter() - started)
        return rounds
    finally:
        await service.stop()
        database.dispose()


def split_costs(model_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per loop: the model at B=1 and at B=requests, the rest (loop engine, files) one at a
    time, and the loop engine of a batch in loop-engine processes."""
    from generation.audio_io import write_audio
    from generation.engine import GenerationRequest, MusicGenEngine, SamplingParams
    from generation.loop import make_loop
    from generation.loop.parallel import LoopProcesses, auto_processes
    from generation.loop.waveform import waveform_png
    from generation.prompts import build_prompt

    processes = LoopProcesses(auto_processes())
    engine = MusicGenEngine.load(str(model_dir), "cpu")
    processes.wait_ready()
    seconds = LoopShape(args.bpm, args.bars).seconds + EXTRA_SECONDS
    requests = [GenerationRequest(build_prompt("funky drums", LoopShape(args.bpm, args.bars)).text, seconds, seed) for seed in range(args.requests)]
    engine.generate(requests[:1], SamplingParams())  # warm-up
    costs = {}
    started = time.perf_counter()
    for request in requests:
        engine.generate([request], SamplingParams())
    costs["model alone"] = (time.perf_counter() - started) / len(requests)
    started = time.perf_counter()
    clips = engine.generate(requests, SamplingParams())
    costs["model batched"] = (time.perf_counter() - started) / len(requests)
    make_loop(clips[0], engine.sample_rate, LoopShape(args.bpm, args.bars))  # numba's first call compiles
    started = time.perf_counter()
    for index, clip in enumerate(clips):
        loop = make_loop(clip, engine.sample_rate, LoopShape(args.bpm, args.bars))
        write_audio(out_dir / f"{index}.wav", loop.audio, loop.sample_rate, "wav")
        waveform_png(loop.audio, LoopShape(args.bpm, args.bars))
    costs["rest alone"] = (time.perf_counter() - started) / len(clips)
    started = time.perf_counter()
    processes.run_all(functools.partial(make_loop, clip, engine.sample_rate, LoopShape(args.bpm, args.bars)) for clip in clips)
    costs["loop engine batched"] = (time.perf_counter() - started) / len(clips)
    processes.close()
    return costs


async def main(args: argparse.Namespace) -> None:
    from generation.model import TINY, write_random_checkpoint  # the bench, not the service, needs torch

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "tiny", TINY, seed=0)
        seconds = {b: await run(model_dir, Path(tmp) / f"data-b{b}", b, args) for b in (args.requests, 1)}
        costs = split_costs(model_dir, Path(tmp), args)
    loop_s = LoopShape(args.bpm, args.bars).seconds
    print(f"{args.requests} concurrent requests, {args.bars} bar(s) at {args.bpm:g} BPM ({loop_s:g} s loops), tiny model, CPU")
    median = {b: statistics.median(rounds) for b, rounds in seconds.items()}
    for b, rounds in seconds.items():
        print(f"B={b}: {median[b]:.2f} s (median of {len(rounds)} rounds, {min(rounds):.2f}-{max(rounds):.2f}), "
              f"{args.requests / median[b]:.2f} loops/s")
    print(f"batched / one at a time throughput: {median[1] / median[args.requests]:.2f}x")
    alone, batched = costs["model alone"], costs["model batched"]
    print(f"per loop: model {alone * 1000:.0f} ms alone, {batched * 1000:.0f} ms in a batch of {args.requests} "
          f"({alone / batched:.2f}x); loop engine, file and waveform {costs['rest alone'] * 1000:.0f} ms one at a time; "
          f"loop engine {costs['loop engine batched'] * 1000:.0f} ms a loop for a batch in {auto_processes()} processes")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--bars", type=int, default=1)
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
