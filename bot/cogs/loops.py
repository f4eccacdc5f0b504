"""/loop, /loopify and the buttons under a loop: everything that puts a job on the queue.

In a channel with a running jam, /loop and /loopify take the jam's tempo, bars, meter and key: `bpm`
may be left out, and the request names the jam's key (the result is moved into it) and the jam. A
user who passes another bpm, bars or meter there gets the loop in the jam's shape anyway, with an
ephemeral note saying so: a loop that does not fit the jam could never join it, and a note keeps the
loop coming where a refusal would make them ask again. Outside a jam `bpm` is required (a friendly
error says to give one or start a jam).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import typing as tp
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from generation.config import ALLOWED_BARS, BPM_MAX, BPM_MIN, MAX_BARS, MAX_SOURCE_SECONDS, PROMPT_MAX_CHARS, model_label
from generation.jobs.api import MAX_VARIATIONS, Accepted, CancelOutcome, JobKind, JobRequest, QueueUnavailable, Refused
from generation.prompts import InvalidRequest, check_source
from generation.shape import LoopShape
from generation.storage import UPLOADS_DIR, Generation, get_guild_generation, list_history, running_jam, same_shape

from .. import embeds
from ..errors import RateLimited, UserFacingError
from ..replies import show_where_it_went
from ..text import NO_PINGS, file_size, quote, shortened
from ..tracker import TrackedJob
from ..views import cancel_view

if tp.TYPE_CHECKING:
    from ..core import BotCore

BEATS_BY_METER = {"4/4": 4, "3/4": 3, "6/8": 6}
REQUIRED_PERMISSIONS = discord.Permissions(send_messages=True, attach_files=True, embed_links=True, view_channel=True)
AUDIO_TYPES = ("audio/", "video/ogg", "application/ogg")
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
UPLOAD_NAME_CHARS = 100
"""Of the file name, in the loop's prompt ("loopify: <name>")."""
EXTENSION = re.compile(r"\.[a-z0-9]{1,5}")
DOWNLOAD_CHUNK_BYTES = 64 * 1024
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_read=30)
DOWNLOAD_FAILED = "I couldn't download that file from Discord. Please upload it again."

BARS_CHOICES = [app_commands.Choice(name=f"{n} bar{'s' if n > 1 else ''}", value=n) for n in ALLOWED_BARS]
METER_CHOICES = [app_commands.Choice(name=meter, value=meter) for meter in BEATS_BY_METER]
FORMAT_CHOICES = [app_commands.Choice(name=name, value=value) for name, value in
                  (("WAV", "wav"), ("FLAC", "flac"), ("OGG Vorbis", "ogg"))]


NO_BPM = "Give a bpm, or start a jam in this channel with /jam start: loops made here then take its tempo."


@dataclass(frozen=True)
class Placed:
    """Where a new loop's shape and key come from: the user's options, or the channel's running jam."""

    shape: LoopShape
    key: str | None = None
    jam_id: int | None = None
    note: str | None = None
    """Set when the jam's shape replaced one the user asked for: told to them alone."""


def no_such_loop(job_id: str) -> UserFacingError:
    return UserFacingError(f"There is no loop with the id {quote(job_id, 40)}. /history lists them.")


class Loops(commands.Cog):
    def __init__(self, bot: BotCore) -> None:
        self.bot = bot

    # --- checks shared by every way of queueing -------------------------------------------------

    def check_channel(self, interaction: discord.Interaction) -> None:
        """Refuse before queueing (and before downloading an upload) when the loop could not be posted here.

        Whether the server allows loops in this channel is the queue's check (`/settings channel`).
        """
        if interaction.guild_id is None:
            raise UserFacingError("LoopJam makes loops in servers, not in direct messages.")
        missing = [name for name, needed in REQUIRED_PERMISSIONS if needed and not getattr(interaction.app_permissions, name)]
        if missing:
            words = ", ".join(name.replace("_", " ") for name in missing)
            raise UserFacingError(f"I can't post loops in this channel: I need the {words} permission here.")

    async def find_loop(self, interaction: discord.Interaction, job_id: str) -> Generation:
        """The loop `job_id` of this server: another server's loop is refused as an unknown id is."""
        row = None
        if interaction.guild_id is not None:  # in a DM no id resolves: loops belong to servers
            row = await self.bot.read_db(get_guild_generation, job_id, interaction.guild_id)
        if row is None:
            raise no_such_loop(job_id)
        return row

    async def place(self, interaction: discord.Interaction, bpm: float | None, bars: int | None, meter: str | None) -> Placed:
        """The shape (and key and jam) of a loop asked for here: the running jam's, else the options given."""
        jam: Placed | None = await self.bot.read_db(_in_jam, interaction.channel_id)
        if jam is None:
            if bpm is None:
                raise UserFacingError(NO_BPM)
            return Placed(LoopShape(bpm, bars or 4, BEATS_BY_METER[meter or "4/4"]))
        shape = jam.shape
        asked = LoopShape(bpm or shape.bpm, bars or shape.bars, BEATS_BY_METER[meter] if meter else shape.beats_per_bar)
        if same_shape(asked, shape):
            return jam
        return replace(jam, note=(
            f"This channel's Jam #{jam.jam_id} plays {embeds.shape_text(shape, jam.key)}, so your loop is made at that, "
            f"not at the {embeds.shape_text(asked)} you asked for. For another tempo or length, ask in another channel."))

    def role_ids(self, interaction: discord.Interaction) -> frozenset[int]:
        roles = getattr(interaction.user, "roles", None) or []
        return frozenset(role.id for role in roles)

    async def enqueue(self, interaction: discord.Interaction, request: JobRequest) -> None:
        """Submit, answer with the queue position (or the refusal), and follow the job."""
        self.check_channel(interaction)
        result = await self.bot.service.submit(request)
        if isinstance(result, Refused):
            if result.retry_after is not None and result.without_wait is not None:
                raise RateLimited(result.without_wait, result.retry_after)
            raise UserFacingError(result.message)
        assert isinstance(result, Accepted)
        line = embeds.request_line(request.prompt, request.shape, request.key)
        embed = embeds.queued_embed(result.job_id, line, result.position, result.eta_seconds, interaction.user)
        self.bot.tracker.track(TrackedJob(result.job_id, line, interaction, mixing=request.kind is JobKind.MIX))
        if interaction.response.is_done():  # deferred (/loopify, while downloading): the follow-up fills the reply
            await interaction.followup.send(embed=embed, view=cancel_view(result.job_id), allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(embed=embed, view=cancel_view(result.job_id), allowed_mentions=NO_PINGS)

    async def enqueue_placed(self, interaction: discord.Interaction, request: JobRequest, placed: Placed) -> None:
        """`enqueue` a loop placed by `place`, then tell its requester alone when the jam's shape replaced theirs."""
        await self.enqueue(interaction, replace(request, shape=placed.shape, key=placed.key, jam_id=placed.jam_id))
        if placed.note:
            with contextlib.suppress(discord.HTTPException):  # the loop is queued: a lost note must not undo that
                await interaction.followup.send(placed.note, ephemeral=True, allowed_mentions=NO_PINGS)

    # --- /loop ----------------------------------------------------------------------------------

    @app_commands.command(name="loop", description="Make a loop that repeats seamlessly at an exact tempo.")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What it should sound like, e.g. “dusty boom bap, vinyl crackle”",
        bpm=f"Tempo in beats per minute, {BPM_MIN:g} to {BPM_MAX:g} (decimals allowed); in a jam, the jam's",
        bars="Length in bars (default 4; in a jam, the jam's)",
        meter="Time signature (default 4/4; in a jam, the jam's)",
        variations=f"How many different loops to make at once (1-{MAX_VARIATIONS})",
        temperature="Sampling temperature: lower is safer, higher is wilder (default 1.0)",
        top_k="Sample from the k most likely tokens (default 250)",
        top_p="Sample from the smallest set reaching this probability (0 = off)",
        cfg="How closely to follow the prompt (default 3.0)",
        seed="Seed, to get the same loop again",
        model="Which MusicGen model to use",
        format="Audio format of the file (default WAV)",
    )
    @app_commands.choices(bars=BARS_CHOICES, meter=METER_CHOICES, format=FORMAT_CHOICES)  # type: ignore[misc]  # int and str choices together
    async def loop(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, PROMPT_MAX_CHARS],
        bpm: app_commands.Range[float, BPM_MIN, BPM_MAX] | None = None,
        bars: int | None = None,
        meter: str | None = None,
        variations: app_commands.Range[int, 1, MAX_VARIATIONS] = 1,
        temperature: app_commands.Range[float, 0.05, 2.0] | None = None,
        top_k: app_commands.Range[int, 0, 2048] | None = None,
        top_p: app_commands.Range[float, 0.0, 1.0] | None = None,
        cfg: app_commands.Range[float, 0.0, 10.0] | None = None,
        seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,
        model: str | None = None,
        format: str = "wav",
    ) -> None:
        if model is not None:
            model = self.bot.allowed_model(model)
        placed = await self.place(interaction, bpm, bars, meter)
        request = JobRequest(
            user_id=interaction.user.id, prompt=prompt, shape=placed.shape,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id, role_ids=self.role_ids(interaction),
            model=model, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, cfg_coef=cfg,
            variations=variations, audio_format=format,
        )
        await self.enqueue_placed(interaction, request, placed)

    @loop.autocomplete("prompt")
    async def recent_prompts(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        rows = await self.bot.read_db(
            lambda session: list_history(session, user_id=interaction.user.id, guild_id=interaction.guild_id,
                                         search=current or None, limit=25)
        )
        unique = list(dict.fromkeys(row.prompt for row in rows))[:25]
        return [app_commands.Choice(name=prompt[:100], value=prompt[:PROMPT_MAX_CHARS]) for prompt in unique]

    @loop.autocomplete("model")
    async def configured_models(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return self.bot.model_choices(current)

    # --- /loopify -------------------------------------------------------------------------------

    @app_commands.command(name="loopify", description="Make an exact-tempo loop from an audio file you upload.")
    @app_commands.guild_only()
    @app_commands.describe(file=f"An audio file (WAV, FLAC, OGG, MP3), at most {MAX_SOURCE_SECONDS / 60:g} minutes",
                           bpm="Its tempo in BPM (in a jam, the jam's)",
                           bars="Length of the loop in bars (default 4; in a jam, the jam's)",
                           meter="Time signature (default 4/4; in a jam, the jam's)")
    @app_commands.choices(bars=BARS_CHOICES, meter=METER_CHOICES)  # type: ignore[misc]  # int and str choices together
    async def loopify(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        bpm: app_commands.Range[float, BPM_MIN, BPM_MAX] | None = None,
        bars: int | None = None,
        meter: str | None = None,
    ) -> None:
        content_type = file.content_type or ""
        if not content_type.startswith(AUDIO_TYPES):
            raise UserFacingError(f"{quote(file.filename, 80)} is not an audio file. Upload WAV, FLAC, OGG or MP3.")
        if file.size > MAX_UPLOAD_BYTES:
            raise UserFacingError(f"That file is {file_size(file.size)}; the limit is {file_size(MAX_UPLOAD_BYTES)}.")
        self.check_channel(interaction)
        placed = await self.place(interaction, bpm, bars, meter)
        # Answered before the download, which can take longer than the 3 seconds Discord waits.
        await interaction.response.defer(thinking=True)
        try:
            source = await self.download(file)
            request = JobRequest(
                user_id=interaction.user.id, prompt=f"loopify: {shortened(file.filename, UPLOAD_NAME_CHARS)}",
                shape=placed.shape, guild_id=interaction.guild_id,
                channel_id=interaction.channel_id, role_ids=self.role_ids(interaction), source_audio=source,
            )
            try:
                await self.enqueue_placed(interaction, request, placed)
            except (UserFacingError, QueueUnavailable):
                Path(source).unlink(missing_ok=True)  # not queued: the upload is not kept
                raise
        except Exception:
            # The first follow-up would fill the public "thinking" message: without it the error is the user's alone.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            raise

    async def download(self, attachment: discord.Attachment) -> str:
        """Stream an uploaded file into the data directory, no more bytes than it declared; returns its path.

        Stored as `<attachment id><extension>`: the user's file name may be any length. The file's
        header is checked against the limits (`check_source`) before the queue sees it.
        """
        uploads = self.bot.settings.storage.data_dir / UPLOADS_DIR
        uploads.mkdir(parents=True, exist_ok=True)
        target = uploads / f"{attachment.id}{audio_extension(attachment.filename)}"
        try:
            await fetch(attachment.url, target, attachment.size)
            await asyncio.to_thread(check_source, target)
        except InvalidRequest as error:
            target.unlink(missing_ok=True)
            raise UserFacingError(str(error)) from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return str(target)

    # --- buttons --------------------------------------------------------------------------------

    async def on_loop_action(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        """Variation, Re-roll, Double (queue a new job, charged to whoever pressed) or Info."""
        row = await self.find_loop(interaction, job_id)
        if action == "info":
            await interaction.response.send_message(embed=info_embed(row), ephemeral=True)
            return
        kinds = {"variation": JobKind.VARIATION, "reroll": JobKind.REROLL, "double": JobKind.DOUBLE}
        shape = replace(row.shape, bars=row.bars * 2) if action == "double" else row.shape
        if shape.bars > MAX_BARS:
            raise UserFacingError(f"That loop is already {row.bars} bars long, the longest LoopJam makes.")
        request = JobRequest(
            user_id=interaction.user.id, prompt=row.prompt, shape=shape,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id, role_ids=self.role_ids(interaction),
            model=row.model, temperature=row.temperature, top_k=row.top_k, top_p=row.top_p, cfg_coef=row.cfg_coef,
            seed=row.seed if action == "double" else None, kind=kinds[action], parent_loop_id=row.short_id,
            jam_id=None if action == "double" else row.jam_id,  # twice the bars could never join the jam
        )
        await self.enqueue(interaction, request)

    async def on_cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        result = await self.bot.service.cancel(job_id, interaction.user.id, guild_id=interaction.guild_id)
        if result.outcome is CancelOutcome.ALREADY_FINISHED:
            # A reply whose token expired (e.g. across a restart) still shows Cancel: point it at the loop.
            if await show_where_it_went(interaction, await self.find_loop(interaction, job_id)):
                return
        if not result.ok:
            raise UserFacingError(result.message)
        await interaction.response.edit_message(embed=discord.Embed(title="Cancelled", description=result.message), view=None)


def _in_jam(session: tp.Any, channel_id: int | None) -> Placed | None:
    """A loop asked for in the channel, placed in its running jam; None when no jam runs there."""
    jam = running_jam(session, channel_id) if channel_id is not None else None
    return Placed(jam.shape, jam.key, jam.id) if jam is not None else None


def info_embed(row: tp.Any) -> discord.Embed:
    embed = discord.Embed(title=f"Loop {row.short_id}", description=quote(row.prompt, 1000))
    fields = {
        "Sent to the model": quote(row.prompt_sent, 1000), "BPM": f"{row.bpm:g}", "Bars": row.bars,
        "Beats per bar": row.beats_per_bar, "Seed": row.seed, "Model": quote(model_label(row.model), 100),
        "Temperature": row.temperature, "Top-k": row.top_k, "Top-p": row.top_p, "CFG": row.cfg_coef,
        "Kind": row.kind.value, "Status": row.status.value, "Source tempo": row.source_bpm,
        "Stretch": row.stretch_ratio, "Seam score": row.seam_score, "Tempo stability": row.tempo_stability,
        "Grid error (ms)": row.grid_error_ms,
        "Loudness (LUFS)": row.loudness_lufs, "Verdict": row.verdict, "Key found": row.source_key,
        "Key confidence": row.key_confidence, "Moved to": row.target_key if row.key_shift_semitones else None,
        "Shift (semitones)": row.key_shift_semitones or None, "Asked by": f"<@{row.user_id}>",
    }
    for name, value in fields.items():
        if value is not None:
            embed.add_field(name=name, value=str(value)[:1024])
    return embed


def audio_extension(filename: str) -> str:
    """The file name's extension when it looks like one (".wav"), else none: soundfile reads the header anyway."""
    suffix = Path(filename).suffix.lower()
    return suffix if EXTENSION.fullmatch(suffix) else ""


async def fetch(url: str, target: Path, max_bytes: int) -> None:
    """Download `url` into `target` in chunks, refusing it once more than `max_bytes` arrive."""
    received = 0
    try:
        async with aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as session, session.get(url) as response:
            if response.status != 200:
                raise UserFacingError(DOWNLOAD_FAILED)
            with target.open("wb") as out:
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise UserFacingError(
                            f"Discord sent more of that file than the {file_size(max_bytes)} it announced, "
                            "so I stopped the download. Please upload it again."
                        )
                    out.write(chunk)
    except (aiohttp.ClientError, TimeoutError):
        raise UserFacingError(DOWNLOAD_FAILED) from None
