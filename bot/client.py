"""The LoopJam bot: `BotCore` with its cogs (bot/cogs/), command sync and the metrics server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import typing as tp
from pathlib import Path

import discord
from aiohttp import web

from generation.config import Settings
from generation.metrics import start_metrics_server
from generation.storage import Database

from .background import LagMonitor
from .cogs.admin import Settings as SettingsCog
from .cogs.delivery import Deliveries
from .cogs.history import History
from .cogs.jam import Jam
from .cogs.loops import Loops
from .cogs.status import Status
from .core import BotCore
from .replies import resume_replies, save_replies
from .views import CancelButton, JamAddButton, JamMixButton, JamReplaceSelect, LoopActionButton

if tp.TYPE_CHECKING:
    from generation.jobs.service import QueueService

log = logging.getLogger(__name__)


class _WithoutVoiceWarnings(logging.Filter):
    """LoopJam never joins voice, so discord.py's "PyNaCl is not installed" warnings are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


logging.getLogger("discord.client").addFilter(_WithoutVoiceWarnings())

SCHEMA_HASH_FILE = "commands.sha256"


class LoopJamBot(BotCore):
    """Cogs reach each other through its typed attributes (`bot.loops`, `bot.delivery`, `bot.jam`), not `get_cog`."""

    def __init__(self, settings: Settings, service: QueueService, database: Database, *, sync_guild: int | None = None) -> None:
        super().__init__(settings, service, database, sync_guild=sync_guild)
        self.loops = Loops(self)
        self.delivery = Deliveries(self)
        self.jam = Jam(self, self.loops)
        self.metrics: web.AppRunner | None = None
        self.lag = LagMonitor()
        self.stopping = False
        """Set by a stop signal (`bot.shutdown`): interactions are answered that LoopJam is restarting."""
        self._closing: asyncio.Future[None] | None = None

    async def load_cogs(self) -> None:
        for cog in (self.loops, History(self, self.loops), Status(self), SettingsCog(self), self.delivery, self.jam):
            await self.add_cog(cog)
        self.add_dynamic_items(LoopActionButton, CancelButton, JamMixButton, JamAddButton, JamReplaceSelect)

    async def setup_hook(self) -> None:
        await self.load_cogs()
        await self.sync_commands_if_changed()
        await resume_replies(self, self.tracker, self.database)  # before the queue's first events
        self.delivery.start()
        self.jam.start()
        self.lag.start()
        self.metrics = await start_metrics_server(self.settings.metrics, self.service, event_loop_lag=self.lag.take_worst_s)
        await self.service.start()

    async def close(self) -> None:
        """Stop taking work, stop the queue, keep the replies to resume, then close the gateway (once)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await self._closing

    async def _close(self) -> None:
        self.stopping = True
        await self.delivery.stop()
        await self.jam.stop()
        await self.lag.stop()
        await self.service.stop()
        await save_replies(self.tracker, self.database)
        await self.tracker.stop()
        if self.metrics is not None:
            await self.metrics.cleanup()
        await super().close()

    # --- command sync ---------------------------------------------------------------------

    def command_schema(self) -> list[dict[str, tp.Any]]:
        return [command.to_dict(self.tree) for command in self.tree.get_commands()]

    async def sync_commands_if_changed(self) -> None:
        """Sync to one guild when asked (instant, for development); globally only when the schema changed."""
        if self.sync_guild:
            guild = discord.Object(self.sync_guild)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            return
        digest = hashlib.sha256(json.dumps(self.command_schema(), sort_keys=True).encode()).hexdigest()
        stamp = Path(self.settings.storage.data_dir) / SCHEMA_HASH_FILE
        if stamp.is_file() and stamp.read_text().strip() == digest:
            log.info("command schema unchanged; not syncing")
            return
        await self.tree.sync()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
