"""How LoopJam's messages look: queue notices, progress, results, history pages."""

from __future__ import annotations

import typing as tp

import discord

from generation.config import model_label
from generation.prompts import METER_BY_BEATS, printable
from generation.shape import LoopShape, format_bpm

from .text import quote

COLOUR = discord.Colour.from_rgb(88, 101, 242)
FAILED_COLOUR = discord.Colour.red()
BAR_CELLS = 20
STAGE_WORDS = {
    "queued": "Queued",
    "generating": "Generating",
    "retrying": "Trying again for a cleaner loop",
    "looping": "Cutting the loop",
    "uploading": "Uploading",
}
MIX_STAGE_WORDS = {"looping": "Mixing the layers"}
"""A jam's mix reports its work as the "looping" stage: reading its layers, then mixing them."""


def progress_bar(percent: float) -> str:
    filled = round(max(0.0, min(100.0, percent)) / 100 * BAR_CELLS)
    return "█" * filled + "░" * (BAR_CELLS - filled) + f" {percent:.0f}%"


def describe_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f", about {max(5, round(seconds / 5) * 5):.0f} s"
    return f", about {seconds / 60:.0f} min"


def meter_text(shape: LoopShape) -> str:
    return METER_BY_BEATS.get(shape.beats_per_bar, f"{shape.beats_per_bar}/4")


def shape_text(shape: LoopShape, key: str | None = None) -> str:
    """ "92 BPM · 4 bars · 4/4", and " · A minor" when a key is asked for."""
    bars = shape.bars
    text = f"{format_bpm(shape.bpm)} BPM · {bars} bar{'s' if bars != 1 else ''} · {meter_text(shape)}"
    return f"{text} · {key}" if key else text


def request_line(prompt: str, shape: LoopShape, key: str | None = None) -> str:
    return f"“{quote(prompt)}” · {shape_text(shape, key)}"


def queued_embed(job_id: str, request: str, position: int, eta: float | None, requester: discord.abc.User) -> discord.Embed:
    embed = discord.Embed(title="Queued", description=request, colour=COLOUR)
    embed.add_field(name="Position", value=f"{position}{describe_eta(eta)}")
    embed.set_footer(text=f"{job_id} · asked by {printable(requester.display_name)}")
    return embed


def progress_embed(
    job_id: str, request: str, stage: str, percent: float, position: int | None = None, *, mixing: bool = False,
) -> discord.Embed:
    title = (MIX_STAGE_WORDS.get(stage) if mixing else None) or STAGE_WORDS.get(stage, stage.title())
    if stage == "queued" and position is not None:
        title = f"Queued, position {position}"
    embed = discord.Embed(title=title, description=request, colour=COLOUR)
    if stage != "queued":
        embed.add_field(name="Progress", value=f"`{progress_bar(percent)}`", inline=False)
    embed.set_footer(text=job_id)
    return embed


def failed_embed(job_id: str, request: str, reason: str) -> discord.Embed:
    embed = discord.Embed(title="No loop this time", description=f"{request}\n\n{reason}", colour=FAILED_COLOUR)
    embed.set_footer(text=job_id)
    return embed


def result_embed(
    job_id: str,
    request: str,
    report: dict[str, tp.Any],
    seed: int,
    model: str,
    duration_s: float,
    credit: str,
    note: str | None = None,
) -> discord.Embed:
    verdict = report.get("verdict", "good")
    embed = discord.Embed(title="Your loop", description=request, colour=COLOUR)
    stretch = report.get("stretch_ratio") or 1.0
    source_bpm = report.get("source_bpm")
    tempo = f"played at {source_bpm:.1f} BPM, stretched {100 * (stretch - 1):+.1f} %" if source_bpm else "n/a"
    embed.add_field(name="Tempo", value=tempo)
    embed.add_field(name="Length", value=f"{duration_s:.2f} s")
    embed.add_field(name="Key", value=key_text(report))
    embed.add_field(name="Verdict", value=verdict if verdict == "good" else f"{verdict}: {report.get('reason') or ''}")
    embed.add_field(name="Seed", value=str(seed))
    embed.add_field(name="Model", value=quote(model_label(model), 60))
    if note:
        embed.add_field(name="Note", value=note, inline=False)
    embed.add_field(name="Made", value=credit, inline=False)
    embed.set_footer(text=f"id {job_id} · /replay {job_id}")
    return embed


def key_text(report: tp.Mapping[str, tp.Any]) -> str:
    """The loop's key as the result shows it: "C# minor", "A minor (moved -4 semitones from C# minor)", "none (unpitched)"."""
    found, shift = report.get("source_key"), report.get("key_shift_semitones")
    if found is None:
        return "none (unpitched)"
    if shift and report.get("target_key"):
        return f"{report['target_key']} (moved {shift:+d} semitones from {found})"
    return str(found)


def mix_embed(job_id: str, jam_id: int | None, shape: LoopShape, key: str | None, layers: list[tuple[str, str]],
              credit: str) -> discord.Embed:
    """A jam's mix: its jam, shape and key, and its layers as (loop id, prompt), in order."""
    where = f"Jam #{jam_id} · " if jam_id is not None else ""
    embed = discord.Embed(title="Jam mix", description=f"{where}{shape_text(shape, key)}", colour=COLOUR)
    lines = [f"{number}. “{quote(prompt, 80)}” · `{loop_id}`" for number, (loop_id, prompt) in enumerate(layers, start=1)]
    embed.add_field(name="Layers", value="\n".join(lines) or "none", inline=False)
    embed.add_field(name="Length", value=f"{shape.seconds:.2f} s")
    embed.add_field(name="Made", value=credit, inline=False)
    embed.set_footer(text=f"id {job_id}")
    return embed
