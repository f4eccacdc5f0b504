"""Seeds: the one definition of a fresh seed and of the seeds of a request's variations.

`loopjam generate` and `/loop` both use it, so the same seed gives the same loops in either.
Importable without torch: the bot's queue uses it too.
"""

from __future__ import annotations

import secrets

VARIATION_SEED_STRIDE = 1000
"""Variation k gets seed + k x this. A loop tries at most candidates x (1 + retry_budget) <= 72
seeds from its own (see `GenerationSettings`), so no two variations ever share a candidate seed,
whatever the settings."""


def new_seed() -> int:
    """A random seed that fits in a signed 63-bit integer (SQL BIGINT and torch both take it)."""
    return secrets.randbits(62)


def variation_seeds(first_seed: int, count: int) -> list[int]:
    """The seeds of `count` variations of one request, the first being `first_seed`."""
    return [first_seed + k * VARIATION_SEED_STRIDE for k in range(count)]
