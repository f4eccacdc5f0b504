"""Fixtures of the end-to-end tests: the Discord API double, one per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from discord_double import DiscordDouble


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as running:
        yield running
