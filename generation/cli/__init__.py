"""The `loopjam` command line: the composition root, which imports every layer and none imports it.

One module per command group; each command imports what is heavy (torch, discord) inside itself,
so `loopjam history` loads neither and only `loopjam run` and `loopjam commands` load the bot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from . import discord_bot, history, jam, loops, model, worker
from .common import CliState

app = typer.Typer(
    help="LoopJam: exact-BPM, seamless loops from MusicGen, for Discord jam channels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file (default ./config.toml).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    CliState.config_file = config


app.command()(loops.generate)
app.add_typer(model.model_app, name="model", help="Make a tiny offline model or inspect a model.")
app.add_typer(history.db_app, name="db")
app.command()(history.history)
app.command()(loops.loopify)
app.command()(loops.key)
app.command()(jam.mix)
app.command()(discord_bot.run)
app.command()(discord_bot.commands)
app.command("worker")(worker.worker)

__all__ = ["app"]
