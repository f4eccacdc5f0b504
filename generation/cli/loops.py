"""`loopjam generate`, `loopjam loopify` and `loopjam key`: loops made (and keys found) on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..config import ALLOWED_BARS, ALLOWED_BEATS_PER_BAR, BPM_MAX, BPM_MIN
from ..jobs.api import MAX_VARIATIONS
from ..seeds import new_seed, variation_seeds
from ..shape import LoopShape
from .common import FORMAT_HELP, KEY_HELP, check_format, checked_shape, fail, settings, source_failure, target_key, warn_if_explicit

if TYPE_CHECKING:
    from ..loop import LoopReport


def _one_of(values: tuple[int, ...]) -> str:
    """(1, 2, 4) -> '1, 2 or 4'."""
    return f"{', '.join(map(str, values[:-1]))} or {values[-1]}"


BPM_RANGE = f"{BPM_MIN:g} to {BPM_MAX:g} (decimals allowed)."
BARS_HELP = f"Loop length in bars: {_one_of(ALLOWED_BARS)}."
BEATS_HELP = f"Beats per bar: {_one_of(ALLOWED_BEATS_PER_BAR)}."


def generate(
    prompt: Annotated[str, typer.Argument(help="What the loop should sound like.")],
    bpm: Annotated[float, typer.Option(help=f"Tempo, {BPM_RANGE}")],
    bars: Annotated[int, typer.Option(help=BARS_HELP)] = 4,
    beats_per_bar: Annotated[int, typer.Option(help=BEATS_HELP)] = 4,
    variations: Annotated[int, typer.Option(min=1, max=MAX_VARIATIONS, help=f"How many loops to make (1-{MAX_VARIATIONS}).")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed of the first loop (the delivered seed is in the output).")] = None,
    model: Annotated[str | None, typer.Option(help="Hub name or checkpoint directory.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k sampling (0: off).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Top-p sampling (0: off).")] = None,
    cfg: Annotated[float | None, typer.Option(help="Classifier-free guidance coefficient.")] = None,
    out: Annotated[Path, typer.Option(help="Directory to write the loops to.")] = Path("out"),
    fmt: Annotated[str, typer.Option("--format", help="wav, wav24, flac or ogg.")] = "wav",
    exact: Annotated[bool, typer.Option("--exact", help="Generate only --seed, no best-of-N (as /replay does).")] = False,
    key: Annotated[str | None, typer.Option(help=KEY_HELP + " Also named in the prompt.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
) -> None:
    """Generate exact-BPM loops from a prompt with MusicGen."""
    from ..audio_io import FORMATS, extension, write_audio
    from ..prompts import InvalidRequest, build_prompt, validate_request

    conf = settings()
    shape = LoopShape(bpm, bars, beats_per_bar)
    try:
        text = validate_request(prompt, shape)
    except InvalidRequest as error:
        raise fail(str(error)) from None
    if fmt not in FORMATS:
        raise fail(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
    target = target_key(key)
    model_name = model or conf.model.name
    from ..model import ModelNotFoundError, check_model_name

    try:
        check_model_name(model_name)
    except ModelNotFoundError as error:
        raise fail(str(error)) from None

    from ..engine import MusicGenEngine, SamplingParams
    from ..music import prompt_words
    from ..pipeline import LoopMaker, LoopSpec

    built = build_prompt(text, shape, prompt_words(target) if target is not None else None)
    params = SamplingParams(
        temperature=conf.generation.temperature if temperature is None else temperature,
        top_k=conf.generation.top_k if top_k is None else top_k,
        top_p=conf.generation.top_p if top_p is None else top_p,
        cfg_coef=conf.generation.cfg_coef if cfg is None else cfg,
    )
    seeds = variation_seeds(new_seed() if seed is None else seed, variations)
    specs = [LoopSpec(built.text, shape, each, params, exact_seed=exact, key=target) for each in seeds]
    engine = MusicGenEngine.load(model_name, conf.model.device, conf.model.decoder)
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
                       f"{': ' + loop.report.reason if loop.report.reason else ''}; {key_line(loop.report)})")
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


def loopify(
    audio: Annotated[Path, typer.Argument(help="Any audio file soundfile reads (wav, flac, ogg, mp3...).")],
    bpm: Annotated[float, typer.Option(help=f"Tempo of the loop, {BPM_RANGE}")],
    bars: Annotated[int, typer.Option(help=BARS_HELP)] = 4,
    beats_per_bar: Annotated[int, typer.Option(help=BEATS_HELP)] = 4,
    out: Annotated[Path | None, typer.Option(help="Output file (default: AUDIO's name + '.loop').")] = None,
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "wav",
    waveform: Annotated[Path | None, typer.Option(help="Also write a waveform PNG with bar lines here.")] = None,
    key: Annotated[str | None, typer.Option(help=KEY_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
) -> None:
    """Make an exact-BPM, seamless loop from an audio file you have."""
    from ..audio_io import extension, write_audio
    from ..prompts import InvalidRequest, check_source

    conf = settings()
    shape = checked_shape(bpm, bars, beats_per_bar)
    check_format(fmt)
    target = target_key(key)
    try:
        check_source(audio, str(audio))  # before the loop engine's imports (seconds): a refusal is quick
        from ..loop.source import loop_file

        result = loop_file(audio, shape, conf.loop, str(audio))
    except InvalidRequest as error:
        raise source_failure(audio, error) from None
    from ..loop.keyed import in_key

    result = in_key(result, target, conf.loop)

    from ..loop.waveform import waveform_png

    path = out or audio.with_name(f"{audio.stem}.loop.{extension(fmt)}")
    warn_if_explicit(fmt)
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
    typer.echo(f"wrote {path}: {result.audio.shape[1]} samples at {result.sample_rate} Hz, verdict {report.verdict}; {key_line(report)}")
    if report.reason:
        typer.echo(report.reason)


def key_line(report: LoopReport) -> str:
    """The loop's key as people read it: "key C# minor (0.91), moved -4 semitones into A minor"."""
    found = f"key {report.source_key} ({report.key_confidence:.2f})" if report.source_key else "no key (unpitched)"
    if report.target_key is None:
        return found
    if report.key_shift_semitones:
        return f"{found}, moved {report.key_shift_semitones:+d} semitones into {report.target_key}"
    return f"{found}, left as it is for {report.target_key}"


def key(
    audio: Annotated[Path, typer.Argument(help="Any audio file soundfile reads (wav, flac, ogg, mp3...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
) -> None:
    """Detect the key of an audio file (tonic and mode), or that it has none (drums)."""
    from ..prompts import InvalidRequest, check_source

    try:
        check_source(audio, str(audio))
        from ..loop.source import read_checked

        samples, rate = read_checked(audio, str(audio))
    except InvalidRequest as error:
        raise source_failure(audio, error) from None
    from ..music.detect import detect_key

    estimate = detect_key(samples, rate)
    name = estimate.key.name if estimate.key is not None else None
    if as_json:
        typer.echo(json.dumps({"path": str(audio), "key": name, "confidence": round(estimate.confidence, 3)}))
    else:
        typer.echo(f"{name} (confidence {estimate.confidence:.2f})" if name else "no key: the audio is unpitched (drums?)")
