"""The rules a server's requests follow: what it set with `/settings`, else the global settings.

The one place a guild's overrides meet their defaults: the queue's admission applies these rules
and `/settings show` displays them. Importable without torch and without discord.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .config import MAX_BARS, Settings

if TYPE_CHECKING:
    from .storage import GuildSettings

T = TypeVar("T")
OVERRIDABLE = ("rate_limit_jobs", "rate_limit_window_s", "max_queued_per_user", "default_model", "max_bars")
"""The rules that have a global default, which a server may override."""


@dataclass(frozen=True)
class GuildRules:
    rate_limit_jobs: int
    rate_limit_window_s: float
    max_queued_per_user: int
    default_model: str
    max_bars: int
    allowed_channel_ids: tuple[int, ...]
    """Empty: every channel."""
    exempt_role_ids: frozenset[int]
    own: frozenset[str]
    """The names of the rules the server set itself; the others are the global defaults."""

    @classmethod
    def of(cls, settings: Settings, guild: GuildSettings | None) -> GuildRules:
        """The rules of `guild` (None: a guild that never used `/settings`, or no guild)."""
        overrides = {name: getattr(guild, name) for name in OVERRIDABLE} if guild is not None else {}
        own = frozenset(name for name, value in overrides.items() if value not in (None, ""))  # "": no model chosen

        def rule(name: str, default: T) -> T:
            return overrides[name] if name in own else default

        queue = settings.queue
        return cls(
            rate_limit_jobs=rule("rate_limit_jobs", queue.rate_limit_jobs),
            rate_limit_window_s=rule("rate_limit_window_s", queue.rate_limit_window_s),
            max_queued_per_user=rule("max_queued_per_user", queue.max_queued_per_user),
            default_model=rule("default_model", settings.model.name),
            max_bars=rule("max_bars", MAX_BARS),
            allowed_channel_ids=tuple(guild.allowed_channel_ids or ()) if guild is not None else (),
            exempt_role_ids=frozenset(guild.exempt_role_ids or ()) if guild is not None else frozenset(),
            own=own,
        )

    def exempts(self, role_ids: frozenset[int]) -> bool:
        """Whether a member with these roles skips the per-user limits."""
        return bool(role_ids & self.exempt_role_ids)

    def allows_channel(self, channel_id: int | None) -> bool:
        return not self.allowed_channel_ids or channel_id in self.allowed_channel_ids

    def channels_text(self) -> str:
        """The channels loops are made in, as Discord mentions: "<#1>, <#2>"."""
        return ", ".join(f"<#{channel}>" for channel in self.allowed_channel_ids)
