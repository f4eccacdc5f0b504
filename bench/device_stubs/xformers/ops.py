"""The names `audiocraft.modules.transformer` takes from `xformers.ops` with torch's attention backend."""

from __future__ import annotations

import torch

unbind = torch.unbind
"""Splits the packed q, k, v projection: xformers' `unbind` returns the same views."""


class LowerTriangularMask:
    """audiocraft only checks that a mask is there, and then asks torch's attention for `is_causal`."""


def memory_efficient_attention(*_: object, **__: object) -> torch.Tensor:
    """Only audiocraft's `xformers` attention backend calls it, and LoopJam never selects that backend."""
    raise NotImplementedError("xformers is a stand-in here (bench/device_stubs): use torch's attention backend")
