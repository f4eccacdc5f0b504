"""A TCP proxy to stand between a client and a server (Redis), to cut and mend the line in a test; free ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit, urlunsplit


def free_port() -> int:
    """A local TCP port nothing listens on (just now): for a server to start on, or a client to fail against."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TcpProxy:
    """Forwards connections on a local port to `host:port`.

    `down()` drops every connection and hangs up on new ones (the server seems gone); `up()`
    forwards again. `connections_refused` counts the hang-ups: how often clients tried meanwhile.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.forwarding = True
        self.connections_refused = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def to_url(cls, url: str) -> tuple[TcpProxy, str]:
        """A started proxy to the server of a redis:// URL, and the URL that goes through it."""
        parts = urlsplit(url)
        proxy = cls(parts.hostname or "127.0.0.1", parts.port or 6379)
        await proxy.start()
        return proxy, urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.local_port}"))

    @property
    def local_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def down(self) -> None:
        self.forwarding = False
        for writer in list(self._writers):
            writer.close()

    def up(self) -> None:
        self.forwarding = True

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self.forwarding:
            self.connections_refused += 1
            client_writer.close()
            return
        server_reader, server_writer = await asyncio.open_connection(self.host, self.port)
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
