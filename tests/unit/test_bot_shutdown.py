"""`serve`'s graceful stop: a close that fails on SIGTERM is reported, not lost with its task."""

from __future__ import annotations

import asyncio
import os
import signal
import typing as tp

import pytest

from bot.shutdown import serve


class ClosingFailsBot:
    """Enough of a discord client for `serve`: SIGTERM arrives while it runs, its close fails at
    once (a bug in one of `LoopJamBot.close`'s steps), and its gateway ends a moment later."""

    def __init__(self) -> None:
        self.stopping = False

    async def __aenter__(self) -> ClosingFailsBot:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def start(self, token: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler `serve` installed takes it on the loop
        await asyncio.sleep(0.1)

    async def close(self) -> None:
        raise RuntimeError("saving the replies failed")


class Database:
    disposed = False

    def dispose(self) -> None:
        self.disposed = True


async def test_a_close_that_fails_after_sigterm_is_raised_and_the_database_still_closes() -> None:
    bot, database = ClosingFailsBot(), Database()
    with pytest.raises(RuntimeError, match="saving the replies failed"):
        await serve(tp.cast(tp.Any, bot), "token", tp.cast(tp.Any, database))
    assert bot.stopping and database.disposed
