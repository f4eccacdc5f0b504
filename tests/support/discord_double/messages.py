"""Messages and attachments the double stores, built from what the bot sent.

Validation follows Discord's documented limits (2000 characters, 10 embeds of 6000 characters in
all, 5 action rows of 5 components, `custom_id` up to 100 characters, 10 attachments, the upload
size limit), so a bot that breaks one gets the same error it would get from Discord.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import UNKNOWN_MESSAGE, DiscordAPIError, invalid_form_body, unknown
from .model import JSON, FakeUser, World, iso_timestamp
from .recording import RecordedFile
from .snowflakes import SnowflakeGenerator

EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_COMPONENTS_V2 = 1 << 15
_SETTABLE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_ROWS = 5
MAX_CUSTOM_ID = 100
MAX_ATTACHMENTS = 10

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_FILE_FIELD = re.compile(r"files\[(\d+)\]")


@dataclass(frozen=True)
class StoredFile:
    """Bytes the double serves at `/attachments/{channel_id}/{id}/{filename}`."""

    id: int
    channel_id: int
    filename: str
    content_type: str
    data: bytes


def guess_content_type(filename: str) -> str:
    """Discord derives an attachment's type from its name; discord.py uploads everything as octet-stream."""
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def embed_size(embed: JSON) -> int:
    """The characters Discord counts towards the 6000 limit of one message's embeds."""
    size = len(embed.get("title") or "") + len(embed.get("description") or "")
    size += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    return size + sum(len(f.get("name") or "") + len(f.get("value") or "") for f in embed.get("fields") or [])


def validate_message_body(body: JSON, files: list[RecordedFile], *, creating: bool, upload_limit: int) -> None:
    """Raise Discord's error for a message body it would refuse."""
    content = body.get("content") or ""
    if len(content) > MAX_CONTENT:
        raise invalid_form_body("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length.")
    embeds = body.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        raise invalid_form_body("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    if sum(embed_size(e) for e in embeds) > MAX_EMBED_TOTAL:
        raise invalid_form_body("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
    components = body.get("components") or []
    if not (body.get("flags") or 0) & IS_COMPONENTS_V2:
        if len(components) > MAX_ROWS:
            raise invalid_form_body("components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROWS} or fewer in length.")
        for index, row in enumerate(components):
            if len(row.get("components") or []) > 5:
                raise invalid_form_body(f"components.{index}.components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
    for custom_id in _custom_ids(components):
        if len(custom_id) > MAX_CUSTOM_ID:
            raise invalid_form_body("components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CUSTOM_ID} or fewer in length.")
    if len(files) > MAX_ATTACHMENTS:
        raise invalid_form_body("attachments", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ATTACHMENTS} or fewer in length.")
    if sum(len(f.data) for f in files) > upload_limit:
        raise DiscordAPIError(413, 40005, "Request entity too large")
    if creating and not (content or embeds or files or components or body.get("sticker_ids") or body.get("poll")):
        raise DiscordAPIError(400, 50006, "Cannot send an empty message")


def _custom_ids(components: list[JSON]) -> list[str]:
    found: list[str] = []
    for component in components:
        if "custom_id" in component:
            found.append(component["custom_id"])
        found.extend(_custom_ids(component.get("components") or []))
        if accessory := component.get("accessory"):
            found.extend(_custom_ids([accessory]))
    return found


class MessageStore:
    """All messages (channel messages, interaction responses, follow-ups) and uploaded files."""

    def __init__(self, world: World, snowflakes: SnowflakeGenerator, base_url: Callable[[], str]) -> None:
        self._world = world
        self._snowflakes = snowflakes
        self._base_url = base_url
        self.messages: dict[int, JSON] = {}
        self.files: dict[int, StoredFile] = {}

    def get(self, message_id: int) -> JSON:
        try:
            return self.messages[message_id]
        except KeyError:
            raise unknown("Message", UNKNOWN_MESSAGE) from None

    def in_channel(self, channel_id: int) -> list[JSON]:
        """The channel's messages, oldest first (ephemeral ones included, flagged 64)."""
        return [m for m in self.messages.values() if int(m["channel_id"]) == channel_id]

    def store_file(self, channel_id: int, filename: str, data: bytes, content_type: str | None = None) -> JSON:
        """Keep the bytes, serve them on the double, and return the attachment object pointing there."""
        stored = StoredFile(self._snowflakes.next(), channel_id, filename, content_type or guess_content_type(filename), data)
        self.files[stored.id] = stored
        return self.attachment_payload(stored)

    def attachment_payload(self, stored: StoredFile, description: str | None = None) -> JSON:
        url = f"{self._base_url()}/attachments/{stored.channel_id}/{stored.id}/{quote(stored.filename)}"
        payload: JSON = {
            "id": str(stored.id),
            "filename": stored.filename,
            "size": len(stored.data),
            "url": url,
            "proxy_url": url,
            "content_type": stored.content_type,
        }
        if description is not None:
            payload["description"] = description
        return payload

    def create(
        self,
        channel_id: int,
        body: JSON,
        files: list[RecordedFile],
        *,
        author: FakeUser,
        message_type: int = 0,
        flags: int = 0,
        extra: JSON | None = None,
    ) -> JSON:
        """A new message in `channel_id`.

        `flags` are set by the caller (e.g. EPHEMERAL for interaction responses, which channel
        messages cannot have); `extra` adds fields such as `webhook_id` or `interaction_metadata`.
        """
        message: JSON = {
            "id": str(self._snowflakes.next()),
            "channel_id": str(channel_id),
            "author": author.payload(),
            "content": "",
            "timestamp": iso_timestamp(),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": message_type,
            "flags": flags | ((body.get("flags") or 0) & _SETTABLE_FLAGS),
            **(extra or {}),
        }
        if "nonce" in body:
            message["nonce"] = body["nonce"]
        if reference := body.get("message_reference"):
            message["message_reference"] = {"type": 0, "channel_id": str(channel_id), **reference}
            message["type"] = 19
        self._apply(message, body, files)
        self.messages[int(message["id"])] = message
        return message

    def edit(self, message: JSON, body: JSON, files: list[RecordedFile]) -> JSON:
        """Apply an edit: given fields replace old ones; `attachments` lists the ones to keep."""
        message["flags"] &= ~LOADING
        if "flags" in body and body["flags"] is not None:
            message["flags"] = (message["flags"] & ~SUPPRESS_EMBEDS) | (body["flags"] & SUPPRESS_EMBEDS)
        message["edited_timestamp"] = iso_timestamp()
        self._apply(message, body, files)
        return message

    def _apply(self, message: JSON, body: JSON, files: list[RecordedFile]) -> None:
        for key in ("content", "embeds", "components", "poll"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if "allowed_mentions" in body or "content" in body:
            self._resolve_mentions(message, body.get("allowed_mentions"))
        message["attachments"] = self._attachments_after(message, body, files)

    def _attachments_after(self, message: JSON, body: JSON, files: list[RecordedFile]) -> list[JSON]:
        """Kept attachments (listed by snowflake id) plus new uploads (listed by `files[n]` index)."""
        uploads = {int(m.group(1)): f for f in files if (m := _FILE_FIELD.fullmatch(f.field_name))}
        described = {int(a["id"]): a for a in body.get("attachments") or [] if int(a["id"]) in uploads}
        channel_id = int(message["channel_id"])
        new: list[JSON] = []
        for index, upload in sorted(uploads.items()):
            entry = described.get(index, {})
            stored = StoredFile(
                self._snowflakes.next(),
                channel_id,
                entry.get("filename") or upload.filename,
                guess_content_type(upload.filename),
                upload.data,
            )
            self.files[stored.id] = stored
            new.append(self.attachment_payload(stored, entry.get("description")))
        if "attachments" not in body:
            return message["attachments"] + new
        keep = {str(a["id"]) for a in body["attachments"] or [] if int(a["id"]) not in uploads}
        return [a for a in message["attachments"] if a["id"] in keep] + new

    def _resolve_mentions(self, message: JSON, allowed: JSON | None) -> None:
        """Fill `mention_everyone`, `mentions` and `mention_roles` as Discord does under `allowed_mentions`."""
        content = message["content"] or ""
        parse = set(allowed.get("parse", [])) if allowed is not None else {"everyone", "users", "roles"}
        allowed_users = set((allowed or {}).get("users", []))
        allowed_roles = set((allowed or {}).get("roles", []))
        message["mention_everyone"] = "everyone" in parse and ("@everyone" in content or "@here" in content)
        user_ids = [u for u in dict.fromkeys(_USER_MENTION.findall(content)) if "users" in parse or u in allowed_users]
        message["mentions"] = [self._world.users[int(u)].payload() for u in user_ids if int(u) in self._world.users]
        message["mention_roles"] = [
            r for r in dict.fromkeys(_ROLE_MENTION.findall(content)) if "roles" in parse or r in allowed_roles
        ]


def interaction_metadata(interaction: JSON) -> dict[str, Any]:
    """The `interaction_metadata` (and legacy `interaction`) fields of a message answering `interaction`."""
    user = (interaction.get("member") or {}).get("user") or interaction.get("user")
    metadata: JSON = {
        "id": interaction["id"],
        "type": interaction["type"],
        "user": user,
        "authorizing_integration_owners": interaction.get("authorizing_integration_owners", {}),
    }
    if interaction["type"] == 2:
        metadata |= {"name": interaction["data"]["name"], "command_type": interaction["data"].get("type", 1)}
        # The legacy field has a command name, so Discord only sends it for application commands.
        legacy = {"id": interaction["id"], "type": interaction["type"], "user": user, "name": interaction["data"]["name"]}
        return {"interaction_metadata": metadata, "interaction": legacy}
    if interaction["type"] == 3 and "message" in interaction:
        metadata["interacted_message_id"] = interaction["message"]["id"]
    return {"interaction_metadata": metadata}
