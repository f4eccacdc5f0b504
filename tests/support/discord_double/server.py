"""`DiscordDouble`: a Discord API double on 127.0.0.1 for end-to-end tests of a slash-command bot.

    async with DiscordDouble() as double:
        env = double.bot_environment()            # for a bot process: token and URLs
        ...                                       # start the bot, wait for it:
        await double.gateway.wait_connected()
        sent = await double.slash("loop", {"prompt": "dub techno", "bpm": 120})
        callback = await sent.wait_callback(timeout=3)
        assert sent.ack_latency_s < 3
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .commands import CommandRegistry
from .errors import DiscordAPIError
from .faults import Fault, FaultInjector, Hold, rate_limited_response
from .gateway import Gateway
from .interaction_payloads import InteractionFactory
from .interactions import INITIAL_RESPONSE_DEADLINE_S, InteractionTracker, SentInteraction
from .messages import MessageStore
from .model import JSON, FakeChannel, FakeMember, World
from .recording import GatewayFrame, Log, RecordedRequest, route_is
from .rest import API_PREFIX, GATEWAY_PATHS, RestApi
from .snowflakes import SnowflakeGenerator

DEFAULT_HEARTBEAT_INTERVAL_MS = 41_250


class DiscordDouble:
    """An aiohttp server speaking the REST v10 and gateway parts a slash-command bot uses.

    State a test reads or changes: `world` (guilds, channels, roles, members, the bot), `commands`
    (what the bot synced), `messages` (everything the bot posted, with uploaded bytes),
    `interactions` (what was dispatched and how the bot answered), `requests` and
    `gateway_frames` (everything the bot sent), `gateway` (connection controls).

    `response_deadline_s` is Discord's 3 s limit for the initial interaction response: a later
    callback gets 404 "Unknown interaction", as from Discord. None turns it off.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        response_deadline_s: float | None = INITIAL_RESPONSE_DEADLINE_S,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        allow_privileged_intents: bool = False,
    ) -> None:
        self.snowflakes = SnowflakeGenerator()
        self.world = World.create(self.snowflakes, token)
        self.requests: Log[RecordedRequest] = Log()
        self.gateway_frames: Log[GatewayFrame] = Log()
        self.messages = MessageStore(self.world, self.snowflakes, lambda: self.base_url)
        self.commands = CommandRegistry(self.world.application_id, self.snowflakes)
        self.interactions = InteractionTracker(response_deadline_s)
        self.faults = FaultInjector()
        self.gateway = Gateway(
            self.world,
            self.gateway_frames,
            heartbeat_interval_ms=heartbeat_interval_ms,
            allow_privileged_intents=allow_privileged_intents,
        )
        self.payloads = InteractionFactory(self.world, self.commands, self.messages, self.snowflakes)
        self._rest = RestApi(
            self.world, self.messages, self.commands, self.interactions, self.faults, self.requests, lambda: self.gateway_url
        )
        self._runner: web.AppRunner | None = None
        self._port = 0

    # Lifecycle and addresses

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application(middlewares=[self._rest.middleware], client_max_size=256 * 1024 * 1024)
        for path in GATEWAY_PATHS:
            app.router.add_get(path, self.gateway.handle)
        self._rest.add_routes(app.router)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self.gateway.resume_url = f"ws://127.0.0.1:{self._port}{GATEWAY_PATHS[1]}"

    async def stop(self) -> None:
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def token(self) -> str:
        """The bot token the double accepts (REST `Authorization: Bot ...` and gateway IDENTIFY)."""
        return self.world.token

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError("the double is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base_url(self) -> str:
        """Replaces `https://discord.com/api/v10` (discord.py's `Route.BASE`)."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """Replaces `wss://gateway.discord.gg/` (discord.py's `DiscordWebSocket.DEFAULT_GATEWAY`)."""
        return f"ws://127.0.0.1:{self._port}{GATEWAY_PATHS[0]}"

    def bot_environment(self) -> dict[str, str]:
        """Environment variables that point a `loopjam run` process at the double."""
        return {
            "DISCORD_TOKEN": self.token,
            "LOOPJAM_DISCORD__API_BASE_URL": self.api_base_url,
            "LOOPJAM_DISCORD__GATEWAY_URL": self.gateway_url,
        }

    # Interactions

    async def send_interaction(self, payload: JSON) -> SentInteraction:
        """Dispatch INTERACTION_CREATE to the bot; the handle tracks the callback and the token."""
        sent = self.interactions.add(payload)
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return sent

    async def slash(self, command: str, options: Mapping[str, Any] | None = None, **who: Any) -> SentInteraction:
        """Run `/command` (or "group sub") as `user=` (a username or `FakeMember`) in `channel=`."""
        return await self.send_interaction(self.payloads.slash(command, options, **who))

    async def autocomplete(self, command: str, focused: str, options: Mapping[str, Any] | None = None, **who: Any) -> SentInteraction:
        return await self.send_interaction(self.payloads.autocomplete(command, focused, options, **who))

    async def click(self, message: JSON | int, custom_id: str, **who: Any) -> SentInteraction:
        """Press the component `custom_id` on a message the bot posted (a payload or its id)."""
        stored = self.messages.get(message) if isinstance(message, int) else message
        return await self.send_interaction(self.payloads.component(stored, custom_id, **who))

    async def submit_modal(self, custom_id: str, fields: Mapping[str, str], **who: Any) -> SentInteraction:
        return await self.send_interaction(self.payloads.modal_submit(custom_id, fields, **who))

    def original_message(self, sent: SentInteraction) -> JSON:
        """The message the interaction's initial response created or updated, as it is now."""
        if sent.original_message_id is None:
            raise AssertionError(f"interaction {sent.id} has no original response message")
        return self.messages.get(sent.original_message_id)

    def member(self, username: str) -> FakeMember:
        """A member of the first guild by username ("alice", "bob", "carol", "owner", "LoopJam")."""
        return self.world.member(self.world.guild, username)

    @property
    def channel(self) -> FakeChannel:
        return self.world.channel

    # Requests and faults

    async def wait_for_request(
        self,
        route: str,
        predicate: Callable[[RecordedRequest], bool] | None = None,
        *,
        timeout: float = 5.0,
        since: int = 0,
        status: int | None = None,
    ) -> RecordedRequest:
        """The first request on `route` (e.g. `"PATCH /webhooks/{application_id}/{token}/messages/@original"`)
        from index `since` that satisfies `predicate` and, if given, was answered with `status`."""
        matches_route = route_is(route, status=status)
        return await self.requests.wait_for(
            lambda r: matches_route(r) and (predicate is None or predicate(r)), timeout=timeout, since=since
        )

    def unrouted_requests(self) -> list[RecordedRequest]:
        """Requests for paths the double does not serve (each answered 404)."""
        return [r for r in self.requests.entries if not r.routed]

    def rate_limit(
        self,
        route: str,
        *,
        times: int = 1,
        retry_after: float = 0.25,
        is_global: bool = False,
        when: Callable[[RecordedRequest], bool] | None = None,
    ) -> Fault:
        """Answer the next `times` requests on `route` with 429 and `retry_after` seconds."""
        bucket = f"double-{abs(hash(route)):x}"
        return self.faults.arm(Fault(route, times, lambda: rate_limited_response(retry_after, is_global=is_global, bucket=bucket), when))

    def fail(
        self,
        route: str,
        *,
        status: int,
        code: int,
        message: str,
        times: int = 1,
        when: Callable[[RecordedRequest], bool] | None = None,
    ) -> Fault:
        """Answer the next `times` requests on `route` with this Discord error (e.g. 403, 50013, "Missing Permissions")."""
        return self.faults.arm(Fault(route, times, lambda: DiscordAPIError(status, code, message).response(), when))

    def hold(self, route: str, release: asyncio.Event, *, when: Callable[[RecordedRequest], bool] | None = None) -> Hold:
        """Leave the next request on `route` (matching `when`) unanswered until `release` is set."""
        return self.faults.hold(Hold(route, release, when))
