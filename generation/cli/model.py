"""`loopjam model tiny` and `loopjam model info`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import fail, settings

model_app = typer.Typer(help="Make or inspect MusicGen checkpoints.", no_args_is_help=True)


@model_app.command("tiny")
def model_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random MusicGen in audiocraft's checkpoint format, for offline tests."""
    from ..model import TINY, write_random_checkpoint

    write_random_checkpoint(directory, TINY, seed)
    typer.echo(f"wrote a tiny random MusicGen to {directory}")


@model_app.command("info")
def model_info(name: Annotated[str, typer.Argument(help="Hub name or checkpoint directory.")]) -> None:
    """Print a model's sample rate, frame rate, parameter count and device."""
    from ..model import ModelNotFoundError, check_model_name

    try:
        check_model_name(name)
    except ModelNotFoundError as error:
        raise fail(str(error)) from None
    from ..engine import MusicGenEngine

    conf = settings().model
    engine = MusicGenEngine.load(name, conf.device, conf.decoder)
    typer.echo(f"model:       {name}")
    typer.echo(f"sample rate: {engine.sample_rate} Hz")
    typer.echo(f"frame rate:  {engine.frame_rate:g} Hz")
    typer.echo(f"channels:    {engine.channels}")
    typer.echo(f"parameters:  {engine.parameter_count():,}")
    typer.echo(f"device:      {engine.device}")
