"""The embedded worker process never outlives its bot, and stops quietly when asked.

A small program stands in for the bot: it starts a `ProcessWorkerPool` (the tiny model, two
loop-engine processes), gives it a long batch, and once the batch is generating either stops the
pool or waits to be killed with SIGKILL. The test watches the worker and its children from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from queue_helpers import HAS_PROC, still_running

from generation.jobs.worker import NICENESS

pytestmark = pytest.mark.skipif(not HAS_PROC, reason="finding the worker's children needs Linux's /proc")

SUPPORT_DIR = Path(__file__).resolve().parents[1] / "support"
BOT = """
import asyncio, json, os, sys
from pathlib import Path

from queue_helpers import live_children, tiny_settings

from generation.config import LoopSettings
from generation.jobs import ProcessWorkerPool
from generation.jobs.backend import WorkerLost, WorkerReady, WorkItem, WorkProgress
from generation.shape import LoopShape


def say(**fields):
    print(json.dumps(fields), flush=True)


async def main(model_dir: str, data_dir: str, then: str) -> None:
    settings = tiny_settings(Path(model_dir), Path(data_dir)).model_copy(update={"loop": LoopSettings(processes=2)})
    pool = ProcessWorkerPool(settings)
    ready, generating = asyncio.Event(), asyncio.Event()
    lost = []

    def sink(event):
        if isinstance(event, WorkerReady):
            ready.set()
        elif isinstance(event, WorkProgress) and event.stage == "generating" and event.percent > 0:
            generating.set()
        elif isinstance(event, WorkerLost):
            lost.extend(event.job_ids)

    await pool.start(sink)
    await ready.wait()
    # 32 seconds of audio: the tiny model takes longer than the test waits for anything.
    item = WorkItem("longjob1", model_dir, "dusty boom bap, 60 bpm", LoopShape(60.0, 8), 1.0, 250, 0.0, 3.0, ("longjob1",), (1,))
    pool.run(pool.next_batch_key(), [item])
    await generating.wait()
    worker = pool.worker_pids()[0]
    say(worker=worker, children=live_children(worker), helpers=live_children(os.getpid()))
    if then == "stop":
        await pool.stop()
        say(lost=lost, alive=pool.workers_alive())
    else:
        await asyncio.sleep(3600)  # until killed


asyncio.run(main(*sys.argv[1:]))
"""
START_TIMEOUT_S = 120


def start_bot(model_dir: Path, data_dir: Path, then: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The stand-in bot, once its worker is generating; and what it said then (worker, children)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT_DIR), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    bot = subprocess.Popen([sys.executable, "-c", BOT, str(model_dir), str(data_dir), then], env=env,
                           stdout=subprocess.PIPE, stderr=(data_dir / "stderr.log").open("w"), text=True)
    assert bot.stdout is not None
    line = bot.stdout.readline()
    assert line, f"the bot ended before its worker generated:\n{(data_dir / 'stderr.log').read_text()[-3000:]}"
    return bot, json.loads(line)


async def test_a_killed_bot_leaves_no_worker_or_loop_engine_process_behind(tiny_model_dir: Path, tmp_path: Path) -> None:
    bot, started = start_bot(tiny_model_dir, tmp_path, then="wait")
    ours = [started["worker"], *started["children"]]
    assert len(started["children"]) >= 2  # the two loop-engine processes (and multiprocessing's resource tracker)
    # The worker and its loop-engine processes leave the CPU to the bot first.
    yielding = min(19, os.getpriority(os.PRIO_PROCESS, bot.pid) + NICENESS)
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in ours] == [yielding] * len(ours)
    ours += started["helpers"]  # the forkserver the worker was started from, and the resource tracker
    os.kill(bot.pid, signal.SIGKILL)
    bot.wait()
    assert not await still_running(ours, within_s=10.0), "processes of the killed bot are still running"
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()


async def test_a_stopped_pool_reports_its_running_batch_and_its_worker_leaves_quietly(tiny_model_dir: Path, tmp_path: Path) -> None:
    bot, started = start_bot(tiny_model_dir, tmp_path, then="stop")
    assert bot.stdout is not None
    stopped = json.loads(bot.stdout.readline() or "null")
    assert bot.wait(60) == 0
    stderr = (tmp_path / "stderr.log").read_text()
    assert stopped == {"lost": ["longjob1"], "alive": 0}, stderr[-3000:]  # the service puts it back to waiting
    assert not await still_running([started["worker"], *started["children"]], within_s=10.0)
    assert "Traceback" not in stderr, stderr[-3000:]
