"""A server's rules: what it set with /settings, else the global settings (one definition for admission and /settings show)."""

from __future__ import annotations

from generation.config import MAX_BARS, Settings
from generation.guild_rules import GuildRules
from generation.storage import GuildSettings

SETTINGS = Settings(queue={"rate_limit_jobs": 5, "rate_limit_window_s": 600, "max_queued_per_user": 2}, model={"name": "small"})


def test_a_server_without_settings_follows_the_global_ones() -> None:
    for guild in (None, GuildSettings(guild_id=1, exempt_role_ids=[], allowed_channel_ids=[], default_model="")):
        rules = GuildRules.of(SETTINGS, guild)
        assert (rules.rate_limit_jobs, rules.rate_limit_window_s, rules.max_queued_per_user) == (5, 600, 2)
        assert (rules.default_model, rules.max_bars, rules.own) == ("small", MAX_BARS, frozenset())
        assert rules.allows_channel(123) and not rules.exempts(frozenset({9}))


def test_what_a_server_set_overrides_the_global_settings_and_says_so() -> None:
    guild = GuildSettings(guild_id=1, rate_limit_jobs=0, max_bars=2, default_model="medium", exempt_role_ids=[9], allowed_channel_ids=[7])
    rules = GuildRules.of(SETTINGS, guild)
    assert (rules.rate_limit_jobs, rules.max_bars, rules.default_model, rules.max_queued_per_user) == (0, 2, "medium", 2)
    assert rules.own == {"rate_limit_jobs", "max_bars", "default_model"}
    assert rules.exempts(frozenset({9, 10})) and not rules.exempts(frozenset({10}))
    assert rules.allows_channel(7) and not rules.allows_channel(8)
