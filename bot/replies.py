"""Original replies across a restart: followed again through a stored token, or pointed at where the loop went.

Only an interaction's token edits its reply, and Discord accepts it for 15 minutes. A graceful
stop keeps the tokens of the replies still following a job (`save_replies`), and the next start
takes them back (`resume_replies`): progress edits resume and the result lands in the reply,
through a `ResumedInteraction`. Once a token has expired, the result is posted in the channel
instead; the old reply cannot be edited any more, but pressing its Cancel button brings a fresh
token, with which `show_where_it_went` turns the old reply into a link to the posted loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

import discord

from generation.storage import Database, Generation, GenerationStatus, StoredReply, get_generation, store_replies, take_replies

from . import embeds
from .resumed import ResumedInteraction
from .tracker import TOKEN_LIFETIME_S, TOKEN_MARGIN_S, JobTracker, TrackedJob

log = logging.getLogger(__name__)


def resumable(job: TrackedJob) -> StoredReply | None:
    """The job's reply as kept for the next start; None when its token is gone."""
    interaction = job.interaction
    if interaction is None or not job.token_alive():
        return None
    return StoredReply(job.job_id, int(interaction.application_id), interaction.token, interaction.created_at)


def waiting_embed(job: TrackedJob) -> discord.Embed:
    embed = discord.Embed(
        title="Waiting for a restart",
        description=f"{job.request_line}\n\nLoopJam is restarting; this loop keeps its place and is made after it.",
        colour=embeds.COLOUR,
    )
    embed.set_footer(text=job.job_id)
    return embed


async def save_replies(tracker: JobTracker, database: Database) -> None:
    """At a graceful stop: stop following the jobs, say so on their replies, and keep the replies for the next start."""
    replies: list[StoredReply] = []
    for job in list(tracker.jobs.values()):
        if job.edit_task is not None:
            job.edit_task.cancel()
        reply = resumable(job)
        if reply is None or job.interaction is None:
            continue
        replies.append(reply)
        try:
            await job.interaction.edit_original_response(embed=waiting_embed(job))
        except discord.HTTPException as error:
            log.info("could not mark %s as waiting for the restart: %s", job.job_id, error.status)
    tracker.jobs.clear()
    if replies:
        await asyncio.to_thread(_store, database, replies)
        log.info("kept the replies of %d unfinished loop(s) for the next start", len(replies))


def _store(database: Database, replies: list[StoredReply]) -> None:
    with database.session() as session:
        store_replies(session, replies)


async def resume_replies(client: discord.Client, tracker: JobTracker, database: Database) -> None:
    """At start: follow again the jobs whose replies a graceful stop kept, while their tokens live."""
    for reply, line in await asyncio.to_thread(_take, database):
        age_s = (discord.utils.utcnow() - reply.created_at).total_seconds()
        tracker.track(TrackedJob(reply.job_id, line, ResumedInteraction(client, reply), started=time.monotonic() - age_s))
        log.info("following %s again in its original reply", reply.job_id)


def _take(database: Database) -> list[tuple[StoredReply, str]]:
    """The kept replies still usable (every kept one is deleted), each with its job's request line."""
    unfinished = (GenerationStatus.QUEUED, GenerationStatus.RUNNING)
    with database.session() as session:
        taken = []
        for reply in take_replies(session, TOKEN_LIFETIME_S - TOKEN_MARGIN_S):
            row = get_generation(session, reply.job_id)
            if row is not None and row.status in unfinished:
                taken.append((reply, embeds.request_line(row.prompt, row.shape)))
        return taken


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


async def show_where_it_went(interaction: discord.Interaction, row: Generation | None) -> bool:
    """Turn the message under a pressed Cancel button into a link to its posted loop; False when none was posted.

    For a job whose result went to the channel because its reply's token had expired (a restart,
    a long queue): the button's own interaction may edit the message it sits on.
    """
    if row is None or row.posted_message_id is None or row.posted_channel_id is None:
        return False
    request = embeds.request_line(row.prompt, row.shape)
    url = jump_url(interaction.guild_id, row.posted_channel_id, row.posted_message_id)
    embed = discord.Embed(title="Done", description=f"{request}\n\nThis loop was posted [here]({url}).", colour=embeds.COLOUR)
    embed.set_footer(text=row.short_id)
    await interaction.response.edit_message(embed=embed, view=None)
    return True
