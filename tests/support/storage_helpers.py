"""Helpers for the storage tests: the sample request, and whether this is CI.

The database fixtures themselves (`postgres_url`, `db_url`, `database`) are in tests/conftest.py.
"""

from __future__ import annotations

import os
from dataclasses import replace

from generation.shape import LoopShape
from generation.storage import NewGeneration


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


LOOP_REQUEST = NewGeneration(
    user_id=111111111111111111,
    guild_id=222222222222222222,
    channel_id=333333333333333333,
    prompt="dusty boom bap, vinyl crackle",
    prompt_sent="dusty boom bap, vinyl crackle, 92 bpm",
    shape=LoopShape(bpm=92.0, bars=4),
    temperature=1.0,
    top_k=250,
    top_p=0.0,
    cfg_coef=3.0,
    seed=2**40 + 7,
    model="facebook/musicgen-small",
)


def loop_request(**changes) -> NewGeneration:
    """`LOOP_REQUEST` with some fields changed."""
    return replace(LOOP_REQUEST, **changes)
