"""Pointing discord.py, in this process, at the double, and running a `discord.Client` against it.

discord.py 2.7 has no option for another API host: REST URLs are built from the class attribute
`discord.http.Route.BASE` (webhook and interaction calls too, via the same `Route`), and a plain
`Client` never asks `GET /gateway/bot`; it connects to `DiscordWebSocket.DEFAULT_GATEWAY` and,
after READY, to READY's `resume_gateway_url`. So both class attributes are swapped here, and
put back afterwards, since they are process-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from .server import DiscordDouble


@contextlib.contextmanager
def discord_py_pointed_at(api_base_url: str, gateway_url: str) -> Iterator[None]:
    """Within the block, discord.py talks to `api_base_url` (".../api/v10") and `gateway_url`."""
    saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = api_base_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


@contextlib.asynccontextmanager
async def running_client(client: discord.Client, double: DiscordDouble, *, timeout: float = 10.0) -> AsyncIterator[discord.Client]:
    """Start `client` against the double, wait until it is ready, and close it on the way out.

    `Client(guild_ready_timeout=...)` decides how long discord.py waits after the last
    GUILD_CREATE before it is ready (2 s by default); tests want it short.
    """
    with discord_py_pointed_at(double.api_base_url, double.gateway_url):
        run = asyncio.create_task(client.start(double.token), name="discord-client")
        ready = asyncio.create_task(client.wait_until_ready())
        try:
            done, _ = await asyncio.wait({run, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if run in done:
                run.result()  # login or connection failure: raise it here
                raise AssertionError("the client stopped before it was ready")
            if ready not in done:
                raise AssertionError(f"the client was not ready within {timeout} s")
            yield client
        finally:
            ready.cancel()
            await client.close()
            with contextlib.suppress(asyncio.CancelledError):
                await run
