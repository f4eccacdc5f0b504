"""The background side of posting results: outcomes as jobs end, the outbox pass, the retention sweep.

Every task here is owned (a `TaskSet` or a `Periodic`) and survives any exception: a database
outage costs one log line when it starts and one when it ends, never the task.
"""

from __future__ import annotations

import logging
import typing as tp
from pathlib import Path

from discord.ext import commands

from generation.jobs.api import JobCancelled, JobDone, JobEvent, JobFailed, JobProgress
from generation.storage import sweep_audio, sweep_uploads

from ..background import Periodic, TaskSet
from ..delivery import ResultPoster

if tp.TYPE_CHECKING:
    from ..core import BotCore

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


class Deliveries(commands.Cog):
    def __init__(self, bot: BotCore) -> None:
        self.bot = bot
        self.poster = ResultPoster(bot)
        self.outcomes = TaskSet()
        self.redelivery = Periodic("redelivery", self._redeliver, bot.settings.discord.redelivery_interval_s,
                                   describe=bot.describe_error)
        self.retention = Periodic("retention sweep", self._sweep_expired, RETENTION_INTERVAL_S, describe=bot.describe_error)

    def start(self) -> None:
        """Follow the queue's events and start the outbox and retention passes (once the bot runs)."""
        self.bot.service.add_listener(self.on_job_event)
        self.redelivery.start()
        self.retention.start()

    async def stop(self) -> None:
        await self.redelivery.stop()
        await self.retention.stop()
        await self.outcomes.cancel_all()

    async def cog_unload(self) -> None:
        await self.stop()

    def on_job_event(self, event: JobEvent) -> None:
        """The queue service's listener for every event of every job (synchronous: the tasks are ours)."""
        if isinstance(event, JobProgress):
            self.bot.tracker.on_progress(event)
            return
        tracked = self.bot.tracker.finish(event.job_id)
        if isinstance(event, JobDone):
            self.outcomes.spawn(self.poster.deliver(event.job_id, event, tracked), name=f"deliver-{event.job_id}")
        elif isinstance(event, JobFailed):
            self.outcomes.spawn(self.poster.deliver(event.job_id, event.reason, tracked), name=f"deliver-{event.job_id}")
        elif isinstance(event, JobCancelled) and tracked is not None:
            self.outcomes.spawn(self.bot.tracker.show_cancelled(tracked), name=f"cancelled-{event.job_id}")

    async def _redeliver(self) -> None:
        await self.bot.wait_until_ready()
        await self.poster.redeliver_due()

    async def _sweep_expired(self) -> None:
        """Delete loop audio and uploads past `[storage] retention_days`; the history keeps the rest and /replay regenerates.

        An upload is deleted when its job ends; those left by a crash go here, unless a job still needs them.
        """
        storage = self.bot.settings.storage
        swept = await self.bot.in_db(sweep_audio, Path(storage.data_dir), storage.retention_days)
        if swept.cleared:
            log.info("retention: deleted the audio of %d loop(s)", swept.cleared)
        uploads = await self.bot.in_db(sweep_uploads, Path(storage.data_dir), storage.retention_days)
        if uploads:
            log.info("retention: deleted %d upload(s) no job needs", uploads)
