"""The gateway websocket: HELLO, IDENTIFY/READY, GUILD_CREATE, heartbeats, RESUME and dispatches.

A client connects to `/gateway` (the default gateway URL the double advertises) and resumes on
`/gateway-resume` (READY's `resume_gateway_url`), so a test can see that a client resumed where
Discord told it to. `compress=zlib-stream` in the query gets one zlib stream per connection,
flushed with Z_SYNC_FLUSH after every payload, like Discord; without it (or for compressions the
double does not speak) payloads go as text frames, which discord.py also reads.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .model import JSON, World
from .recording import GatewayFrame, Log

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, VOICE_STATE_UPDATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_GUILD_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT = 1 << 1, 1 << 8, 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT

CLOSE_UNKNOWN_OPCODE, CLOSE_DECODE_ERROR, CLOSE_AUTHENTICATION_FAILED = 4001, 4002, 4004
CLOSE_ALREADY_AUTHENTICATED, CLOSE_DISALLOWED_INTENTS = 4005, 4014

_TRACE = ['["gateway-double",{"micros":0}]']


class GatewayConnection:
    """One websocket; sends are serialised because a zlib stream must be written in order."""

    def __init__(self, ws: web.WebSocketResponse, path: str, compression: str | None) -> None:
        self.ws = ws
        self.path = path
        self.zlib_stream = compression == "zlib-stream"
        self._compressor = zlib.compressobj() if self.zlib_stream else None
        self._lock = asyncio.Lock()

    async def send(self, payload: JSON) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        async with self._lock:
            if self._compressor is None:
                await self.ws.send_str(text)
            else:
                await self.ws.send_bytes(self._compressor.compress(text.encode()) + self._compressor.flush(zlib.Z_SYNC_FLUSH))


@dataclass
class GatewaySession:
    """A gateway session: survives reconnects (RESUME replays what the client missed)."""

    id: str
    identify: JSON
    sequence: int = 0
    dispatched: list[JSON] = field(default_factory=list)
    connection: GatewayConnection | None = None

    @property
    def intents(self) -> int:
        return int(self.identify.get("intents", 0))


class Gateway:
    """Serves the gateway and lets tests dispatch events to the connected bot."""

    def __init__(self, world: World, frames: Log[GatewayFrame], *, heartbeat_interval_ms: int, allow_privileged_intents: bool) -> None:
        self._world = world
        self._frames = frames
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._allow_privileged_intents = allow_privileged_intents
        self.resume_url = ""
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None
        self.identify_count = 0
        self.resume_count = 0
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler for `/gateway` and `/gateway-resume`."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if request.query.get("encoding", "json") != "json":
            await ws.close(code=CLOSE_DECODE_ERROR, message=b"only encoding=json is supported")
            return ws
        connection = GatewayConnection(ws, request.path, request.query.get("compress"))
        await connection.send({"op": HELLO, "d": {"heartbeat_interval": self._heartbeat_interval_ms, "_trace": _TRACE}, "s": None, "t": None})
        session: GatewaySession | None = None
        try:
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    payload = json.loads(message.data)
                except ValueError:
                    await ws.close(code=CLOSE_DECODE_ERROR, message=b"Error while decoding payload.")
                    break
                await self._frames.append(GatewayFrame(payload.get("op"), payload.get("d"), time.perf_counter(), request.path))
                session = await self._on_payload(connection, session, payload) or session
        finally:
            if session is not None and session.connection is connection:
                session.connection = None
                await self._notify()
        return ws

    async def _on_payload(self, connection: GatewayConnection, session: GatewaySession | None, payload: JSON) -> GatewaySession | None:
        op, data = payload.get("op"), payload.get("d")
        if op == HEARTBEAT:
            await connection.send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            if session is not None:
                await connection.ws.close(code=CLOSE_ALREADY_AUTHENTICATED, message=b"You sent more than one identify payload.")
                return None
            return await self._identify(connection, data)
        elif op == RESUME:
            return await self._resume(connection, data)
        elif op == REQUEST_GUILD_MEMBERS and session is not None:
            await self._send_member_chunk(session, data)
        elif op not in (PRESENCE_UPDATE, VOICE_STATE_UPDATE):
            await connection.ws.close(code=CLOSE_UNKNOWN_OPCODE, message=b"Unknown opcode.")
        return None

    async def _identify(self, connection: GatewayConnection, data: JSON) -> GatewaySession | None:
        if data.get("token") != self._world.token:
            await connection.ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        if int(data.get("intents", 0)) & PRIVILEGED_INTENTS and not self._allow_privileged_intents:
            await connection.ws.close(code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
            return None
        session = GatewaySession(secrets.token_hex(16), data, connection=connection)
        if self.current is not None and self.current.connection is not None:
            await self.current.connection.ws.close(code=4000, message=b"Replaced by a new session.")
        self.sessions[session.id] = session
        self.current = session
        self.identify_count += 1
        await self._send_dispatch(session, "READY", self._ready_payload(session))
        for guild in self._world.guilds.values():
            await self._send_dispatch(session, "GUILD_CREATE", guild.payload(bot_member=self._world.bot_member(guild), for_gateway=True))
        await self._notify()
        return session

    async def _resume(self, connection: GatewayConnection, data: JSON) -> GatewaySession | None:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None or data.get("token") != self._world.token:
            await connection.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        if session.connection is not None and session.connection is not connection:
            await session.connection.ws.close(code=4000, message=b"Session resumed elsewhere.")
        session.connection = connection
        self.current = session
        self.resume_count += 1
        last_seen = data.get("seq") or 0
        for frame in session.dispatched:
            if frame["s"] > last_seen:
                await connection.send(frame)
        await self._send_dispatch(session, "RESUMED", {"_trace": _TRACE})
        await self._notify()
        return session

    async def _send_member_chunk(self, session: GatewaySession, data: JSON) -> None:
        guild = self._world.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        wanted = {int(u) for u in data.get("user_ids") or []}
        members = [m for m in guild.members.values() if not wanted or m.user.id in wanted]
        query = (data.get("query") or "").lower()
        members = [m for m in members if m.user.username.lower().startswith(query)][: data.get("limit") or None]
        chunk = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(u) for u in wanted - {m.user.id for m in members}],
        }
        if "nonce" in data:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _ready_payload(self, session: GatewaySession) -> JSON:
        ready: JSON = {
            "v": 10,
            "user": self._world.bot.payload() | {"verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g), "unavailable": True} for g in self._world.guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_url,
            "application": {"id": str(self._world.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["rotterdam"],
            "user_settings": {},
            "auth": {},
            "_trace": _TRACE,
        }
        if "shard" in session.identify:
            ready["shard"] = session.identify["shard"]
        return ready

    async def _send_dispatch(self, session: GatewaySession, event: str, data: Any) -> int:
        """Number the event, keep it for RESUME, and send it if the session is connected."""
        session.sequence += 1
        frame = {"op": DISPATCH, "s": session.sequence, "t": event, "d": data}
        session.dispatched.append(frame)
        if session.connection is not None and not session.connection.ws.closed:
            await session.connection.send(frame)
        return session.sequence

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _require_session(self) -> GatewaySession:
        if self.current is None:
            raise RuntimeError("no bot has identified on the double's gateway yet")
        return self.current

    async def dispatch(self, event: str, data: Any) -> int:
        """Send a DISPATCH to the bot's session (kept for RESUME if it is disconnected); the sequence number."""
        return await self._send_dispatch(self._require_session(), event, data)

    async def wait_connected(self, *, timeout: float = 10.0, min_identifies: int = 1) -> GatewaySession:
        """The live session once at least `min_identifies` IDENTIFYs happened (2 after a bot restart)."""

        def live() -> bool:
            return self.identify_count >= min_identifies and self.current is not None and self.current.connection is not None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(live), timeout)
            except TimeoutError:
                raise AssertionError(f"no bot connected to the gateway within {timeout} s (identifies: {self.identify_count})") from None
        return self._require_session()

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: the client closes and RESUMEs on `resume_gateway_url`."""
        connection = self._require_session().connection
        if connection is not None:
            await connection.send({"op": RECONNECT, "d": None, "s": None, "t": None})

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; with `resumable=False` the client must IDENTIFY anew."""
        session = self._require_session()
        if not resumable:
            self.sessions.pop(session.id, None)
        if session.connection is not None:
            await session.connection.send({"op": INVALID_SESSION, "d": resumable, "s": None, "t": None})

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the bot's websocket from the server side, as a network blip or a Discord restart would."""
        connection = self._require_session().connection
        if connection is not None:
            await connection.ws.close(code=code, message=b"Dropped by the test.")

    async def close(self) -> None:
        for session in self.sessions.values():
            if session.connection is not None:
                await session.connection.ws.close(code=1001, message=b"Going away.")
