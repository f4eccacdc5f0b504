"""The LoopJam bot: a discord.py `commands.Bot` whose features live in cogs under `bot/cogs/`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import typing as tp
from pathlib import Path

import discord
from aiohttp import web
from discord import app_commands
from discord.ext import commands, tasks

from generation.config import Settings
from generation.jobs.api import JobDone
from generation.metrics import start_metrics_server
from generation.storage import (
    Database,
    Generation,
    get_generation,
    has_pending_delivery,
    mark_request_delivered,
    pending_deliveries,
    sweep_audio,
)

from . import embeds
from .errors import LoopJamTree, UserFacingError
from .replies import resume_replies, save_replies
from .text import NO_PINGS, requester_only
from .tracker import JobTracker, TrackedJob, send_result
from .uploads import TooLargeToUpload
from .views import CancelButton, LoopActionButton, result_view

if tp.TYPE_CHECKING:
    from generation.jobs.service import QueueService

log = logging.getLogger(__name__)


class _WithoutVoiceWarnings(logging.Filter):
    """LoopJam never joins voice, so discord.py's "PyNaCl is not installed" warnings are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


logging.getLogger("discord.client").addFilter(_WithoutVoiceWarnings())

EXTENSIONS = ("bot.cogs.loops", "bot.cogs.history", "bot.cogs.status", "bot.cogs.admin")
SCHEMA_HASH_FILE = "commands.sha256"


def intents() -> discord.Intents:
    """Guilds only: slash commands need no privileged intent (no members, no message content)."""
    chosen = discord.Intents.none()
    chosen.guilds = True
    return chosen


class LoopJamBot(commands.Bot):
    def __init__(self, settings: Settings, service: QueueService, database: Database, *, sync_guild: int | None = None) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            tree_cls=LoopJamTree,
            allowed_mentions=NO_PINGS,
            help_command=None,
        )
        self.settings = settings
        self.service = service
        self.database = database
        self.sync_guild = sync_guild or settings.discord.sync_guild
        self.tracker = JobTracker(self)
        self.metrics: web.AppRunner | None = None
        self.posting: set[str] = set()
        """Jobs whose outcome is being posted now, so the redelivery loop leaves them alone."""
        self.stopping = False
        """Set by a stop signal (`bot.shutdown`): interactions are answered that LoopJam is restarting."""
        self._closing: asyncio.Future[None] | None = None

    async def load_cogs(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(LoopActionButton, CancelButton)

    async def setup_hook(self) -> None:
        await self.load_cogs()
        await self.sync_commands_if_changed()
        self.service.add_listener(self.tracker.on_event)
        await resume_replies(self, self.tracker, self.database)  # before the queue's first events
        self.metrics = await start_metrics_server(self.settings.metrics, self.service)
        await self.service.start()
        self.deliver_pending.change_interval(seconds=self.settings.discord.redelivery_interval_s)
        self.deliver_pending.start()
        self.sweep_old_audio.start()

    async def close(self) -> None:
        """Stop taking work, stop the queue, keep the replies to resume, then close the gateway (once)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await self._closing

    async def _close(self) -> None:
        self.stopping = True
        self.deliver_pending.cancel()
        self.sweep_old_audio.cancel()
        await self.service.stop()
        await save_replies(self.tracker, self.database)
        if self.metrics is not None:
            await self.metrics.cleanup()
        await super().close()

    def require_allowed_model(self, name: str) -> None:
        """Refuse a model the operator did not configure in `[model] allowed`."""
        allowed = self.settings.model.allowed
        if name not in allowed:
            raise UserFacingError(f"Unknown model. Choose one of: {', '.join(allowed)}.")

    def model_choices(self, current: str) -> list[app_commands.Choice[str]]:
        """Autocomplete for a model option: the configured models containing what was typed."""
        matching = [m for m in self.settings.model.allowed if current.lower() in m.lower()]
        return [app_commands.Choice(name=m[:100], value=m) for m in matching][:25]

    async def in_db(self, work: tp.Callable[..., tp.Any], *args: tp.Any) -> tp.Any:
        """Run `work(session, *args)` in one database unit of work, off the event loop."""
        return await asyncio.to_thread(_unit_of_work, self.database.session, work, args)

    async def read_db(self, work: tp.Callable[..., tp.Any], *args: tp.Any) -> tp.Any:
        """`in_db` for work that only reads: it never waits for the queue's writes."""
        return await asyncio.to_thread(_unit_of_work, self.database.reading, work, args)

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

    # --- results --------------------------------------------------------------------------

    async def channel_for(self, channel_id: int) -> discord.abc.Messageable:
        return self.get_channel(channel_id) or await self.fetch_channel(channel_id)

    async def _post_once(self, job_id: str, posting: tp.Coroutine[tp.Any, tp.Any, None]) -> None:
        """Run `posting` unless the same job's outcome is being posted already."""
        if job_id in self.posting:
            posting.close()
            return
        self.posting.add(job_id)
        try:
            await posting
        finally:
            self.posting.discard(job_id)

    async def post_result(self, job_id: str, done: JobDone, tracked: TrackedJob | None) -> None:
        """Post a finished loop where its request was made, and record where it went."""
        await self._post_once(job_id, self._post_result(job_id, done, tracked))

    async def _post_result(self, job_id: str, done: JobDone, tracked: TrackedJob | None) -> None:
        found = await self.read_db(_row_and_credit, job_id)
        if found is None or found[0].channel_id is None:
            return
        row, credit = found
        channel = await self.channel_for(row.channel_id)
        guild = getattr(channel, "guild", None)
        limit = guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        request = embeds.request_line(row.prompt, row.bpm, row.bars, row.beats_per_bar)
        seconds = row.bars * row.beats_per_bar * 60.0 / row.bpm
        embed = embeds.result_embed(job_id, request, done.report, done.seed, row.model, seconds, credit)
        try:
            message = await self._send_loops(job_id, done, tracked, request, embed, limit, channel, row.user_id)
        except TooLargeToUpload as error:
            await self._post_failure(job_id, str(error), tracked)
            return
        await self.in_db(_record_posted, job_id, message.id, message.channel.id)

    async def _send_loops(self, job_id: str, done: JobDone, tracked: TrackedJob | None, request: str,
                          embed: discord.Embed, limit: int, channel: tp.Any, requester_id: int) -> discord.Message:
        if tracked is not None and tracked.token_alive():
            self.service.set_uploading(job_id)
            await tracked.interaction.edit_original_response(
                embed=embeds.progress_embed(job_id, request, "uploading", 100.0), view=None
            )
            message = await send_result(tracked.interaction.followup, done.files, limit, embed, result_view(job_id), None)
            await tracked.interaction.edit_original_response(
                embed=discord.Embed(title="Done", description=f"{request}\n\n[Jump to the loop]({message.jump_url})"),
            )
            return message
        # The interaction token is gone (late result, a restart, or a refused follow-up): a new
        # message that pings only the requester.
        return await send_result(channel, done.files, limit, embed, result_view(job_id), discord.Object(requester_id))

    async def post_failure(self, job_id: str, reason: str, tracked: TrackedJob | None) -> None:
        """Say why a job failed: on its queue message while the token lives, else to the requester."""
        await self._post_once(job_id, self._post_failure(job_id, reason, tracked))

    async def _post_failure(self, job_id: str, reason: str, tracked: TrackedJob | None) -> None:
        row = await self.read_db(_undelivered, job_id)
        if row is None or row.channel_id is None:
            return
        request = embeds.request_line(row.prompt, row.bpm, row.bars, row.beats_per_bar)
        embed = embeds.failed_embed(job_id, request, reason)
        if tracked is not None and tracked.token_alive():
            await tracked.interaction.edit_original_response(embed=embed, view=None)
        else:
            channel = await self.channel_for(row.channel_id)
            await channel.send(content=f"<@{row.user_id}>", embed=embed, allowed_mentions=requester_only(discord.Object(row.user_id)))
        await self.in_db(_record_posted, job_id, None, None)

    @tasks.loop(seconds=30.0)  # `[discord] redelivery_interval_s`, set in setup_hook
    async def deliver_pending(self) -> None:
        """Post what finished while the bot was away, or whose post Discord refused: nothing is lost."""
        for job_id, outcome in await self.read_db(_pending_outcomes, Path(self.settings.storage.data_dir)):
            try:
                if isinstance(outcome, JobDone):
                    await self.post_result(job_id, outcome, None)
                else:
                    await self.post_failure(job_id, outcome, None)
            except discord.HTTPException:
                log.exception("could not deliver %s", job_id)

    @tasks.loop(hours=1)
    async def sweep_old_audio(self) -> None:
        """Delete loop audio past `[storage] retention_days`; the history keeps the rest and /replay regenerates."""
        storage = self.settings.storage
        swept = await self.in_db(sweep_audio, Path(storage.data_dir), storage.retention_days)
        if swept.cleared:
            log.info("retention: deleted the audio of %d loop(s)", swept.cleared)

    @deliver_pending.before_loop
    async def _before_delivering(self) -> None:
        await self.wait_until_ready()


def _unit_of_work(session: tp.Callable[[], tp.ContextManager[tp.Any]], work: tp.Callable[..., tp.Any],
                  args: tuple[tp.Any, ...]) -> tp.Any:
    with session() as opened:
        return work(opened, *args)


def _pending_outcomes(session: tp.Any, data_dir: Path) -> list[tuple[str, JobDone | str]]:
    """Each undelivered request (by its first row's id) with its result, or its error message."""
    rows: dict[str, list[Generation]] = {}
    for delivery in pending_deliveries(session, limit=200):
        rows.setdefault(delivery.generation.request_group, []).append(delivery.generation)
    outcomes: list[tuple[str, JobDone | str]] = []
    for job_id, group in rows.items():
        done = [row for row in group if row.audio_path]
        if done:
            reports = [report_of(row) for row in done]
            files = [data_dir / row.audio_path for row in done]
            seeds = [row.seed for row in done]
            outcomes.append((job_id, JobDone(job_id, files, reports[0], seeds[0], seeds=seeds, reports=reports)))
        else:
            outcomes.append((job_id, group[0].error or "This loop could not be made."))
    return outcomes


def report_of(row: Generation) -> dict[str, tp.Any]:
    """The loop report as stored with a finished row, in the worker's field names."""
    names = ("source_bpm", "stretch_ratio", "source_start_seconds", "downbeat_confidence", "seam_score",
             "tempo_stability", "loudness_lufs", "verdict")
    return {**{name: getattr(row, name) for name in names}, "reason": row.verdict_reason}


def _undelivered(session: tp.Any, job_id: str) -> Generation | None:
    """The job's row while its outcome still waits to be posted; None once posted (or unknown)."""
    row = get_generation(session, job_id)
    return row if row is not None and has_pending_delivery(session, row.request_group) else None


def _row_and_credit(session: tp.Any, job_id: str) -> tuple[Generation, str] | None:
    """The job's row (while undelivered) and who to credit: the requester, and the parent's author."""
    row = _undelivered(session, job_id)
    if row is None:
        return None
    credit = f"by <@{row.user_id}>"
    if row.parent is not None and row.parent.user_id != row.user_id:
        credit += f", {row.kind.value} of <@{row.parent.user_id}>'s loop"
    return row, credit


def _record_posted(session: tp.Any, job_id: str, message_id: int | None, channel_id: int | None) -> None:
    mark_request_delivered(session, job_id, message_id=message_id, channel_id=channel_id)
