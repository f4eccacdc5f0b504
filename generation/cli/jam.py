"""`loopjam mix`: loops layered into one exact, seamless loop, with stems on request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import FORMAT_HELP, KEY_HELP, check_format, checked_shape, fail, settings, source_failure, target_key, warn_if_explicit
from .loops import BARS_HELP, BEATS_HELP, BPM_RANGE

MAX_GAIN_DB = 60.0


def mix(
    bpm: Annotated[float, typer.Option(help=f"Tempo of the jam, {BPM_RANGE}")],
    bars: Annotated[int, typer.Option(help=BARS_HELP)],
    loops: Annotated[list[Path] | None, typer.Argument(
        help="The loops to layer, in order (any audio file soundfile reads). Exact loops of this tempo and length "
             "are layered as they are; others are cut by the loop engine first.", show_default=False, metavar="LOOP",
    )] = None,
    beats_per_bar: Annotated[int, typer.Option(help=BEATS_HELP)] = 4,
    gain_db: Annotated[list[float] | None, typer.Option(
        "--gain-db", help="Level of a layer in dB after loudness matching; once per layer, in order (default 0 for all).",
        show_default=False,
    )] = None,
    out: Annotated[Path | None, typer.Option(help="Output file (default: mix.<format> in this directory).")] = None,
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "wav",
    duck: Annotated[bool, typer.Option("--duck", help="The drum layer's kick ducks the other layers a few dB.")] = False,
    stems: Annotated[Path | None, typer.Option(help="Also write each layer as an exact loop here, with jam.json.")] = None,
    key: Annotated[str | None, typer.Option(help=KEY_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
) -> None:
    """Layer loops into one exact-BPM, seamless loop (a jam's mix)."""
    from ..audio_io import extension, write_audio
    from ..prompts import InvalidRequest, check_source

    conf = settings()
    shape = checked_shape(bpm, bars, beats_per_bar)
    check_format(fmt)
    target = target_key(key)
    paths, gains = loops or [], gain_db or []
    if not paths:
        raise fail("Nothing to mix: give the loops, e.g. loopjam mix drums.wav bass.wav --bpm 92 --bars 4.")
    if gains and len(gains) != len(paths):
        raise fail(f"{len(gains)} --gain-db values for {len(paths)} loops: give one per loop, in order, or none.")
    if any(not -MAX_GAIN_DB <= gain <= MAX_GAIN_DB for gain in gains):  # also refuses nan
        raise fail(f"--gain-db must be between -{MAX_GAIN_DB:g} and {MAX_GAIN_DB:g} dB.")
    if stems is not None and stems.exists() and not stems.is_dir():
        raise fail(f"--stems {stems} is a file; give a directory.")
    for path in paths:  # every header before the engine's imports (seconds): a refusal is quick
        try:
            check_source(path, str(path))
        except InvalidRequest as error:
            raise source_failure(path, error) from None

    from ..jam import mix_layers, read_layer, write_stems

    layers = []
    for path, gain in zip(paths, gains or [0.0] * len(paths)):
        try:
            layers.append(read_layer(path, gain))
        except InvalidRequest as error:
            raise source_failure(path, error) from None
    result = mix_layers(layers, shape, conf.loop, duck=duck, key=target)

    path = out or Path(f"mix.{extension(fmt)}")
    warn_if_explicit(fmt)
    for number, layer in enumerate(result.layers, start=1):
        if layer.report is not None and layer.report.reason:
            typer.echo(f"Warning: layer {number} ({layer.origin.file}) was cut to the jam's length: {layer.report.reason}", err=True)
    write_audio(path, result.audio, result.sample_rate, fmt)
    written = write_stems(result, stems, fmt, conf.loop.true_peak_dbtp) if stems is not None else None
    if as_json:
        typer.echo(json.dumps({
            "path": str(path), "samples": int(result.audio.shape[1]), "sample_rate": result.sample_rate,
            "bpm": bpm, "bars": bars, "beats_per_bar": beats_per_bar, "key": result.key.name if result.key else None,
            "loudness_lufs": round(result.loudness_lufs, 4) if result.loudness_lufs is not None else None,
            "layers": [layer.as_dict() for layer in result.layers],
            "stems": [str(each) for each in written] if written is not None else None,
        }))
        return
    conformed = sum(layer.conformed for layer in result.layers)
    loudness = f"{result.loudness_lufs:.1f} LUFS" if result.loudness_lufs is not None else "silent"
    typer.echo(f"wrote {path}: {result.audio.shape[1]} samples at {result.sample_rate} Hz, "
               f"{len(result.layers)} layers ({conformed} cut to length), {loudness}")
    if target is not None:
        moved = [f"layer {number} {layer.shift_semitones:+d}"
                 for number, layer in enumerate(result.layers, start=1) if layer.shift_semitones]
        typer.echo(f"in {target.name}: " + (", ".join(moved) + " semitones" if moved else "every layer was in key already"))
    if duck:
        drums = [f"layer {number} ({layer.origin.file})" for number, layer in enumerate(result.layers, start=1) if layer.drum]
        typer.echo(f"ducked by the kick of {drums[0]}" if drums else "no layer has a kick: nothing was ducked")
    if written is not None:
        typer.echo(f"wrote {len(written) - 1} stems and {written[-1].name} to {stems}")
