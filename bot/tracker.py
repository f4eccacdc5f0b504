"""Following a job from "Queued" to the posted loop: throttled progress edits and the result post.

While the interaction token lives (15 minutes), progress edits the original response and the
result is a follow-up; later, the result is a new channel message that mentions the requester.
Results that finished while the bot was away are delivered from the database's pending
deliveries when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import discord

from generation.jobs.api import JobCancelled, JobDone, JobEvent, JobFailed, JobProgress

from . import embeds
from .resumed import ResumedInteraction
from .text import NO_PINGS, requester_only
from .uploads import fit_upload

if tp.TYPE_CHECKING:
    from .client import LoopJamBot

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 2.0
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
    edit_task: asyncio.Task | None = None

    def token_alive(self) -> bool:
        return self.interaction is not None and time.monotonic() - self.started < TOKEN_LIFETIME_S - TOKEN_MARGIN_S


class JobTracker:
    def __init__(self, bot: LoopJamBot) -> None:
        self.bot = bot
        self.jobs: dict[str, TrackedJob] = {}

    def track(self, job: TrackedJob) -> None:
        self.jobs[job.job_id] = job

    async def on_event(self, event: JobEvent) -> None:
        """The queue service's listener: every event of every job passes here."""
        job = self.jobs.get(event.job_id)
        if isinstance(event, JobProgress):
            if job is not None:
                self._schedule_progress(job, event)
            return
        if job is not None:
            self.jobs.pop(event.job_id, None)
            if job.edit_task is not None:
                job.edit_task.cancel()
        try:
            if isinstance(event, JobDone):
                await self.bot.post_result(event.job_id, event, job)
            elif isinstance(event, JobFailed):
                await self.bot.post_failure(event.job_id, event.reason, job)
            elif isinstance(event, JobCancelled) and job is not None:
                await self._edit(job, embed=discord.Embed(title="Cancelled", description=job.request_line), view=None)
        except discord.HTTPException:
            log.exception("could not post the outcome of job %s", event.job_id)

    def _schedule_progress(self, job: TrackedJob, event: JobProgress) -> None:
        """Keep the newest progress and edit at most once every EDIT_INTERVAL_S seconds."""
        if event == job.latest:  # e.g. the same queue position again: nothing to show
            return
        job.latest = event
        if job.edit_task is None or job.edit_task.done():
            job.edit_task = asyncio.create_task(self._flush_progress(job))

    async def _flush_progress(self, job: TrackedJob) -> None:
        wait = job.last_edit + EDIT_INTERVAL_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        event = job.latest
        if event is None or not job.token_alive():
            return
        job.last_edit = time.monotonic()
        embed = embeds.progress_embed(job.job_id, job.request_line, event.stage.value, event.percent, event.position)
        try:
            await self._edit(job, embed=embed)
        except discord.HTTPException as error:
            # discord.py already waited out 429s it was told about; a progress edit is not worth more.
            log.info("progress edit for %s failed: %s", job.job_id, error.status)

    async def _edit(self, job: TrackedJob, **fields: tp.Any) -> None:
        if job.token_alive():
            await job.interaction.edit_original_response(**fields)


async def send_result(
    destination: discord.abc.Messageable | discord.Webhook,
    files: list[Path],
    filesize_limit: int,
    embed: discord.Embed,
    view: discord.ui.View,
    mention: discord.abc.Snowflake | None,
) -> discord.Message:
    """Post loops: each audio file shrunk to fit the upload limit, the first one's waveform, the buttons."""
    per_file_limit = filesize_limit // max(1, len(files))
    uploads = [fit_upload(path, per_file_limit) for path in files]
    attachments = [discord.File(upload.path, filename=upload.path.name) for upload in uploads]
    notes = {upload.note for upload in uploads if upload.note}
    if notes:
        embed.add_field(name="Format", value=" ".join(sorted(notes)), inline=False)
    picture = files[0].with_suffix(".png")
    if picture.is_file():
        attachments.append(discord.File(picture, filename="waveform.png"))
        embed.set_image(url="attachment://waveform.png")
    content = f"<@{mention.id}>" if mention is not None else None
    allowed = requester_only(mention) if mention is not None else NO_PINGS
    kwargs: dict[str, tp.Any] = {"content": content, "embed": embed, "files": attachments, "view": view, "allowed_mentions": allowed}
    if isinstance(destination, discord.Webhook):
        return await destination.send(wait=True, **kwargs)
    return await destination.send(**kwargs)
