"""A stand-in for `generation.graphs.CudaGraphCapture` on CPU, for the graph tests."""

from __future__ import annotations

import torch

from generation.graphs import Step


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
