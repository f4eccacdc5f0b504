"""Posting outcomes: a finished loop (or why there is none) where its request was made.

Every outcome goes through the outbox (the `deliveries` table): posted at once when the job ends,
and, when Discord refuses, tried again with a growing pause (`[discord] redelivery_interval_s`,
doubling, at most an hour) until it is posted or given up. Errors that waiting cannot mend (the
channel is gone, the bot lost access) give up at once, with one log line; the history then shows
the job as not posted.

A loop made in a jam gets an "Add to jam" button; a jam's mix is posted with its own embed, Info as
its only button, and its stems zip (fitted to the upload limit as loops are), and the jam's card
then links to it.
"""

from __future__ import annotations

import asyncio
import logging
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import discord

from generation.jobs.api import JobDone
from generation.jobs.files import AUDIO_SUFFIXES, STEMS_SUFFIX, WAVEFORM_SUFFIX, UnsafeFile, inside
from generation.storage import (
    Generation,
    GenerationKind,
    due_deliveries,
    get_generation,
    get_jam,
    has_pending_delivery,
    list_request_group,
    mark_request_delivered,
    record_request_delivery_failure,
)

from . import embeds
from .background import one_line
from .jamcard import JamCard, card_of, show_card
from .resumed import ResumedInteraction
from .text import NO_PINGS, requester_only
from .tracker import TrackedJob
from .uploads import TooLargeToUpload, fit_stems, fit_upload
from .views import mix_view, result_view

if tp.TYPE_CHECKING:
    from .core import BotCore

log = logging.getLogger(__name__)

Outcome = JobDone | str
"""A finished request's loops, or the reason (for its requester) why there are none."""

GIVE_UP_AT_ONCE = frozenset({10003, 10008, 50001, 50013})
"""Discord error codes that retrying cannot mend: unknown channel or message, missing access or permissions."""
REDELIVERY_BATCH = 200
"""Outbox rows read per pass; new ones come first, so old failing ones never hide them."""
UNSAFE_FILE = "This loop's file is not one I can post. Please make it again."
STEMS_ATTACHED = "Attached: each layer as its own loop, and jam.json to rebuild the jam."
NO_STEMS = "Too large to upload here, even as OGG."


def permanent(error: BaseException) -> bool:
    return isinstance(error, discord.HTTPException) and error.code in GIVE_UP_AT_ONCE


@dataclass(frozen=True)
class LoopPost:
    """What to post where: a finished request's loops with their embed, and the way to its requester."""

    job_id: str
    files: list[Path]
    request_line: str
    embed: discord.Embed
    view: discord.ui.View
    channel: discord.abc.Messageable
    filesize_limit: int
    requester_id: int
    tracked: TrackedJob | None
    stems: Path | None = None
    """A mix's stems zip, attached after its audio."""


@dataclass(frozen=True)
class Finished:
    """A finished request's first row and what its post shows besides, read in one unit of work."""

    row: Generation
    credit: str
    jam_loop_ids: tuple[str, ...]
    """The request's loops when it was made in a jam: each gets an "Add to jam" button."""
    mix_layers: tuple[tuple[str, str], ...]
    """A mix's layers as (loop id, prompt), in order."""
    jam_key: str | None
    """A mix's jam's key."""


class UnrecordedPost(Exception):
    """An outcome was posted, but recording that failed: it must not count as a failed post."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class ResultPoster:
    """Posts outcomes and keeps the outbox's count of attempts; one post per job at a time."""

    def __init__(self, bot: BotCore) -> None:
        self.bot = bot
        self.posting: set[str] = set()
        """Jobs whose outcome is being posted now, so the redelivery pass leaves them alone."""
        self.unrecorded: dict[str, tuple[int | None, int | None]] = {}
        """Outcomes posted whose recording failed (the database was away): job id -> (message id,
        channel id). The outbox still lists them; its next pass records them, never posts them again."""

    async def deliver(self, job_id: str, outcome: Outcome, tracked: TrackedJob | None) -> None:
        """Post `outcome` unless it is being posted already; a refusal is counted in the outbox.

        Only a database error escapes (the failure could not be counted): the caller's pass ends.
        """
        if job_id in self.posting:
            return
        self.posting.add(job_id)
        try:
            if job_id in self.unrecorded:
                await self._record(job_id, *self.unrecorded[job_id])
            elif isinstance(outcome, JobDone):
                await self._post_result(job_id, outcome, tracked)
            else:
                await self._post_failure(job_id, outcome, tracked)
        except UnrecordedPost as unrecorded:
            log.info("posted the outcome of %s but could not record it yet: %s", job_id, one_line(unrecorded.error))
        except Exception as error:
            await self._count_failure(job_id, error)
        finally:
            self.posting.discard(job_id)

    async def _record(self, job_id: str, message_id: int | None, channel_id: int | None) -> None:
        """Record a posted outcome (its message, if any); kept in `unrecorded` while that fails."""
        try:
            await self.bot.in_db(_record_posted, job_id, message_id, channel_id)
        except Exception as error:
            self.unrecorded[job_id] = (message_id, channel_id)
            raise UnrecordedPost(error) from error
        self.unrecorded.pop(job_id, None)

    async def redeliver_due(self) -> None:
        """One outbox pass: post what finished while the bot was away, or what is due for another try."""
        due = await self.bot.read_db(_due_outcomes, Path(self.bot.settings.storage.data_dir), REDELIVERY_BATCH)
        for job_id, outcome in due:
            await self.deliver(job_id, outcome, None)

    async def _count_failure(self, job_id: str, error: Exception) -> None:
        reason = one_line(error)
        failure = await self.bot.in_db(
            record_request_delivery_failure, job_id, reason,
            first_delay_s=self.bot.settings.discord.redelivery_interval_s, permanent=permanent(error),
        )
        if failure is None:
            return  # nothing of this job waits in the outbox any more
        # Discord's refusals and network errors are expected; anything else is a bug: keep its traceback.
        traceback = None if isinstance(error, (discord.HTTPException, OSError)) else error
        if failure.given_up:
            log.warning("gave up posting the outcome of %s after %d attempt(s): %s", job_id, failure.attempts, reason,
                        exc_info=traceback)
        else:
            log.info("could not post the outcome of %s (attempt %d, next in %.0f s): %s",
                     job_id, failure.attempts, failure.retry_in_s, reason, exc_info=traceback)

    async def _post_result(self, job_id: str, done: JobDone, tracked: TrackedJob | None) -> None:
        found = await self.bot.read_db(_finished, job_id)
        if found is None or found.row.channel_id is None:
            return
        row, credit = found.row, found.credit
        data_dir = Path(self.bot.settings.storage.data_dir)
        try:  # the files a result names are data from elsewhere (a worker, the history): checked again here
            files = [inside(data_dir, path, AUDIO_SUFFIXES) for path in done.files]
            stems = inside(data_dir, files[0].with_suffix(STEMS_SUFFIX), {STEMS_SUFFIX}) if row.kind is GenerationKind.MIX else None
        except UnsafeFile as error:
            log.warning("refused to post the loop of %s: %s", job_id, error)
            await self._post_failure(job_id, UNSAFE_FILE, tracked)
            return
        channel = await self.bot.channel_for(row.channel_id)
        guild = getattr(channel, "guild", None)
        request = embeds.request_line(row.prompt, row.shape, row.target_key)
        if row.kind is GenerationKind.MIX:
            embed = embeds.mix_embed(job_id, row.jam_id, row.shape, found.jam_key, list(found.mix_layers), credit)
            view = mix_view(job_id)
        else:
            embed = embeds.result_embed(job_id, request, done.report, done.seed, row.model, row.shape.seconds, credit)
            view = result_view(job_id, found.jam_loop_ids)
        post = LoopPost(
            job_id=job_id, files=files, request_line=request, embed=embed, view=view, channel=channel,
            filesize_limit=guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES,
            requester_id=row.user_id, tracked=tracked, stems=stems if stems is not None and stems.is_file() else None,
        )
        try:
            message = await self._send_loops(post)
        except TooLargeToUpload as error:
            await self._post_failure(job_id, str(error), tracked)
            return
        await self._record(job_id, message.id, message.channel.id)
        if row.kind is GenerationKind.MIX and row.jam_id is not None:
            await self._show_mix_on_card(row.jam_id, row.guild_id)

    async def _show_mix_on_card(self, jam_id: int, guild_id: int | None) -> None:
        """Link the jam's card to the mix just posted; a failure costs a log line, never the posted mix."""
        try:
            card = await self.bot.read_db(_jam_card, jam_id, guild_id)
        except Exception as error:
            log.info("could not read jam %d to link its mix: %s", jam_id, one_line(error))
            return
        if card is not None:
            await show_card(self.bot, card)

    async def _send_loops(self, post: LoopPost) -> discord.Message:
        tracked = post.tracked
        if tracked is not None and tracked.interaction is not None and tracked.token_alive():
            try:
                return await self._send_as_follow_up(post, tracked.interaction)
            except discord.HTTPException as error:
                log.info("the follow-up of %s was refused (%s); posting it to the channel", post.job_id, one_line(error))
        # The interaction token is gone (late result, a restart, or a refused follow-up): a new
        # message that pings only the requester.
        return await send_result(post.channel, post.files, post.filesize_limit, post.embed, post.view,
                                 discord.Object(post.requester_id), post.stems)

    async def _send_as_follow_up(self, post: LoopPost, interaction: discord.Interaction | ResumedInteraction) -> discord.Message:
        self.bot.service.set_uploading(post.job_id)
        await interaction.edit_original_response(embed=embeds.progress_embed(post.job_id, post.request_line, "uploading", 100.0), view=None)
        message = await send_result(interaction.followup, post.files, post.filesize_limit, post.embed, post.view, None, post.stems)
        await interaction.edit_original_response(
            embed=discord.Embed(title="Done", description=f"{post.request_line}\n\n[Jump to the loop]({message.jump_url})"),
        )
        return message

    async def _post_failure(self, job_id: str, reason: str, tracked: TrackedJob | None) -> None:
        """Say why a job failed: on its queue message while the token lives, else to the requester."""
        row = await self.bot.read_db(_undelivered, job_id)
        if row is None or row.channel_id is None:
            return
        request = embeds.request_line(row.prompt, row.shape)
        embed = embeds.failed_embed(job_id, request, reason)
        if tracked is not None and tracked.interaction is not None and tracked.token_alive():
            await tracked.interaction.edit_original_response(embed=embed, view=None)
        else:
            channel = await self.bot.channel_for(row.channel_id)
            await channel.send(content=f"<@{row.user_id}>", embed=embed, allowed_mentions=requester_only(discord.Object(row.user_id)))
        await self._record(job_id, None, None)


async def send_result(
    destination: discord.abc.Messageable | discord.Webhook,
    files: list[Path],
    filesize_limit: int,
    embed: discord.Embed,
    view: discord.ui.View,
    mention: discord.abc.Snowflake | None,
    stems: Path | None = None,
) -> discord.Message:
    """Post loops: each audio file shrunk to fit the upload limit, the first one's waveform, the buttons,
    and a mix's stems zip in what is left of the limit (rebuilt smaller, or left out with a note).

    Shrinking re-encodes audio (seconds of CPU for a long loop): done in threads, off the event loop.
    """
    per_file_limit = filesize_limit // (len(files) + (stems is not None))
    uploads = await asyncio.gather(*(asyncio.to_thread(fit_upload, path, per_file_limit) for path in files))
    attachments = [discord.File(upload.path, filename=upload.path.name) for upload in uploads]
    embed = embed.copy()  # the same embed may be sent again elsewhere when this post is refused
    notes = {upload.note for upload in uploads if upload.note}
    if notes:
        embed.add_field(name="Format", value=" ".join(sorted(notes)), inline=False)
    picture = waveform_of(files[0])
    if picture is not None:
        attachments.append(discord.File(picture, filename="waveform.png"))
        embed.set_image(url="attachment://waveform.png")
    if stems is not None:
        left = filesize_limit - sum(upload.path.stat().st_size for upload in uploads) - (picture.stat().st_size if picture else 0)
        fitted = await asyncio.to_thread(fit_stems, stems, left)
        if fitted is None:
            embed.add_field(name="Stems", value=NO_STEMS, inline=False)
        else:
            attachments.append(discord.File(fitted.path, filename=fitted.path.name))
            embed.add_field(name="Stems", value=f"{STEMS_ATTACHED} {fitted.note or ''}".strip(), inline=False)
    content = f"<@{mention.id}>" if mention is not None else None
    allowed = requester_only(mention) if mention is not None else NO_PINGS
    kwargs: dict[str, tp.Any] = {"content": content, "embed": embed, "files": attachments, "view": view, "allowed_mentions": allowed}
    if isinstance(destination, discord.Webhook):
        return await destination.send(wait=True, **kwargs)
    return await destination.send(**kwargs)


def waveform_of(audio: Path) -> Path | None:
    """The loop's waveform PNG beside its audio (same stem), if there is one there and not elsewhere."""
    try:
        picture = inside(audio.parent, audio.with_suffix(WAVEFORM_SUFFIX).name, {WAVEFORM_SUFFIX})
    except UnsafeFile:
        return None
    return picture if picture.is_file() else None


# --- units of work (run in a thread by `BotCore.in_db` / `read_db`) ------------------------------


def _due_outcomes(session: tp.Any, data_dir: Path, limit: int) -> list[tuple[str, Outcome]]:
    """Each request with a delivery due (by its first row's id) with its result, or its error message."""
    rows: dict[str, list[Generation]] = {}
    for delivery in due_deliveries(session, limit=limit):
        rows.setdefault(delivery.generation.request_group, []).append(delivery.generation)
    outcomes: list[tuple[str, Outcome]] = []
    for job_id, group in rows.items():
        done = [row for row in group if row.audio_path]
        if done:
            reports = [report_of(row) for row in done]
            files = [data_dir / row.audio_path for row in done if row.audio_path]
            seeds = [row.seed for row in done]
            outcomes.append((job_id, JobDone(job_id, files, reports[0], seeds[0], seeds=seeds, reports=reports)))
        else:
            outcomes.append((job_id, group[0].error or "This loop could not be made."))
    return outcomes


def report_of(row: Generation) -> dict[str, tp.Any]:
    """The loop report as stored with a finished row, in the worker's field names."""
    names = ("source_bpm", "stretch_ratio", "source_start_seconds", "downbeat_confidence", "seam_score", "tempo_stability",
             "grid_error_ms", "loudness_lufs", "verdict", "source_key", "key_confidence", "target_key", "key_shift_semitones")
    return {**{name: getattr(row, name) for name in names}, "reason": row.verdict_reason}


def _undelivered(session: tp.Any, job_id: str) -> Generation | None:
    """The job's row while its outcome still waits to be posted; None once posted (or unknown)."""
    row = get_generation(session, job_id)
    return row if row is not None and has_pending_delivery(session, row.request_group) else None


def _finished(session: tp.Any, job_id: str) -> Finished | None:
    """The job's row (while undelivered), who to credit (the requester, and the parent's author), and
    its jam's part: the loops that may join it, or a mix's layers and key."""
    row = _undelivered(session, job_id)
    if row is None:
        return None
    credit = f"by <@{row.user_id}>"
    if row.parent is not None and row.parent.user_id != row.user_id:
        credit += f", {row.kind.value} of <@{row.parent.user_id}>'s loop"
    if row.kind is GenerationKind.MIX:
        layers = [get_generation(session, loop_id) for loop_id in row.mix_loop_ids or []]
        jam = get_jam(session, row.jam_id, row.guild_id) if row.jam_id is not None else None
        mix_layers = tuple((layer.short_id, layer.prompt) for layer in layers if layer is not None)
        return Finished(row, credit, (), mix_layers, jam.key if jam is not None else None)
    in_jam = tuple(loop.short_id for loop in list_request_group(session, row.request_group) if loop.audio_path) if row.jam_id else ()
    return Finished(row, credit, in_jam, (), None)


def _jam_card(session: tp.Any, jam_id: int, guild_id: int | None) -> JamCard | None:
    jam = get_jam(session, jam_id, guild_id)
    return card_of(session, jam) if jam is not None else None


def _record_posted(session: tp.Any, job_id: str, message_id: int | None, channel_id: int | None) -> None:
    mark_request_delivered(session, job_id, message_id=message_id, channel_id=channel_id)
