"""Stopping gracefully on SIGTERM / SIGINT (what systemd, Docker and Ctrl-C send).

    asyncio.run(serve(bot, token, database))

On a signal the bot stops taking work: interactions get `RESTARTING` (ephemeral) and change
nothing. `LoopJamBot.close` then stops the queue (its workers end; running jobs go back to
waiting with their attempt refunded), keeps the replies still following a job for the next start
(`bot.replies.save_replies`) and closes the gateway; `serve` closes the database and returns, so
the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import typing as tp
from concurrent.futures import ThreadPoolExecutor

import discord

from generation.storage import Database

log = logging.getLogger(__name__)

RESTARTING = "LoopJam is restarting; try again in a minute."
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
BLOCKING_THREADS = 2
"""Threads for the bot's blocking work (`asyncio.to_thread`: database units, re-encoding uploads). Each
holds the GIL between its C calls; asyncio's default (cores + 4) of them stalled the event loop."""


class StoppableBot(tp.Protocol):
    stopping: bool
    """Set on the first stop signal: from then on interactions are answered with `RESTARTING`."""

    async def close(self) -> None: ...


async def serve(bot: discord.Client, token: str, database: Database) -> None:
    """Run the bot until it is closed or stopped by SIGTERM / SIGINT, then close the database.

    Its blocking work runs on `BLOCKING_THREADS` threads.
    """
    stoppable = tp.cast(StoppableBot, bot)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="loopjam-blocking"))
    stops: set[asyncio.Task[None]] = set()

    def stop(signum: int) -> None:
        if stoppable.stopping:
            return
        log.info("%s: stopping; interactions are answered that LoopJam is restarting", signal.Signals(signum).name)
        stoppable.stopping = True
        stops.add(asyncio.create_task(stoppable.close(), name="graceful-stop"))  # awaited below, done or not

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        async with bot:
            await bot.start(token)
        for task in stops:  # the rest of `close` after the gateway closed; how it failed, if it did
            await task
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        database.dispose()


async def refused_while_stopping(interaction: discord.Interaction) -> bool:
    """Answer `RESTARTING` (ephemeral) while the bot stops; True when the interaction must go no further."""
    if not getattr(interaction.client, "stopping", False):
        return False
    if interaction.type is not discord.InteractionType.autocomplete:
        await interaction.response.send_message(RESTARTING, ephemeral=True)
    return True
