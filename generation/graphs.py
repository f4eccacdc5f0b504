"""The fast decoder's one-step feed as a CUDA graph, replayed at every step.

A decoding step launches a few hundred small kernels; on a GPU, at the batch sizes LoopJam runs,
launching them costs more than running them. `GraphedDecoder` captures the fixed-shape step
(`FastDecoder(fixed_shape=True)`: every tensor's shape independent of the position) once as a CUDA
graph per (batch-size bucket, cache length, text length) and replays it at each step: the rows'
codes and position are copied into the graph's static inputs, its static logits copied out, and
sampling (LoopJam's per-row generators) runs outside the graph as before. A continuation's prompt
(several steps at once) is fed eagerly into the same static cache.

Graphs are kept and reused by later batches: a batch of B requests (R = 2 B rows with guidance)
runs in the graph of the smallest bucket of `BATCH_BUCKETS` that holds it (its extra rows are fed
a dummy step whose output is dropped), its pattern steps rounded up to `STEP_ROUNDING` and its
text tokens to `TEXT_ROUNDING` (the steps and tokens past its own are masked). Every graph's static
tensors are views of one set of buffers sized for the largest graph (only one batch decodes at a
time); a larger graph grows them, which drops the graphs captured so far. They stay allocated
between batches: the decoder holds the KV cache of the largest batch it has run (as that batch
itself needed). Graphs share one memory pool for their intermediates. Each new graph is replayed once against the eager step. A batch
past the largest bucket, or any batch once a capture has failed or a replay disagreed (logged
once, with why), runs the same fixed-shape step eagerly.

Continuous batching (`generation.slots.SlotBatch`) replays graphs of its own, over its own cache,
through the same capture, check and fail-safe (`GraphedDecoder.captured`) and buckets.

The engine uses `GraphedDecoder` on CUDA only: on CPU it is never entered. Shapes: Rb rows of a
bucket (2 b), K codebooks, card the codebook size, Sb cache steps, Lb text tokens, H heads of d
channels.
"""

from __future__ import annotations

import logging
import typing as tp
from dataclasses import dataclass

import torch
from audiocraft.models.lm import LMModel

from .fast_decode import ConditionTensors, CrossCache, DecodeState, FastDecoder, RowPositions, attended

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""Requests a graph is captured for; a batch runs in the smallest that holds it."""
STEP_ROUNDING = 256
"""A graph's cache length is a multiple of this many pattern steps (30 s of audio: 6 lengths)."""
TEXT_ROUNDING = 32
"""A graph's text length is a multiple of this many conditioning tokens."""
WARM_UP_CALLS = 2
"""Eager calls on a side stream before capture, as torch's CUDA graph docs do: lazy set-up (cuBLAS
workspaces, kernel choices) must not happen inside the capture."""

REPLAY_TOLERANCE = 0.05
"""How far a new graph's logits may be from the eager step's: the same kernels on the same inputs,
so in practice none; a wrong graph is off by whole units."""

Step = tp.Callable[[], torch.Tensor]
"""A call that reads static tensors and returns its output (logits [Rb, K, card])."""


class Capture(tp.Protocol):
    def __call__(self, step: Step, device: torch.device) -> Step:
        """Capture `step`; returns its replay: the same work on the static tensors' current
        contents, returning the same output tensor."""
        ...


class CudaGraphCapture:
    """Captures steps as CUDA graphs sharing one memory pool (they never run at the same time)."""

    def __init__(self) -> None:
        self._pool: torch.cuda._POOL_HANDLE | None = None

    def __call__(self, step: Step, device: torch.device) -> Step:
        with torch.cuda.device(device):
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), _uncached_autocast():
                for _ in range(WARM_UP_CALLS):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls (the worker's) do not break this capture.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"), _uncached_autocast():
                output = step()

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay


def _uncached_autocast() -> torch.autocast:
    """The autocast in force (audiocraft's `model.autocast` around the decoding), without its cast
    cache: a graph must not read weight casts cached outside it, which autocast frees on exit."""
    return torch.autocast(
        "cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False
    )


@dataclass(frozen=True)
class _Graph:
    """One captured step and its static tensors."""

    codes: torch.Tensor
    """[Rb, K, 1] long: the step's codes, copied in."""
    positions: torch.Tensor
    """[Rb] long: the step's position (every row's), filled in."""
    keys: torch.Tensor
    """[layers, Rb, H, Sb, d], a view of the shared buffer."""
    values: torch.Tensor
    cross: CrossCache | None
    """Per layer (keys, values) [Rb, H, Lb, d], views of the shared buffer."""
    cross_mask: torch.Tensor | None
    """[Rb, 1, 1, Lb] bool: each row's own text tokens."""
    replay: Step


@dataclass(kw_only=True)
class _GraphedState(DecodeState):
    """A batch's state in a graph's static tensors: the rows' views of them."""

    graph: _Graph


class GraphedDecoder(FastDecoder):
    """`FastDecoder` whose one-step feeds replay CUDA graphs (see the module). `capture` is for tests."""

    def __init__(self, lm: LMModel, capture: Capture | None = None) -> None:
        super().__init__(lm, fixed_shape=True)
        self._capture: Capture = capture or CudaGraphCapture()
        self._graphs: dict[tuple[tp.Hashable, ...], _Graph] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self.failure: str | None = None
        """Why graphs are off (a capture raised), None while they are on."""
        self.graphed = False
        """Whether the last batch started runs its steps in a graph."""

    @property
    def graphs(self) -> int:
        """Graphs captured and kept."""
        return len(self._graphs)

    def start(self, condition_tensors: ConditionTensors, rows: int, steps: int) -> DecodeState:
        projected = self.project_conditions(condition_tensors)
        bucket = batch_bucket(-(-rows // 2))
        graph = None
        if bucket is not None and self.failure is None:
            tokens = None if projected is None else rounded(max(1, projected[1].shape[1]), TEXT_ROUNDING)
            try:
                graph = self._graph(2 * bucket, rounded(steps, STEP_ROUNDING), tokens)
            except Exception as error:  # its static buffers (out of memory for a bucket's padding)
                self._turn_off(error)
        self.graphed = graph is not None
        if graph is None:
            return self.state_for(projected, rows, steps)
        return _fill(graph, projected, rows)

    def forward(self, codes: torch.Tensor, state: DecodeState) -> torch.Tensor:
        if not isinstance(state, _GraphedState) or codes.shape[-1] != 1:
            return super().forward(codes, state)
        graph, rows = state.graph, codes.shape[0]
        graph.codes[:rows].copy_(codes)
        graph.positions.fill_(state.length)
        state.length += 1
        return graph.replay()[:rows].clone()

    def _graph(self, rows: int, steps: int, tokens: int | None) -> _Graph | None:
        """The graph for `rows` rows, `steps` cache steps and `tokens` text tokens (None: a model
        without cross-attention), captured if new; None if its capture turned graphs off."""
        dtype = self.cache_dtype()
        key = (rows, steps, tokens, dtype, torch.is_autocast_enabled(self.device.type))
        if key in self._graphs:
            return self._graphs[key]
        heads = self.layers[0].self_attn.num_heads
        head_shape = (heads, steps, self.lm.dim // heads)
        cache = self._buffer("cache", (2, len(self.layers), rows, *head_shape), dtype)
        cross, cross_mask = None, None
        if tokens is not None:
            cross_buffer = self._buffer("cross", (len(self.layers), 2, rows, heads, tokens, self.lm.dim // heads), dtype)
            cross = [(layer[0], layer[1]) for layer in cross_buffer]
            cross_mask = torch.ones((rows, 1, 1, tokens), dtype=torch.bool, device=self.device)
        codes = torch.zeros((rows, self.lm.num_codebooks, 1), dtype=torch.long, device=self.device)
        positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        keys, values = cache[0], cache[1]
        replay = self.captured(codes, keys, values, cross, cross_mask, positions)
        if replay is None:
            return None
        graph = _Graph(codes, positions, keys, values, cross, cross_mask, replay)
        self._graphs[key] = graph
        return graph

    def captured(self, codes: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cross: CrossCache | None,
                 cross_mask: torch.Tensor | None, positions: torch.Tensor) -> Step | None:
        """The fixed-shape one-step feed of static tensors as a graph: its replay, logits [Rb, K, card].

        `codes` [Rb, K, 1] and `positions` [Rb] are the step's inputs (copied in before each
        replay), `keys`/`values` [layers, Rb, H, Sb, d], `cross` and `cross_mask` [Rb, 1, 1, Lb]
        the cache it reads and writes, attended over all Sb steps. Capturing runs the step on their
        current contents (its cache writes, done again by the next replay, are the same). None when
        graphs are off: already, or now because this capture raised or its replay disagreed with
        the eager step (logged once, with why; every graph is dropped).
        """
        if self.failure is not None:
            return None
        where = RowPositions(positions, keys.shape[3])

        def step() -> torch.Tensor:
            return self.step(codes, keys, values, cross, cross_mask, where)

        try:
            replay = self._capture(step, self.device)
            # Once per graph, a replay against the eager step on the same inputs: a graph that read
            # memory it does not own would give other logits, and decoding must not go on with it.
            replayed = replay().float()
            if not torch.allclose(replayed, step().float(), rtol=REPLAY_TOLERANCE, atol=REPLAY_TOLERANCE):
                raise RuntimeError("a replay gives other logits than the eager step")
        except Exception as error:  # any capture failure: decoding goes on eagerly, never fails for it
            self._turn_off(error)
            return None
        return replay

    def _turn_off(self, error: Exception) -> None:
        """Graphs off for good, with one log line saying why; every graph and static buffer dropped."""
        self.failure = f"{type(error).__name__}: {error}"
        log.warning("CUDA graphs off, decoding steps run eagerly: %s", self.failure)
        self._graphs.clear()
        self._buffers.clear()

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A view shaped `shape` of the buffer every graph's `name` tensors share; growing it (or
        changing its precision) drops the graphs, which captured the old one's addresses."""
        size = 1
        for extent in shape:
            size *= extent
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            self._graphs.clear()
            del buffer
            self._buffers.pop(name, None)  # freed before its successor is allocated
            buffer = self._buffers[name] = torch.zeros(size, dtype=dtype, device=self.device)
        return buffer[:size].view(shape)


def _fill(graph: _Graph, projected: tuple[CrossCache, torch.Tensor] | None, rows: int) -> _GraphedState:
    """Set a graph's static tensors for a new batch of `rows` rows; the batch's state over them.

    The rows past the batch's (the bucket's padding) feed code 0 at the batch's position, attending
    to every text token: finite outputs, dropped.
    """
    graph.keys.zero_()
    graph.values.zero_()
    graph.codes.zero_()
    cross_rows, mask_rows = None, None
    if projected is not None:
        assert graph.cross is not None and graph.cross_mask is not None
        cross, mask = projected
        tokens = mask.shape[1]
        for (keys, values), (new_keys, new_values) in zip(graph.cross, cross):
            keys.zero_()
            values.zero_()
            keys[:rows, :, :tokens] = new_keys
            values[:rows, :, :tokens] = new_values
        graph.cross_mask.fill_(True)
        graph.cross_mask[:rows] = False
        graph.cross_mask[:rows, 0, 0, :tokens] = attended(mask)
        cross_rows = [(keys[:rows], values[:rows]) for keys, values in graph.cross]
        mask_rows = graph.cross_mask[:rows]
    return _GraphedState(graph.keys[:, :rows], graph.values[:, :rows], cross_rows, mask_rows, graph=graph)


def batch_bucket(requests: int) -> int | None:
    """The smallest of `BATCH_BUCKETS` holding `requests`; None past the largest."""
    return next((bucket for bucket in BATCH_BUCKETS if bucket >= requests), None)


def rounded(count: int, multiple: int) -> int:
    """`count` rounded up to a multiple of `multiple`."""
    return -(-count // multiple) * multiple
