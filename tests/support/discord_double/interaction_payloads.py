"""INTERACTION_CREATE payloads as Discord sends them: slash commands, autocomplete, components, modals.

Option types come from the double's command registry (what `tree.sync()` registered, or what a
test loaded with `double.commands.overwrite(...)`), so a test writes `{"bpm": 120}` and gets a
correctly typed option; required options and choices are checked the way Discord's client does
before it ever sends an interaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .commands import SUB_COMMAND, SUB_COMMAND_GROUP, CommandRegistry
from .messages import MessageStore
from .model import JSON, FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, World
from .snowflakes import SnowflakeGenerator

APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11
BUTTON = 2


@dataclass(frozen=True)
class Upload:
    """A file a user attaches to an attachment option; the double serves its bytes."""

    filename: str
    data: bytes
    content_type: str | None = None
    declared_size: int | None = None
    """The `size` the attachment object states, when it is to differ from the bytes served."""


def interaction_token() -> str:
    """A random, URL-safe interaction token of Discord's length class."""
    return "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)


class InteractionFactory:
    """Builds interaction payloads against the double's world and command registry."""

    def __init__(self, world: World, commands: CommandRegistry, messages: MessageStore, snowflakes: SnowflakeGenerator) -> None:
        self._world = world
        self._commands = commands
        self._messages = messages
        self._snowflakes = snowflakes

    def slash(
        self,
        command: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: FakeMember | str = "alice",
        channel: FakeChannel | None = None,
        locale: str = "en-US",
    ) -> JSON:
        """`/command sub option:value`: `command` may name a subcommand ("settings view")."""
        return self._command_interaction(APPLICATION_COMMAND, command, dict(options or {}), None, user, channel, locale)

    def autocomplete(
        self,
        command: str,
        focused: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: FakeMember | str = "alice",
        channel: FakeChannel | None = None,
        locale: str = "en-US",
    ) -> JSON:
        """The user typing in option `focused`; `options` holds what is filled in so far (raw values)."""
        return self._command_interaction(AUTOCOMPLETE, command, dict(options or {}), focused, user, channel, locale)

    def component(
        self,
        message: JSON,
        custom_id: str,
        *,
        user: FakeMember | str = "alice",
        values: list[str] | None = None,
        locale: str = "en-US",
    ) -> JSON:
        """A click on the button (or a choice in the select menu, with `values`) `custom_id` of `message`."""
        component = _find_component(message.get("components") or [], custom_id)
        if component is None:
            raise ValueError(f"message {message['id']} has no component {custom_id!r}")
        guild, channel = self._locate(int(message["channel_id"]))
        data: JSON = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != BUTTON:
            data["values"] = values or []
        payload = self._base(MESSAGE_COMPONENT, data, guild, channel, self._member(guild, user), locale)
        payload["message"] = message
        return payload

    def modal_submit(
        self,
        custom_id: str,
        fields: Mapping[str, str],
        *,
        user: FakeMember | str = "alice",
        channel: FakeChannel | None = None,
        locale: str = "en-US",
    ) -> JSON:
        """A submitted modal whose text inputs (by `custom_id`) hold `fields`."""
        guild, channel = self._locate((channel or self._world.channel).id)
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in fields.items()]
        data = {"custom_id": custom_id, "components": rows}
        return self._base(MODAL_SUBMIT, data, guild, channel, self._member(guild, user), locale)

    def _command_interaction(
        self,
        interaction_type: int,
        command: str,
        options: dict[str, Any],
        focused: str | None,
        user: FakeMember | str,
        channel: FakeChannel | None,
        locale: str,
    ) -> JSON:
        guild, channel = self._locate((channel or self._world.channel).id)
        name, *path = command.split()
        schema = self._commands.find(name, guild.id)
        if schema is None:
            raise LookupError(f"/{name} is not registered on the double; sync the tree or load the schema first")
        leaf, wrap = _descend(schema, path)
        resolved: JSON = {}
        built = [self._option(spec, options.pop(spec["name"]), guild, channel, resolved) for spec in leaf.get("options") or [] if spec["name"] in options]
        if options:
            raise ValueError(f"/{command} has no option(s) {sorted(options)}")
        if focused is None:
            _check_required_and_choices(command, leaf, built)
        else:
            for option in built:
                if option["name"] == focused:
                    option["focused"] = True
        data: JSON = {"id": schema["id"], "name": name, "type": schema["type"], "options": wrap(built)}
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in schema:
            data["guild_id"] = schema["guild_id"]
        return self._base(interaction_type, data, guild, channel, self._member(guild, user), locale)

    def _option(self, spec: JSON, value: Any, guild: FakeGuild, channel: FakeChannel, resolved: JSON) -> JSON:
        option_type = spec["type"]
        if option_type == ATTACHMENT:
            attachment = self._messages.store_file(channel.id, value.filename, value.data, value.content_type)
            attachment["ephemeral"] = True
            if value.declared_size is not None:
                attachment["size"] = value.declared_size
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
            value = attachment["id"]
        elif option_type in (USER, MENTIONABLE) and isinstance(value, (FakeMember, FakeUser)):
            member = value if isinstance(value, FakeMember) else guild.members.get(value.id)
            user = member.user if member else value
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            if member:
                entry = member.payload(guild.channel_permissions(member, channel))
                del entry["user"]
                resolved.setdefault("members", {})[str(user.id)] = entry
            value = str(user.id)
        elif option_type in (ROLE, MENTIONABLE) and isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            value = str(value.id)
        elif option_type == CHANNEL:
            entry = value.payload() | {"permissions": str(guild.channel_permissions(self._world.bot_member(guild), value))}
            resolved.setdefault("channels", {})[str(value.id)] = entry
            value = str(value.id)
        return {"name": spec["name"], "type": option_type, "value": value}

    def _base(self, interaction_type: int, data: JSON, guild: FakeGuild, channel: FakeChannel, member: FakeMember, locale: str) -> JSON:
        member_permissions = guild.channel_permissions(member, channel)
        bot_permissions = guild.channel_permissions(self._world.bot_member(guild), channel)
        return {
            "id": str(self._snowflakes.next()),
            "application_id": str(self._world.application_id),
            "type": interaction_type,
            "data": data,
            "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
            "guild_id": str(guild.id),
            "channel": channel.payload() | {"permissions": str(member_permissions)},
            "channel_id": str(channel.id),
            "member": member.payload(member_permissions),
            "token": interaction_token(),
            "version": 1,
            "app_permissions": str(bot_permissions),
            "locale": locale,
            "guild_locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": guild.upload_limit_bytes,
        }

    def _locate(self, channel_id: int) -> tuple[FakeGuild, FakeChannel]:
        found = self._world.find_channel(channel_id)
        if found is None:
            raise LookupError(f"no channel {channel_id} in the double's world")
        return found

    def _member(self, guild: FakeGuild, user: FakeMember | str) -> FakeMember:
        return user if isinstance(user, FakeMember) else self._world.member(guild, user)


def _descend(schema: JSON, path: list[str]) -> tuple[JSON, Callable[[list[JSON]], list[JSON]]]:
    """The (sub)command the path names, and a function wrapping leaf options back into the nesting."""
    node = schema
    chain: list[JSON] = []
    for part in path:
        node = next((o for o in node.get("options") or [] if o["name"] == part and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)), None)
        if node is None:
            raise LookupError(f"/{schema['name']} has no subcommand path {' '.join(path)!r}")
        chain.append(node)

    def wrap(options: list[JSON]) -> list[JSON]:
        for sub in reversed(chain):
            options = [{"name": sub["name"], "type": sub["type"], "options": options}]
        return options

    return node, wrap


def _check_required_and_choices(command: str, leaf: JSON, built: list[JSON]) -> None:
    given = {o["name"]: o["value"] for o in built}
    for spec in leaf.get("options") or []:
        if spec.get("required") and spec["name"] not in given:
            raise ValueError(f"/{command} needs option {spec['name']!r}; Discord's client would not send it without")
        choices = [c["value"] for c in spec.get("choices") or []]
        if choices and spec["name"] in given and given[spec["name"]] not in choices:
            raise ValueError(f"/{command} {spec['name']}={given[spec['name']]!r} is not one of the choices {choices}")


def _find_component(components: list[JSON], custom_id: str) -> JSON | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        for child in (component.get("components") or []) + ([component["accessory"]] if "accessory" in component else []):
            if found := _find_component([child], custom_id):
                return found
    return None
