"""The application command registry that `tree.sync()` writes to, global and per guild.

Bulk overwrites keep the id of a command whose name and type stay the same, like Discord, and
the schema is checked against Discord's documented limits so a schema Discord would refuse is
refused here too (400, code 50035, with the offending field path).
"""

from __future__ import annotations

import re
from typing import Any

from .errors import UNKNOWN_APPLICATION_COMMAND, DiscordAPIError, invalid_form_body, unknown
from .model import JSON
from .snowflakes import SnowflakeGenerator

CHAT_INPUT = 1
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
MAX_OPTIONS = 25
MAX_CHOICES = 25
_NAME = re.compile(r"^[-_'\w]{1,32}$")


def _check_name_and_description(item: JSON, where: str, *, chat_input: bool) -> None:
    name = item.get("name") or ""
    if not _NAME.match(name) or (chat_input and name != name.lower()):
        raise invalid_form_body(f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
    description = item.get("description") or ""
    if chat_input and not 1 <= len(description) <= 100:
        raise invalid_form_body(f"{where}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    if not chat_input and description:
        raise invalid_form_body(f"{where}.description", "APPLICATION_COMMAND_INVALID_DESCRIPTION", "Context menu commands cannot have a description")


def _check_options(options: list[JSON], where: str) -> None:
    if len(options) > MAX_OPTIONS:
        raise invalid_form_body(f"{where}.options", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_OPTIONS} or fewer in length.")
    names = [o.get("name") for o in options]
    if len(set(names)) != len(names):
        raise invalid_form_body(f"{where}.options", "APPLICATION_COMMAND_OPTIONS_DUPLICATE_NAME", "Option names must be unique")
    seen_optional = False
    for index, option in enumerate(options):
        path = f"{where}.options.{index}"
        _check_name_and_description(option, path, chat_input=True)
        if option.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
            _check_options(option.get("options") or [], path)
            continue
        if option.get("required"):
            if seen_optional:
                raise invalid_form_body(path, "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID", "Required options must be placed before non-required options")
        else:
            seen_optional = True
        choices = option.get("choices") or []
        if len(choices) > MAX_CHOICES:
            raise invalid_form_body(f"{path}.choices", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CHOICES} or fewer in length.")
        if choices and option.get("autocomplete"):
            raise invalid_form_body(f"{path}.autocomplete", "AUTOCOMPLETE_AND_CHOICES_INVALID", "Autocomplete cannot be set with choices")
        low, high = option.get("min_value"), option.get("max_value")
        if low is not None and high is not None and low > high:
            raise invalid_form_body(f"{path}.max_value", "NUMBER_TYPE_MIN", "max_value must be at least min_value")


def validate_command(command: JSON, where: str) -> None:
    """Raise 400/50035 for a command Discord would refuse."""
    chat_input = command.get("type", CHAT_INPUT) == CHAT_INPUT
    _check_name_and_description(command, where, chat_input=chat_input)
    if chat_input:
        _check_options(command.get("options") or [], where)


class CommandRegistry:
    """Registered commands: `None` holds the global ones, a guild id that guild's."""

    def __init__(self, application_id: int, snowflakes: SnowflakeGenerator) -> None:
        self._application_id = application_id
        self._snowflakes = snowflakes
        self._scopes: dict[int | None, dict[tuple[str, int], JSON]] = {None: {}}
        self.overwrites = 0

    def list(self, guild_id: int | None = None) -> list[JSON]:
        return list(self._scopes.get(guild_id, {}).values())

    def find(self, name: str, guild_id: int | None = None, command_type: int = CHAT_INPUT) -> JSON | None:
        """The command an interaction in `guild_id` would run: the guild's own first, then the global one."""
        key = (name, command_type)
        scoped = self._scopes.get(guild_id, {}) if guild_id is not None else {}
        return scoped.get(key) or self._scopes[None].get(key)

    def get(self, guild_id: int | None, command_id: int) -> JSON:
        for command in self._scopes.get(guild_id, {}).values():
            if int(command["id"]) == command_id:
                return command
        raise unknown("application command", UNKNOWN_APPLICATION_COMMAND)

    def overwrite(self, guild_id: int | None, commands: list[JSON]) -> list[JSON]:
        """`PUT .../commands`: replace the whole scope, keeping ids of commands that stay."""
        for index, command in enumerate(commands):
            validate_command(command, str(index))
        keys = [(c["name"], c.get("type", CHAT_INPUT)) for c in commands]
        if len(set(keys)) != len(keys):
            raise DiscordAPIError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "APPLICATION_COMMANDS_DUPLICATE_NAME", "message": "Application command names must be unique"}]})
        old = self._scopes.get(guild_id, {})
        self._scopes[guild_id] = {key: self._stored(guild_id, body, old.get(key)) for key, body in zip(keys, commands)}
        self.overwrites += 1
        return self.list(guild_id)

    def upsert(self, guild_id: int | None, command: JSON) -> tuple[JSON, bool]:
        """`POST .../commands`: create or replace one command; True when it is new."""
        validate_command(command, "")
        key = (command["name"], command.get("type", CHAT_INPUT))
        scope = self._scopes.setdefault(guild_id, {})
        existing = scope.get(key)
        scope[key] = self._stored(guild_id, command, existing)
        return scope[key], existing is None

    def delete(self, guild_id: int | None, command_id: int) -> None:
        command = self.get(guild_id, command_id)
        del self._scopes[guild_id][(command["name"], command.get("type", CHAT_INPUT))]

    def _stored(self, guild_id: int | None, body: JSON, existing: JSON | None) -> JSON:
        stored: dict[str, Any] = {
            "id": existing["id"] if existing else str(self._snowflakes.next()),
            "application_id": str(self._application_id),
            "version": str(self._snowflakes.next()),
            "type": body.get("type", CHAT_INPUT),
            "name": body["name"],
            "name_localizations": body.get("name_localizations"),
            "description": body.get("description", ""),
            "description_localizations": body.get("description_localizations"),
            "options": body.get("options") or [],
            "default_member_permissions": body.get("default_member_permissions"),
            "dm_permission": body.get("dm_permission", True),
            "contexts": body.get("contexts"),
            "integration_types": body.get("integration_types") or [0],
            "nsfw": body.get("nsfw", False),
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored
