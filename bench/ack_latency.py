"""200 concurrent /loop interactions from 50 users through the Discord API double.

    .venv/bin/python -m bench.ack_latency [--interactions 200] [--users 50]

Starts the real `loopjam run` process (embedded mode, tiny random model) against the double and
prints: p50/p99 time from INTERACTION_CREATE to the interaction callback (goal p99 < 250 ms), how
many requests were refused and why, whether every accepted job posted its loop, and the bot
process's peak memory (goal < 200 MB; the bot process must not load torch, its worker does).
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

from discord_double import DiscordDouble

from bench.burst import bot_environment, burst_options

FOLLOW_UP = "POST /webhooks/{application_id}/{token}"
EPHEMERAL = 64


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loads_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def refusal_reason(text: str) -> str:
    for word, reason in (("try again", "rate limited"), ("waiting", "too many queued"), ("full", "queue full")):
        if word in text:
            return reason
    return text[:60]


async def run(interactions: int, users: int) -> None:
    from generation.model import TINY, write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = write_random_checkpoint(Path(tmp) / "tiny", TINY)
        async with DiscordDouble() as double:
            members = [double.world.add_member(double.world.guild, f"user{i}") for i in range(users)]
            env = bot_environment(double, model, tmp)
            bot = await asyncio.create_subprocess_exec(sys.executable, "-m", "generation", "run", env=env, cwd=tmp)
            try:
                await double.gateway.wait_connected(timeout=90)
                await double.wait_for_request("PUT /applications/{application_id}/commands", timeout=90)
                sent = await asyncio.gather(*(
                    double.slash("loop", {"prompt": f"groove {i}", "bpm": 120, "bars": 1}, user=members[i % users])
                    for i in range(interactions)
                ))
                callbacks = await asyncio.gather(*(s.wait_callback(timeout=10) for s in sent))
                latencies = sorted(s.ack_latency_s * 1000 for s in sent)
                accepted = [s for s, c in zip(sent, callbacks) if not c.json["data"].get("flags", 0) & EPHEMERAL]
                refused = collections.Counter(
                    refusal_reason(c.json["data"].get("content", "")) for c in callbacks if c.json["data"].get("flags", 0) & EPHEMERAL
                )
                started = time.perf_counter()
                await asyncio.gather(*(
                    double.wait_for_request(FOLLOW_UP, lambda r, t=s.token: r.path_params.get("token") == t and bool(r.files), timeout=600)
                    for s in accepted
                ))
                print(f"interactions: {interactions} from {users} users")
                print(f"ack latency: p50 {statistics.median(latencies):.1f} ms, "
                      f"p99 {latencies[int(0.99 * (len(latencies) - 1))]:.1f} ms (goal p99 < 250 ms)")
                print(f"accepted: {len(accepted)}; refused: {dict(refused)}")
                print(f"every accepted job posted its loop: yes ({time.perf_counter() - started:.1f} s after the last ack)")
                print(f"bot process peak memory: {peak_rss_mb(bot.pid):.0f} MB (goal < 200 MB); "
                      f"torch loaded in the bot process: {loads_torch(bot.pid)}")
            finally:
                bot.terminate()
                await bot.wait()


def main() -> None:
    args = burst_options(__doc__.splitlines()[0]).parse_args()
    asyncio.run(run(args.interactions, args.users))


if __name__ == "__main__":
    main()
