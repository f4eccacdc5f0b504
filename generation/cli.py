"""The `loopjam` command line. Heavy imports (torch, discord) happen inside the commands."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .config import Settings, SettingsError, load_settings
from .shape import LoopShape

app = typer.Typer(
    help="LoopJam: exact-BPM, seamless loops from MusicGen, for Discord jam channels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Make or inspect MusicGen checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model", help="Make a tiny offline model or inspect a model.")


class CliState:
    config_file: Path | None = None


def fail(message: str) -> typer.Exit:
    """Print one clear line on stderr; the caller raises the returned exit (code 2)."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(2)


def settings() -> Settings:
    try:
        return load_settings(CliState.config_file)
    except SettingsError as error:
        raise fail(str(error)) from None


@app.callback()
def main(
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file (default ./config.toml).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    CliState.config_file = config


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the loop should sound like.")],
    bpm: Annotated[float, typer.Option(help="Tempo, 40 to 240 (decimals allowed).")],
    bars: Annotated[int, typer.Option(help="Loop length in bars: 1, 2, 4 or 8.")] = 4,
    beats_per_bar: Annotated[int, typer.Option(help="Beats per bar: 2, 3, 4, 6 or 7.")] = 4,
    variations: Annotated[int, typer.Option(min=1, max=4, help="How many loops to make (1-4).")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed of the first loop (the delivered seed is in the output).")] = None,
    model: Annotated[str | None, typer.Option(help="Hub name or checkpoint directory.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k sampling (0: off).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Top-p sampling (0: off).")] = None,
    cfg: Annotated[float | None, typer.Option(help="Classifier-free guidance coefficient.")] = None,
    out: Annotated[Path, typer.Option(help="Directory to write the loops to.")] = Path("out"),
    fmt: Annotated[str, typer.Option("--format", help="wav, wav24, flac or ogg.")] = "wav",
    exact: Annotated[bool, typer.Option("--exact", help="Generate only --seed, no best-of-N (as /replay does).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
) -> None:
    """Generate exact-BPM loops from a prompt with MusicGen."""
    from .audio_io import FORMATS, extension, write_audio
    from .prompts import InvalidRequest, build_prompt, validate_request

    conf = settings()
    shape = LoopShape(bpm, bars, beats_per_bar)
    try:
        text = validate_request(prompt, shape)
    except InvalidRequest as error:
        raise fail(str(error)) from None
    if fmt not in FORMATS:
        raise fail(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
    model_name = model or conf.model.name
    from .model import ModelNotFoundError, check_model_name

    try:
        check_model_name(model_name)
    except ModelNotFoundError as error:
        raise fail(str(error)) from None

    from .engine import MusicGenEngine, SamplingParams, new_seed
    from .pipeline import LoopMaker, LoopSpec

    built = build_prompt(text, shape)
    params = SamplingParams(
        temperature=conf.generation.temperature if temperature is None else temperature,
        top_k=conf.generation.top_k if top_k is None else top_k,
        top_p=conf.generation.top_p if top_p is None else top_p,
        cfg_coef=conf.generation.cfg_coef if cfg is None else cfg,
    )
    first_seed = new_seed() if seed is None else seed
    # Variations are spaced so their candidate and retry seeds never overlap.
    seed_stride = conf.generation.candidates * (1 + conf.generation.retry_budget)
    specs = [
        LoopSpec(built.text, shape, first_seed + i * seed_stride, params, exact_seed=exact)
        for i in range(variations)
    ]
    engine = MusicGenEngine.load(model_name, conf.model.device)
    maker = LoopMaker(engine, conf.generation, conf.loop)
    outcomes = _make_with_progress(maker, specs, show=not as_json and sys.stdout.isatty())

    files = []
    for outcome in outcomes:
        if outcome.loop is None:
            raise fail(outcome.error or "no loop could be made")
        loop = outcome.loop
        path = write_audio(out / f"loop-{outcome.seed}.{extension(fmt)}", loop.audio, loop.sample_rate, fmt)
        files.append({
            "path": str(path), "samples": int(loop.audio.shape[-1]), "sample_rate": loop.sample_rate,
            "bpm": bpm, "bars": bars, "beats_per_bar": beats_per_bar, "seed": outcome.seed,
            "model": model_name, "prompt": built.text, **loop.report.as_dict(),
        })
        if not as_json:
            typer.echo(f"wrote {path} (seed {outcome.seed}, {loop.report.verdict}"
                       f"{': ' + loop.report.reason if loop.report.reason else ''})")
    if built.tempo_note and not as_json:
        typer.echo(built.tempo_note)
    if as_json:
        typer.echo(json.dumps({"files": files, "tempo_note": built.tempo_note}))


def _make_with_progress(maker, specs, show: bool):
    """Make the loops, with a rich progress bar showing the stage when `show`."""
    if not show:
        return maker.make(specs)
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("generating", total=100)
        return maker.make(specs, on_stage=lambda stage, pct: bar.update(task, description=stage, completed=pct))


@model_app.command("tiny")
def model_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random MusicGen in audiocraft's checkpoint format, for offline tests."""
    from .model import TINY, write_random_checkpoint

    write_random_checkpoint(directory, TINY, seed)
    typer.echo(f"wrote a tiny random MusicGen to {directory}")


@model_app.command("info")
def model_info(name: Annotated[str, typer.Argument(help="Hub name or checkpoint directory.")]) -> None:
    """Print a model's sample rate, frame rate, parameter count and device."""
    from .model import ModelNotFoundError, check_model_name

    try:
        check_model_name(name)
    except ModelNotFoundError as error:
        raise fail(str(error)) from None
    from .engine import MusicGenEngine

    engine = MusicGenEngine.load(name, settings().model.device)
    typer.echo(f"model:       {name}")
    typer.echo(f"sample rate: {engine.sample_rate} Hz")
    typer.echo(f"frame rate:  {engine.frame_rate:g} Hz")
    typer.echo(f"channels:    {engine.channels}")
    typer.echo(f"parameters:  {engine.parameter_count():,}")
    typer.echo(f"device:      {engine.device}")


# Storage commands live in generation/storage/cli.py; registered here, after `fail` and `settings`.
from .storage.cli import db_app, history  # noqa: E402

app.add_typer(db_app, name="db")
app.command()(history)


@app.command()
def loopify(
    audio: Annotated[Path, typer.Argument(help="Any audio file soundfile reads (wav, flac, ogg, mp3...).")],
    bpm: Annotated[float, typer.Option(help="Tempo of the loop, 40 to 240 (decimals allowed).")],
    bars: Annotated[int, typer.Option(help="Loop length in bars: 1, 2, 4 or 8.")] = 4,
    beats_per_bar: Annotated[int, typer.Option(help="Beats per bar: 2, 3, 4, 6 or 7.")] = 4,
    out: Annotated[Path | None, typer.Option(help="Output file (default: AUDIO's name + '.loop').")] = None,
    fmt: Annotated[str, typer.Option("--format", help="wav, wav24, flac or ogg; mp3 only if you must.")] = "wav",
    waveform: Annotated[Path | None, typer.Option(help="Also write a waveform PNG with bar lines here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
) -> None:
    """Make an exact-BPM, seamless loop from an audio file you have."""
    from .audio_io import EXPLICIT_FORMATS, FORMATS, MP3_WARNING, audio_duration, extension, format_available, read_audio, write_audio

    max_seconds = 600.0
    conf = settings()
    shape = LoopShape(bpm, bars, beats_per_bar)
    if (problem := shape.problem()) is not None:
        raise fail(problem)
    if fmt not in FORMATS and fmt not in EXPLICIT_FORMATS:
        raise fail(f"Unknown format {fmt!r}: use one of {', '.join([*FORMATS, *EXPLICIT_FORMATS])}.")
    if not format_available(fmt):
        raise fail(f"This libsndfile cannot write {fmt}; use one of {', '.join(FORMATS)}.")
    try:
        seconds = audio_duration(audio)
        samples, rate = read_audio(audio) if seconds <= max_seconds else (None, 0)
    except (OSError, RuntimeError) as error:  # soundfile raises LibsndfileError (a RuntimeError)
        raise fail(f"Cannot read {audio}: {str(error).splitlines()[0]}") from None
    if samples is None:
        raise fail(f"{audio} is {seconds / 60:.1f} minutes long; the limit is {max_seconds / 60:g} minutes.")
    if samples.shape[1] == 0:
        raise fail(f"{audio} contains no audio.")

    from .loop import make_loop
    from .loop.waveform import waveform_png

    result = make_loop(samples, rate, shape, settings=conf.loop)
    path = out or audio.with_name(f"{audio.stem}.loop.{extension(fmt)}")
    if fmt in EXPLICIT_FORMATS:
        typer.echo(f"Warning: {MP3_WARNING}", err=True)
    write_audio(path, result.audio, result.sample_rate, fmt)
    if waveform is not None:
        waveform.parent.mkdir(parents=True, exist_ok=True)
        waveform.write_bytes(waveform_png(result.audio, shape))
    report = result.report
    if as_json:
        typer.echo(json.dumps({
            "path": str(path), "samples": int(result.audio.shape[1]), "sample_rate": result.sample_rate,
            "bpm": bpm, "bars": bars, "beats_per_bar": beats_per_bar, **report.as_dict(),
        }))
        return
    typer.echo(f"wrote {path}: {result.audio.shape[1]} samples at {result.sample_rate} Hz, verdict {report.verdict}")
    if report.reason:
        typer.echo(report.reason)


@app.command()
def run(
    sync_guild: Annotated[int | None, typer.Option(help="Sync commands to this guild only (instant; for development).")] = None,
) -> None:
    """Start the Discord bot (and, in embedded mode, its GPU worker)."""
    conf = settings()
    if conf.token is None:
        from bot.runner import NO_TOKEN

        raise fail(NO_TOKEN)
    from bot.runner import run as run_bot

    logging.getLogger().setLevel(logging.INFO)
    run_bot(conf, sync_guild=sync_guild)


@app.command()
def commands() -> None:
    """Print the slash commands as JSON, exactly as they would be synced to Discord."""
    from bot.runner import command_schema_json

    typer.echo(command_schema_json(settings()))


# Distributed mode's GPU worker lives in generation/jobs/distributed/cli.py.
from .jobs.distributed.cli import worker  # noqa: E402

app.command("worker")(worker)
