"""The double's world: users, one or more guilds with roles, channels and members.

Everything here renders to the JSON shapes Discord documents, so discord.py parses it as if it
came from Discord. Permissions are computed with Discord's algorithm (base role permissions,
then @everyone, role and member overwrites), so `app_permissions` and the member `permissions`
strings in interactions agree with what the double enforces on channel messages.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any

from .snowflakes import SnowflakeGenerator

JSON = dict[str, Any]

TEXT_CHANNEL = 0
DEFAULT_UPLOAD_LIMIT_BYTES = 10 * 1024 * 1024


class Permission(IntFlag):
    """The permission bits a slash-command bot cares about (Discord's values)."""

    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 53) - 1
EVERYONE_DEFAULT = (
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.MENTION_EVERYONE
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.SEND_MESSAGES_IN_THREADS
)
BOT_ROLE_DEFAULT = (
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
)
# Without SEND_MESSAGES Discord also drops these, whatever the roles say.
_NEEDS_SEND_MESSAGES = (
    Permission.MENTION_EVERYONE | Permission.SEND_TTS_MESSAGES | Permission.ATTACH_FILES | Permission.EMBED_LINKS
)


def iso_timestamp(moment: dt.datetime | None = None) -> str:
    """Discord's ISO 8601 timestamp with microseconds and an explicit UTC offset."""
    return (moment or dt.datetime.now(dt.UTC)).isoformat(timespec="microseconds")


def bot_token(bot_id: int) -> str:
    """A random token in Discord's shape: base64 of the bot id, a timestamp part and an HMAC part."""
    encoded_id = base64.b64encode(str(bot_id).encode()).decode().rstrip("=")
    return f"{encoded_id}.{secrets.token_urlsafe(5)[:6]}.{secrets.token_urlsafe(29)[:38]}"


@dataclass
class FakeUser:
    """A Discord user (or the bot's own user when `bot` is set)."""

    id: int
    username: str
    bot: bool = False

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": None if self.bot else self.username.title(),
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
        }


@dataclass
class FakeRole:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    name: str
    permissions: int
    position: int = 0
    managed_for_bot: int | None = None

    def payload(self) -> JSON:
        tags = {"bot_id": str(self.managed_for_bot)} if self.managed_for_bot else None
        body: JSON = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed_for_bot is not None,
            "mentionable": False,
            "flags": 0,
        }
        if tags:
            body["tags"] = tags
        return body


@dataclass
class Overwrite:
    """A channel permission overwrite for a role (`type` 0) or a member (`type` 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> JSON:
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


@dataclass
class FakeChannel:
    """A guild text channel."""

    id: int
    guild_id: int
    name: str
    position: int = 0
    overwrites: list[Overwrite] = field(default_factory=list)
    type: int = TEXT_CHANNEL

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites],
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }


@dataclass
class FakeMember:
    """A user's membership of a guild."""

    user: FakeUser
    role_ids: list[int] = field(default_factory=list)
    joined_at: str = field(default_factory=iso_timestamp)

    def payload(self, permissions: int | None = None) -> JSON:
        """The member object; `permissions` is set in interactions (the member's channel permissions)."""
        body: JSON = {
            "user": self.user.payload(),
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in self.role_ids],
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if permissions is not None:
            body["permissions"] = str(permissions)
        return body


@dataclass
class FakeGuild:
    """A guild with its roles, text channels and members."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    premium_tier: int = 0
    upload_limit_bytes: int = DEFAULT_UPLOAD_LIMIT_BYTES

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    def base_permissions(self, member: FakeMember) -> int:
        """Guild-wide permissions: @everyone plus the member's roles; owner and admins get all."""
        if member.user.id == self.owner_id:
            return ALL_PERMISSIONS
        permissions = self.everyone_role.permissions
        for role_id in member.role_ids:
            permissions |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if permissions & Permission.ADMINISTRATOR else permissions

    def channel_permissions(self, member: FakeMember, channel: FakeChannel) -> int:
        """Discord's overwrite resolution: @everyone, then roles together, then the member."""
        permissions = self.base_permissions(member)
        if permissions == ALL_PERMISSIONS:
            return permissions
        by_id = {o.id: o for o in channel.overwrites}
        if everyone := by_id.get(self.id):
            permissions = (permissions & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.role_ids:
            if overwrite := by_id.get(role_id):
                allow |= overwrite.allow
                deny |= overwrite.deny
        permissions = (permissions & ~deny) | allow
        if (own := by_id.get(member.user.id)) and own.type == 1:
            permissions = (permissions & ~own.deny) | own.allow
        if not permissions & Permission.VIEW_CHANNEL:
            return 0
        if not permissions & Permission.SEND_MESSAGES:
            permissions &= ~_NEEDS_SEND_MESSAGES
        return permissions

    def payload(self, *, bot_member: FakeMember, for_gateway: bool) -> JSON:
        """The guild object; the GUILD_CREATE variant carries channels and the bot's own member."""
        body: JSON = {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "max_members": 500000,
            "max_video_channel_users": 25,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
        }
        if for_gateway:
            channels = []
            for channel in self.channels.values():
                entry = channel.payload()
                del entry["guild_id"]  # GUILD_CREATE channels carry no guild_id
                channels.append(entry)
            body |= {
                "joined_at": bot_member.joined_at,
                "large": False,
                "unavailable": False,
                "member_count": len(self.members),
                "voice_states": [],
                "members": [bot_member.payload()],  # without GUILD_MEMBERS Discord sends only the bot
                "channels": channels,
                "threads": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "lazy": True,
                "application_id": None,
            }
        return body


@dataclass
class World:
    """Everything the double knows about: the bot, its application, users and guilds."""

    token: str
    bot: FakeUser
    owner: FakeUser
    guilds: dict[int, FakeGuild]
    users: dict[int, FakeUser]
    snowflakes: SnowflakeGenerator

    @classmethod
    def create(cls, snowflakes: SnowflakeGenerator, token: str | None = None) -> World:
        """The bot (with a random token shaped like Discord's unless one is given) and one guild.

        The guild "LoopJam Lab" has channels #loops and #general and members alice, bob, carol:
        alice has the Moderator role (Manage Server); bob and carol have no role; the bot has its
        managed "LoopJam" role with View Channel, Send Messages, Embed Links, Attach Files and
        Read Message History.
        """
        bot = FakeUser(snowflakes.next(), "LoopJam", bot=True)
        owner = FakeUser(snowflakes.next(), "owner")
        token = token or bot_token(bot.id)
        world = cls(token, bot, owner, {}, {bot.id: bot, owner.id: owner}, snowflakes)
        guild = world.add_guild("LoopJam Lab", owner=owner)
        world.add_channel(guild, "loops")
        world.add_channel(guild, "general")
        moderator = world.add_role(guild, "Moderator", Permission.MANAGE_GUILD)
        world.add_member(guild, "alice", role_ids=[moderator.id])
        world.add_member(guild, "bob")
        world.add_member(guild, "carol")
        return world

    @property
    def application_id(self) -> int:
        """Modern applications share their id with their bot user."""
        return self.bot.id

    @property
    def guild(self) -> FakeGuild:
        """The first guild, for tests that need only one."""
        return next(iter(self.guilds.values()))

    @property
    def channel(self) -> FakeChannel:
        """The first guild's first channel (#loops in the default world)."""
        return next(iter(self.guild.channels.values()))

    def add_guild(self, name: str, *, owner: FakeUser) -> FakeGuild:
        """A guild with @everyone, the bot's managed role, and the owner and bot as members."""
        guild = FakeGuild(self.snowflakes.next(), name, owner.id)
        guild.roles[guild.id] = FakeRole(guild.id, "@everyone", int(EVERYONE_DEFAULT))
        bot_role = FakeRole(self.snowflakes.next(), self.bot.username, int(BOT_ROLE_DEFAULT), 1, self.bot.id)
        guild.roles[bot_role.id] = bot_role
        guild.members[owner.id] = FakeMember(owner)
        guild.members[self.bot.id] = FakeMember(self.bot, [bot_role.id])
        self.guilds[guild.id] = guild
        return guild

    def add_channel(self, guild: FakeGuild, name: str, overwrites: list[Overwrite] | None = None) -> FakeChannel:
        channel = FakeChannel(self.snowflakes.next(), guild.id, name, len(guild.channels), overwrites or [])
        guild.channels[channel.id] = channel
        return channel

    def add_role(self, guild: FakeGuild, name: str, permissions: int) -> FakeRole:
        role = FakeRole(self.snowflakes.next(), name, int(permissions), len(guild.roles))
        guild.roles[role.id] = role
        return role

    def add_member(self, guild: FakeGuild, username: str, role_ids: list[int] | None = None) -> FakeMember:
        """A new user who is a member of `guild`."""
        user = FakeUser(self.snowflakes.next(), username)
        self.users[user.id] = user
        member = FakeMember(user, list(role_ids or []))
        guild.members[user.id] = member
        return member

    def member(self, guild: FakeGuild, username: str) -> FakeMember:
        """A member by username, e.g. `world.member(world.guild, "alice")`."""
        for member in guild.members.values():
            if member.user.username == username:
                return member
        raise KeyError(username)

    def find_channel(self, channel_id: int) -> tuple[FakeGuild, FakeChannel] | None:
        for guild in self.guilds.values():
            if channel := guild.channels.get(channel_id):
                return guild, channel
        return None

    def bot_member(self, guild: FakeGuild) -> FakeMember:
        return guild.members[self.bot.id]

    def application_payload(self) -> JSON:
        """`GET /applications/@me`: no interactions endpoint URL, so interactions come by gateway."""
        return {
            "id": str(self.application_id),
            "name": self.bot.username,
            "icon": None,
            "description": "A Discord API double",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.owner.payload(),
            "team": None,
            "flags": 0,
            "bot": self.bot.payload(),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds),
            "install_params": {"scopes": ["bot", "applications.commands"], "permissions": str(BOT_ROLE_DEFAULT)},
            "integration_types_config": {"0": {}},
            "tags": [],
        }
