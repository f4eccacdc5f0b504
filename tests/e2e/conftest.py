"""Fixtures of the end-to-end tests: the Discord API double and one `loopjam run` against it, shared by
both modules (a bot's start, with its worker loading the model, is the slow part)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from bot_process import BotProcess
from discord_double import DiscordDouble


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def bot(double: DiscordDouble, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BotProcess]:
    """The real `loopjam run` (embedded mode, tiny model); tests may stop and start it again."""
    data_dir = tmp_path_factory.mktemp("bot-data")
    process = BotProcess(double, tiny_model_dir, data_dir, log=data_dir / "bot.log")
    await process.start()
    # The worker process loads the model in the background; wait for the commands to be synced.
    await double.wait_for_request("PUT /applications/{application_id}/commands", timeout=60)
    yield process
    await process.stop()
