"""Shared fixtures: a tiny random MusicGen in audiocraft's real checkpoint format."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MusicGen written by `loopjam model tiny`'s code, loaded like real weights."""
    from generation.model import TINY, write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("models") / "tiny", TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """One engine for the session: loading is the slow part, and the engine keeps no request state."""
    from generation.engine import MusicGenEngine

    return MusicGenEngine.load(str(tiny_model_dir), "cpu")
