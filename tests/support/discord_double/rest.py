"""REST v10: the routes a slash-command bot uses, with recording, auth and injected faults.

Every request under `/api/v10` (and every attachment download) is recorded before it is
handled; a request for a route the double does not implement is recorded with `routed=False` and
answered 404, so a test can assert the bot asked for nothing the double cannot answer.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .commands import CommandRegistry
from .errors import (
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    UNKNOWN_MEMBER,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    VIA_HEADER,
    DiscordAPIError,
    invalid_form_body,
    json_response,
    unknown,
)
from .faults import FaultInjector
from .interactions import InteractionTracker, SentInteraction
from .messages import EPHEMERAL, LOADING, MessageStore, interaction_metadata, validate_message_body
from .model import JSON, FakeGuild, Permission, World
from .recording import Log, RecordedFile, RecordedRequest

API_PREFIX = "/api/v10"
ATTACHMENT_ROUTE = "/attachments/{channel_id}/{attachment_id}/{filename}"
GATEWAY_PATHS = ("/gateway", "/gateway-resume")

RECORDED = web.RequestKey("recorded", RecordedRequest)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Callback types Discord accepts per interaction type (2 command, 3 component, 4 autocomplete, 5 modal).
_ALLOWED_CALLBACKS = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}
_SLASH_RESPONSE_TYPE = 20  # CHAT_INPUT_COMMAND message type


def ok(body: Any, status: int = 200) -> web.Response:
    return json_response(body, status)


def no_content() -> web.Response:
    return web.Response(status=204, headers=VIA_HEADER)


async def read_body(request: web.Request) -> tuple[Any, list[RecordedFile]]:
    """The JSON body (or multipart `payload_json`) and the uploaded files."""
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        files: list[RecordedFile] = []
        async for part in await request.multipart():
            data = await part.read()  # type: ignore[union-attr]
            name = part.name or ""  # type: ignore[union-attr]
            if name == "payload_json":
                payload = json.loads(data)
            elif part.filename is not None:  # type: ignore[union-attr]
                files.append(RecordedFile(name, part.filename, part.headers.get("Content-Type"), bytes(data)))  # type: ignore[union-attr]
        return payload, files
    raw = await request.read()
    if not raw:
        return None, []
    if request.content_type == "application/json":
        return json.loads(raw), []
    return raw.decode(errors="replace"), []


class RestApi:
    """The REST handlers over the double's world, message store, command registry and interactions."""

    def __init__(
        self,
        world: World,
        messages: MessageStore,
        commands: CommandRegistry,
        interactions: InteractionTracker,
        faults: FaultInjector,
        requests: Log[RecordedRequest],
        gateway_url: Callable[[], str],
    ) -> None:
        self._world = world
        self._messages = messages
        self._commands = commands
        self._interactions = interactions
        self._faults = faults
        self._requests = requests
        self._gateway_url = gateway_url

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register every route; fixed paths first, because aiohttp matches in registration order."""
        app = "/applications/{application_id}"
        hook = "/webhooks/{application_id}/{token}"
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/users/@me", self.current_user),
            ("GET", "/users/{user_id}", self.user),
            ("GET", "/gateway", self.gateway),
            ("GET", "/gateway/bot", self.gateway_bot),
            ("GET", "/applications/@me", self.application),
            ("GET", "/oauth2/applications/@me", self.application),
            ("GET", f"{app}/commands", self.list_commands),
            ("PUT", f"{app}/commands", self.overwrite_commands),
            ("POST", f"{app}/commands", self.upsert_command),
            ("GET", f"{app}/commands/{{command_id}}", self.get_command),
            ("DELETE", f"{app}/commands/{{command_id}}", self.delete_command),
            ("GET", f"{app}/guilds/{{guild_id}}/commands", self.list_commands),
            ("PUT", f"{app}/guilds/{{guild_id}}/commands", self.overwrite_commands),
            ("POST", f"{app}/guilds/{{guild_id}}/commands", self.upsert_command),
            ("GET", f"{app}/guilds/{{guild_id}}/commands/{{command_id}}", self.get_command),
            ("DELETE", f"{app}/guilds/{{guild_id}}/commands/{{command_id}}", self.delete_command),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback),
            ("POST", hook, self.execute_webhook),
            ("GET", f"{hook}/messages/@original", self.get_webhook_message),
            ("PATCH", f"{hook}/messages/@original", self.edit_webhook_message),
            ("DELETE", f"{hook}/messages/@original", self.delete_webhook_message),
            ("GET", f"{hook}/messages/{{message_id}}", self.get_webhook_message),
            ("PATCH", f"{hook}/messages/{{message_id}}", self.edit_webhook_message),
            ("DELETE", f"{hook}/messages/{{message_id}}", self.delete_webhook_message),
            ("GET", "/channels/{channel_id}", self.get_channel),
            ("POST", "/channels/{channel_id}/typing", self.typing),
            ("POST", "/channels/{channel_id}/messages", self.create_channel_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self.get_channel_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_channel_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_channel_message),
            ("GET", "/guilds/{guild_id}", self.get_guild),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self.get_guild_roles),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_guild_member),
        ]
        for method, path, handler in table:
            router.add_route(method, API_PREFIX + path, handler)
        router.add_get(ATTACHMENT_ROUTE, self.download_attachment)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record, wait out a matching hold, check auth, apply armed faults, and turn `DiscordAPIError` into Discord's error body."""
        if request.path in GATEWAY_PATHS:
            return await handler(request)
        recorded = await self._record(request)
        await self._faults.wait_if_held(recorded)
        try:
            response = self._faults.take(recorded)
            if response is None:
                self._check_auth(request)
                if not recorded.routed:
                    raise DiscordAPIError(404, 0, "404: Not Found")
                response = await handler(request)
        except DiscordAPIError as error:
            response = error.response()
        recorded.status = response.status
        if isinstance(response, web.Response) and response.content_type == "application/json" and response.body:
            recorded.response = json.loads(response.body)  # type: ignore[arg-type]
        await self._requests.touch()
        return response

    async def _record(self, request: web.Request) -> RecordedRequest:
        resource = request.match_info.route.resource
        routed = resource is not None
        template = resource.canonical if resource is not None else request.path
        body, files = await read_body(request)
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            route=f"{request.method} {template.removeprefix(API_PREFIX)}",
            path_params=dict(request.match_info),
            query=dict(request.query),
            headers=dict(request.headers),
            json=body,
            files=files,
            at=time.perf_counter(),
            received=dt.datetime.now(dt.UTC),
            routed=routed,
        )
        request[RECORDED] = recorded
        await self._requests.append(recorded)
        return recorded

    def _check_auth(self, request: web.Request) -> None:
        """Bot routes need `Authorization: Bot <token>`; interaction and webhook routes are token-in-URL."""
        path = request.path.removeprefix(API_PREFIX)
        if path.startswith(("/interactions/", "/webhooks/", "/attachments/")):
            return
        if request.headers.get("Authorization") != f"Bot {self._world.token}":
            raise DiscordAPIError(401, 0, "401: Unauthorized")

    # Users, gateway, application

    async def current_user(self, request: web.Request) -> web.Response:
        return ok(self._world.bot.payload() | {"verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"})

    async def user(self, request: web.Request) -> web.Response:
        user = self._world.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise unknown("User", UNKNOWN_USER)
        return ok(user.payload())

    async def gateway(self, request: web.Request) -> web.Response:
        return ok({"url": self._gateway_url()})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return ok({"url": self._gateway_url(), "shards": 1, "session_start_limit": limit})

    async def application(self, request: web.Request) -> web.Response:
        return ok(self._world.application_payload())

    # Application commands

    def _command_scope(self, request: web.Request) -> int | None:
        if int(request.match_info["application_id"]) != self._world.application_id:
            raise DiscordAPIError(404, 10002, "Unknown Application")
        guild_id = request.match_info.get("guild_id")
        if guild_id is not None and int(guild_id) not in self._world.guilds:
            raise DiscordAPIError(403, 50001, "Missing Access")
        return int(guild_id) if guild_id is not None else None

    async def list_commands(self, request: web.Request) -> web.Response:
        return ok(self._commands.list(self._command_scope(request)))

    async def overwrite_commands(self, request: web.Request) -> web.Response:
        body = request[RECORDED].json
        if not isinstance(body, list):
            raise invalid_form_body("_root", "BASE_TYPE_ARRAY", "Must be an array.")
        return ok(self._commands.overwrite(self._command_scope(request), body))

    async def upsert_command(self, request: web.Request) -> web.Response:
        command, created = self._commands.upsert(self._command_scope(request), request[RECORDED].json or {})
        return ok(command, status=201 if created else 200)

    async def get_command(self, request: web.Request) -> web.Response:
        return ok(self._commands.get(self._command_scope(request), int(request.match_info["command_id"])))

    async def delete_command(self, request: web.Request) -> web.Response:
        self._commands.delete(self._command_scope(request), int(request.match_info["command_id"]))
        return no_content()

    # Interactions and their webhook

    async def interaction_callback(self, request: web.Request) -> web.Response:
        """`POST /interactions/{id}/{token}/callback`: the initial response, within the 3 s deadline."""
        recorded: RecordedRequest = request[RECORDED]
        sent = self._interactions.for_callback(int(request.match_info["interaction_id"]), request.match_info["token"])
        body = recorded.json or {}
        callback_type, data = body.get("type"), body.get("data") or {}
        if callback_type not in _ALLOWED_CALLBACKS.get(sent.type, set()):
            raise invalid_form_body("type", "INTERACTION_CALLBACK_TYPE_INVALID", f"Callback type {callback_type} is invalid for interaction type {sent.type}")
        message: JSON | None = None
        if callback_type in (4, 5):
            ephemeral = EPHEMERAL if (data.get("flags") or 0) & EPHEMERAL else 0
            content = data if callback_type == 4 else {}
            validate_message_body(content, recorded.files, creating=callback_type == 4, upload_limit=sent.payload["attachment_size_limit"])
            message = self._messages.create(
                sent.channel_id,
                content,
                recorded.files,
                author=self._world.bot,
                message_type=_SLASH_RESPONSE_TYPE if sent.type == 2 else 0,
                flags=ephemeral | (LOADING if callback_type == 5 else 0),
                extra=self._webhook_fields(sent),
            )
            sent.original_message_id = int(message["id"])
        elif callback_type in (6, 7):
            source = self._messages.get(int(sent.payload["message"]["id"])) if "message" in sent.payload else None
            if source is None:
                raise invalid_form_body("type", "INTERACTION_CALLBACK_TYPE_INVALID", "This interaction has no message to update")
            sent.original_message_id = int(source["id"])
            if callback_type == 7:
                validate_message_body(data, recorded.files, creating=False, upload_limit=sent.payload["attachment_size_limit"])
                message = self._messages.edit(source, data, recorded.files)
        sent.record_callback(recorded)
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return no_content()
        interaction: JSON = {"id": str(sent.id), "type": sent.type}
        resource: JSON = {"type": callback_type}
        if message is not None:
            interaction |= {
                "response_message_id": message["id"],
                "response_message_loading": bool(message["flags"] & LOADING),
                "response_message_ephemeral": bool(message["flags"] & EPHEMERAL),
            }
            resource["message"] = message
        return ok({"interaction": interaction, "resource": resource})

    def _webhook_fields(self, sent: SentInteraction) -> JSON:
        app_id = str(self._world.application_id)
        return {"webhook_id": app_id, "application_id": app_id, **interaction_metadata(sent.payload)}

    def _webhook(self, request: web.Request) -> SentInteraction:
        return self._interactions.for_webhook(int(request.match_info["application_id"]), request.match_info["token"])

    def _webhook_message(self, request: web.Request, sent: SentInteraction) -> JSON:
        """`@original` or a follow-up of this interaction; 404/10008 otherwise."""
        raw_id = request.match_info.get("message_id", "@original")
        message_id = sent.original_message_id if raw_id == "@original" else int(raw_id)
        message = self._messages.messages.get(message_id or 0)
        if message is None or not (message_id == sent.original_message_id or message.get("interaction_metadata", {}).get("id") == str(sent.id)):
            raise unknown("Message", UNKNOWN_MESSAGE)
        return message

    async def execute_webhook(self, request: web.Request) -> web.Response:
        """A follow-up; the first one after a deferred response fills the "thinking" message instead."""
        recorded: RecordedRequest = request[RECORDED]
        sent = self._webhook(request)
        body = recorded.json or {}
        validate_message_body(body, recorded.files, creating=True, upload_limit=sent.payload["attachment_size_limit"])
        original = self._messages.messages.get(sent.original_message_id or 0)
        if original is not None and original["flags"] & LOADING:
            message = self._messages.edit(original, body, recorded.files)
        else:
            message = self._messages.create(
                sent.channel_id,
                body,
                recorded.files,
                author=self._world.bot,
                flags=EPHEMERAL if (body.get("flags") or 0) & EPHEMERAL else 0,
                extra=self._webhook_fields(sent),
            )
        return ok(message) if request.query.get("wait", "").lower() in ("1", "true") else no_content()

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        return ok(self._webhook_message(request, self._webhook(request)))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        recorded: RecordedRequest = request[RECORDED]
        sent = self._webhook(request)
        message = self._webhook_message(request, sent)
        body = recorded.json or {}
        validate_message_body(body, recorded.files, creating=False, upload_limit=sent.payload["attachment_size_limit"])
        return ok(self._messages.edit(message, body, recorded.files))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        sent = self._webhook(request)
        del self._messages.messages[int(self._webhook_message(request, sent)["id"])]
        return no_content()

    # Channels and messages

    def _channel(self, request: web.Request) -> tuple[FakeGuild, int]:
        channel_id = int(request.match_info["channel_id"])
        found = self._world.find_channel(channel_id)
        if found is None:
            raise unknown("Channel", UNKNOWN_CHANNEL)
        guild, channel = found
        if not guild.channel_permissions(self._world.bot_member(guild), channel) & Permission.VIEW_CHANNEL:
            raise DiscordAPIError(403, 50001, "Missing Access")
        return guild, channel_id

    def _channel_message(self, request: web.Request) -> JSON:
        _, channel_id = self._channel(request)
        message = self._messages.get(int(request.match_info["message_id"]))
        if int(message["channel_id"]) != channel_id or message["flags"] & EPHEMERAL:
            raise unknown("Message", UNKNOWN_MESSAGE)
        return message

    async def get_channel(self, request: web.Request) -> web.Response:
        guild, channel_id = self._channel(request)
        return ok(guild.channels[channel_id].payload())

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return no_content()

    async def create_channel_message(self, request: web.Request) -> web.Response:
        """A bot message in a channel: needs Send Messages, and Attach Files for uploads."""
        recorded: RecordedRequest = request[RECORDED]
        guild, channel_id = self._channel(request)
        permissions = guild.channel_permissions(self._world.bot_member(guild), guild.channels[channel_id])
        if not permissions & Permission.SEND_MESSAGES or (recorded.files and not permissions & Permission.ATTACH_FILES):
            raise DiscordAPIError(403, 50013, "Missing Permissions")
        body = recorded.json or {}
        validate_message_body(body, recorded.files, creating=True, upload_limit=guild.upload_limit_bytes)
        return ok(self._messages.create(channel_id, body, recorded.files, author=self._world.bot))

    async def get_channel_message(self, request: web.Request) -> web.Response:
        return ok(self._channel_message(request))

    async def edit_channel_message(self, request: web.Request) -> web.Response:
        recorded: RecordedRequest = request[RECORDED]
        message = self._channel_message(request)
        if message["author"]["id"] != str(self._world.bot.id):
            raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
        guild, _ = self._channel(request)
        body = recorded.json or {}
        validate_message_body(body, recorded.files, creating=False, upload_limit=guild.upload_limit_bytes)
        return ok(self._messages.edit(message, body, recorded.files))

    async def delete_channel_message(self, request: web.Request) -> web.Response:
        del self._messages.messages[int(self._channel_message(request)["id"])]
        return no_content()

    # Guilds

    def _guild(self, request: web.Request) -> FakeGuild:
        guild = self._world.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise unknown("Guild", UNKNOWN_GUILD)
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return ok(guild.payload(bot_member=self._world.bot_member(guild), for_gateway=False))

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return ok([c.payload() for c in self._guild(request).channels.values()])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        return ok([r.payload() for r in self._guild(request).roles.values()])

    async def get_guild_member(self, request: web.Request) -> web.Response:
        member = self._guild(request).members.get(int(request.match_info["user_id"]))
        if member is None:
            raise unknown("Member", UNKNOWN_MEMBER)
        return ok(member.payload())

    # Attachment downloads (Discord's CDN)

    async def download_attachment(self, request: web.Request) -> web.Response:
        stored = self._messages.files.get(int(request.match_info["attachment_id"]))
        if stored is None or stored.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=stored.data, content_type=stored.content_type)
