"""Following a job from "Queued" to its outcome: throttled progress edits of the original response.

While the interaction token lives (15 minutes), progress edits the original response; the outcome
is posted by `bot.delivery`, which takes the tracked interaction over with `finish`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing as tp
from dataclasses import dataclass, field

import discord

from generation.jobs.api import JobProgress, Stage

from . import embeds
from .background import TaskSet
from .resumed import ResumedInteraction

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 2.0
EDITS_IN_FLIGHT = 8
"""Progress edits sent at once: when a batch starts, every waiting job's position changes together,
and a hundred edits started in one event-loop turn stall it."""
TOKEN_LIFETIME_S = 15 * 60
TOKEN_MARGIN_S = 60
"""Stop using a token a minute before Discord expires it: an upload can take that long."""


@dataclass
class TrackedJob:
    job_id: str
    request_line: str
    interaction: discord.Interaction | ResumedInteraction | None
    """A resumed one after a graceful restart (`bot.replies`); None once the reply cannot be edited."""
    started: float = field(default_factory=time.monotonic)
    last_edit: float = 0.0
    latest: JobProgress | None = None
    highest: dict[Stage, float] = field(default_factory=dict)
    """The highest percent heard per stage: an event that arrives late never moves the bar back."""
    edit_task: asyncio.Task | None = None
    mixing: bool = False
    """A jam's mix: its progress says so."""

    def token_alive(self) -> bool:
        return self.interaction is not None and time.monotonic() - self.started < TOKEN_LIFETIME_S - TOKEN_MARGIN_S


class JobTracker:
    """The jobs asked for through an interaction that is still followed: progress edits, then hand-over."""

    def __init__(self) -> None:
        self.jobs: dict[str, TrackedJob] = {}
        self.edits = TaskSet()
        self.edit_slots = asyncio.Semaphore(EDITS_IN_FLIGHT)

    def track(self, job: TrackedJob) -> None:
        self.jobs[job.job_id] = job

    async def stop(self) -> None:
        """Drop the progress edits still waiting (at shutdown)."""
        await self.edits.cancel_all()

    def finish(self, job_id: str) -> TrackedJob | None:
        """Stop following a job that ended; its interaction, if still followed, for the outcome."""
        job = self.jobs.pop(job_id, None)
        if job is not None and job.edit_task is not None:
            job.edit_task.cancel()
        return job

    def on_progress(self, event: JobProgress) -> None:
        """Keep the newest progress and edit at most once every EDIT_INTERVAL_S seconds."""
        job = self.jobs.get(event.job_id)
        if job is None or event == job.latest:  # e.g. the same queue position again: nothing to show
            return
        if event.stage is Stage.QUEUED:
            job.highest.clear()  # back in the queue (its worker died): the work starts over
        elif event.percent < job.highest.get(event.stage, 0.0):
            return  # overtaken by a later event of the same stage
        job.highest[event.stage] = event.percent
        job.latest = event
        if job.edit_task is None or job.edit_task.done():
            job.edit_task = self.edits.spawn(self._flush_progress(job), name=f"progress-{job.job_id}")

    async def show_cancelled(self, job: TrackedJob) -> None:
        await self._edit(job, embed=discord.Embed(title="Cancelled", description=job.request_line), view=None)

    async def _flush_progress(self, job: TrackedJob) -> None:
        wait = job.last_edit + EDIT_INTERVAL_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        async with self.edit_slots:
            event = job.latest
            if event is None or not job.token_alive():
                return
            job.last_edit = time.monotonic()
            embed = embeds.progress_embed(job.job_id, job.request_line, event.stage.value, event.percent, event.position,
                                         mixing=job.mixing)
            try:
                await self._edit(job, embed=embed)
            except discord.HTTPException as error:
                # discord.py already waited out 429s it was told about; a progress edit is not worth more.
                log.info("progress edit for %s failed: %s", job.job_id, error.status)

    async def _edit(self, job: TrackedJob, **fields: tp.Any) -> None:
        if job.interaction is not None and job.token_alive():
            await job.interaction.edit_original_response(**fields)
