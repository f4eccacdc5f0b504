"""A stand-in for `generation.graphs.CudaGraphCapture` on CPU, for the graph tests."""

from __future__ import annotations

import pytest
import torch

from generation.graphs import Step

WHY_GRAPHS_ARE_OFF = {
    "capture": "RuntimeError: operation not permitted when stream is capturing",
    "replay": "RuntimeError: a replay gives other logits than the eager step",
}
"""By `EagerReplay.failure`: why graphs.py says it turned graphs off."""

CAPTURE_FAILURES = pytest.mark.parametrize("failure", sorted(WHY_GRAPHS_ARE_OFF))


class EagerReplay:
    """Stands in for `graphs.CudaGraphCapture` on CPU: a replay runs the step again, on the same
    static tensors, so everything around the graph is what a GPU runs."""

    def __init__(self, failure: str | None = None) -> None:
        self.captures = 0
        self.failure = failure
        """"capture": the capture raises; "replay": a replay gives other logits (a graph reading
        memory it does not own)."""

    def __call__(self, step: Step, device: torch.device) -> Step:
        self.captures += 1
        if self.failure == "capture":
            raise RuntimeError("operation not permitted when stream is capturing")
        step()
        return (lambda: step() + 1.0) if self.failure == "replay" else step

    @property
    def log_line(self) -> str:
        """The one line graphs.py logs when this capture's failure turns graphs off."""
        assert self.failure is not None
        return f"CUDA graphs off, decoding steps run eagerly: {WHY_GRAPHS_ARE_OFF[self.failure]}"
