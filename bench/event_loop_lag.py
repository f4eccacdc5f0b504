"""The bot's longest event-loop stall while it posts results during a burst of 200 interactions.

    .venv/bin/python -m bench.event_loop_lag [--interactions 200] [--users 50] [--long 3]

Starts the real `loopjam run` process (embedded mode, tiny random model, metrics on) against the
Discord API double. Then, at once: 200 /loop interactions from 50 users, and `--long` finished
requests of four 48-second stereo loops put in the bot's outbox, as a worker leaves them. Four
loops share the guild's 10 MiB upload limit, so posting each of them re-encodes it (to FLAC, then
OGG): the CPU work that must stay off the event loop.

Prints the longest stall of the bot's event loop from the start of the burst until every result
is posted (goal < 100 ms), as the bot measures it itself: a task that sleeps 10 ms and records how
late it wakes, exported as `loopjam_event_loop_lag_max_seconds` (the worst since the last scrape).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf
from discord_double import DiscordDouble, RecordedRequest
from tcp_proxy import free_port

from bench.burst import bot_environment, burst_options

FOLLOW_UP = "POST /webhooks/{application_id}/{token}"
CHANNEL_MESSAGE = "POST /channels/{channel_id}/messages"
EPHEMERAL = 64
LAG_METRIC = "loopjam_event_loop_lag_max_seconds"
LONG_LOOP_SECONDS, LONG_LOOP_RATE, VARIATIONS = 48.0, 32000, 4


async def worst_lag_ms(session: aiohttp.ClientSession, port: int) -> float:
    """The bot's longest event-loop stall since the previous scrape, in ms."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    (line,) = [line for line in text.splitlines() if line.startswith(LAG_METRIC + " ")]
    return float(line.split()[1]) * 1000


def write_long_loops(data_dir: Path, count: int) -> list[str]:
    """`count` 48 s stereo WAVs (music-like: a chord with noise), as paths relative to the data directory."""
    rng = np.random.default_rng(0)
    t = np.arange(int(LONG_LOOP_SECONDS * LONG_LOOP_RATE)) / LONG_LOOP_RATE
    paths = []
    for index in range(count):
        chord = sum(np.sin(2 * np.pi * f * t) for f in (110.0 * (index + 1), 138.6, 164.8)) / 6
        audio = np.stack([chord + 0.2 * rng.standard_normal(t.size), chord + 0.2 * rng.standard_normal(t.size)], axis=1)
        relative = f"long/{index}.wav"
        (data_dir / "long").mkdir(exist_ok=True)
        sf.write(data_dir / relative, audio.astype(np.float32), LONG_LOOP_RATE, subtype="PCM_16")
        paths.append(relative)
    return paths


def finish_long_requests(data_dir: Path, requests: int, wavs: list[str], channel_id: int, guild_id: int, user_id: int) -> list[str]:
    """Put `requests` finished four-loop requests in the bot's outbox, as its worker would; their job ids."""
    from generation.config import Settings
    from generation.shape import LoopShape
    from generation.storage import (
        Database,
        LoopReportFields,
        NewGeneration,
        create_request_groups,
        mark_done,
        mark_running,
    )

    database = Database.from_settings(Settings(storage={"data_dir": data_dir}).storage)
    request = NewGeneration(
        user_id=user_id, guild_id=guild_id, channel_id=channel_id, prompt="long ambient pad", prompt_sent="long ambient pad",
        shape=LoopShape(40.0, 8), temperature=1.0, top_k=250, top_p=0.0, cfg_coef=3.0, seed=1, model="bench",
    )
    try:
        with database.session() as session:
            groups = create_request_groups(session, [[request] * VARIATIONS for _ in range(requests)])
            for group in groups:
                for row, wav in zip(group, wavs):
                    mark_running(session, row.short_id, "bench")
                    mark_done(session, row.short_id, audio_path=wav, report=LoopReportFields(verdict="good"))
        return [group[0].short_id for group in groups]
    finally:
        database.dispose()


def job_id_of(request: RecordedRequest) -> str:
    return request.json["embeds"][0]["footer"]["text"].split()[1]


def reencoded(request: RecordedRequest) -> bool:
    return any(field["name"] == "Format" for field in request.json["embeds"][0].get("fields", []))


async def run(interactions: int, users: int, long_requests: int, settle_s: float) -> None:
    from generation.model import TINY, write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        model = write_random_checkpoint(data / "tiny", TINY)
        wavs = write_long_loops(data, VARIATIONS)
        metrics_port = free_port()
        async with DiscordDouble() as double, aiohttp.ClientSession() as http:
            members = [double.world.add_member(double.world.guild, f"user{i}") for i in range(users)]
            env = bot_environment(double, model, tmp, LOOPJAM_DISCORD__REDELIVERY_INTERVAL_S="1",
                                  LOOPJAM_METRICS__ENABLED="true", LOOPJAM_METRICS__PORT=str(metrics_port))
            bot = await asyncio.create_subprocess_exec(sys.executable, "-m", "generation", "run", env=env, cwd=tmp)
            try:
                await double.gateway.wait_connected(timeout=90)
                await double.wait_for_request("PUT /applications/{application_id}/commands", timeout=90)
                startup_ms = await worst_lag_ms(http, metrics_port)
                started = time.perf_counter()
                seeded = asyncio.to_thread(
                    finish_long_requests, data, long_requests, wavs, double.channel.id, double.world.guild.id, members[0].user.id
                )
                long_ids, *sent = await asyncio.gather(seeded, *(
                    double.slash("loop", {"prompt": f"groove {i}", "bpm": 120, "bars": 1}, user=members[i % users])
                    for i in range(interactions)
                ))
                callbacks = await asyncio.gather(*(s.wait_callback(timeout=10) for s in sent))
                accepted = [s for s, c in zip(sent, callbacks) if not c.json["data"].get("flags", 0) & EPHEMERAL]
                long_posts = await asyncio.gather(*(
                    double.wait_for_request(CHANNEL_MESSAGE, lambda r, j=job_id: bool(r.files) and job_id_of(r) == j, timeout=settle_s)
                    for job_id in long_ids
                ), return_exceptions=True)
                follow_ups = await asyncio.gather(*(
                    double.wait_for_request(FOLLOW_UP, lambda r, t=s.token: r.path_params.get("token") == t and bool(r.files),
                                            timeout=settle_s)
                    for s in accepted
                ), return_exceptions=True)
                burst_ms = await worst_lag_ms(http, metrics_port)
                posted = [p for p in long_posts if isinstance(p, RecordedRequest)]
                print(f"interactions: {interactions} from {users} users; accepted {len(accepted)}, "
                      f"{sum(isinstance(f, RecordedRequest) for f in follow_ups)} posted their loop within {settle_s:g} s")
                print(f"long results: {long_requests} x {VARIATIONS} loops of {LONG_LOOP_SECONDS:g} s stereo; {len(posted)} posted, "
                      f"{sum(reencoded(p) for p in posted)} of them re-encoded to fit the upload limit")
                print(f"measured over {time.perf_counter() - started:.1f} s from the start of the burst")
                print(f"event-loop lag: max {burst_ms:.1f} ms during the burst and its posts (goal < 100 ms); "
                      f"max {startup_ms:.1f} ms while starting")
            finally:
                bot.terminate()
                await bot.wait()


def main() -> None:
    parser = burst_options(__doc__.splitlines()[0])
    parser.add_argument("--long", type=int, default=3, help="finished four-loop requests that must be re-encoded")
    parser.add_argument("--settle", type=float, default=600.0, help="seconds to wait for each result to be posted")
    args = parser.parse_args()
    asyncio.run(run(args.interactions, args.users, args.long, args.settle))


if __name__ == "__main__":
    main()
