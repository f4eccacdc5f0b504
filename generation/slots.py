"""Continuous batching on `FastDecoder`: a batch of slots that requests join and leave between steps.

A static batch runs until its longest row is done, and a request that arrives meanwhile waits for
all of it. A `SlotBatch` has a fixed number of slots: `admit` puts a request in a free one (its
conditioning's cross-attention keys and values written into the slot's rows, a continuation's
prompt fed in), every `step` advances each occupied slot by one pattern step in one forward pass,
and a row that reaches its end leaves with its tokens and frees its slot for the next request.

Each slot keeps what its request would have alone, so its tokens are the request's alone: its own
pattern sequence (the delay pattern, special token and forced positions as `FastDecoder.generate`
does them), its own position (its sinusoidal embedding, the cache positions it writes and the only
ones it attends to), its own text mask, and its own generator.

Rows: slot s holds rows 2 s (conditional) and 2 s + 1 (its null-conditioned twin), so slots
[0, n) are the contiguous rows [0, 2 n), a view of the cache. A step runs the slots up to the
highest occupied one (a request takes the lowest free slot); a free slot below it is fed a dummy
step whose output is dropped.

On CUDA (a `graphs.GraphedDecoder` whose graphs are on), a step replays a CUDA graph captured over
this batch's own cache, one per bucket of slots stepped (the slots up to the highest occupied one
rounded up to `graphs.BATCH_BUCKETS`, at most every slot) and cache: the rows' codes and
positions are copied into the graph's static inputs, its logits copied out, sampling runs outside
it; the rows past the occupied ones' are fed the free slots' dummy step, and the text mask is
always passed. The cache then grows to multiples of `graphs.STEP_ROUNDING` steps and
`graphs.TEXT_ROUNDING` text tokens; a cache that grows drops the graphs tied to the old one. A
failed capture turns graphs off as on the static path (`GraphedDecoder.captured`). On CPU no graph
is involved and the steps attend to the cache up to the furthest position only.

Shapes: N slots, R = 2 N rows (Rb of a graph's bucket), K codebooks, S pattern steps of the longest
request (its cache length), L text tokens of the longest conditioning.
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch
from audiocraft.modules.codebooks_patterns import Pattern

from .fast_decode import (
    UNKNOWN_TOKEN,
    ConditionTensors,
    CrossCache,
    FastDecoder,
    RowPositions,
    attended,
    guided,
    pattern_start,
    placed,
)
from .graphs import STEP_ROUNDING, TEXT_ROUNDING, GraphedDecoder, Step, batch_bucket, rounded
from .sampling import SamplingParams, sample_next_tokens

Key = tp.Hashable
"""Whatever the caller names a request by."""


@dataclass
class _Slot:
    """One admitted request."""

    key: Key
    pattern: Pattern
    length: int
    """Frames to generate, the prompt's included (`max_gen_len`)."""
    total: int
    """Pattern steps: the request is done when `offset` reaches it."""
    first: int
    """The first pattern step sampled (after the prompt)."""
    offset: int
    """The pattern step sampled next; step `offset - 1` is fed."""
    generator: torch.Generator
    masked: bool
    """Its conditioning has padding in the batch's text cache: cross-attention needs the mask."""


@dataclass(frozen=True)
class _SlotGraph:
    """The step of a batch's first slots captured on its cache (`GraphedDecoder.captured`)."""

    codes: torch.Tensor
    """[Rb, K, 1] long: the step's codes, copied in."""
    positions: torch.Tensor
    """[Rb] long: each row's position, copied in."""
    replay: Step


@dataclass(frozen=True)
class FinishedRow:
    key: Key
    codes: torch.Tensor
    """[K, length] tokens, the prompt's first."""


class SlotBatch:
    """`slots` requests decoded together, each joining and leaving at a step boundary (see the module).

    Every request shares `params` (top-k/top-p, temperature, guidance); `steps` sizes the cache for
    the pattern steps of the longest request expected (a longer one grows it, copying it once).
    Steps run under the caller's `torch.no_grad()` and autocast, as `FastDecoder.generate`'s.
    """

    def __init__(self, decoder: FastDecoder, slots: int, params: SamplingParams, steps: int = 1) -> None:
        if slots < 1:
            raise ValueError("a slot batch needs at least one slot")
        self.decoder = decoder
        self.params = params
        lm = decoder.lm
        self._slots: list[_Slot | None] = [None] * slots
        self._keys, self._values = decoder.empty_cache(2 * slots, steps)
        device = self._keys.device
        self._sequences = torch.full((slots, lm.num_codebooks, steps), UNKNOWN_TOKEN, dtype=torch.long, device=device)
        self._valid = torch.zeros((slots, lm.num_codebooks, steps), dtype=torch.bool, device=device)
        self._cross: CrossCache | None = None
        self._text_mask = torch.ones((2 * slots, 0), dtype=torch.bool, device=device)
        self._graphs: dict[tuple[int, bool], _SlotGraph] = {}
        """By (slots stepped, autocast on): graphs over the current cache tensors."""

    # --- who is in ---------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return self._slots.count(None)

    @property
    def admitted(self) -> list[Key]:
        """The requests decoding now, by slot."""
        return [slot.key for slot in self._slots if slot is not None]

    def __len__(self) -> int:
        return len(self._slots) - self.free

    def progress(self, key: Key) -> tuple[int, int]:
        """(steps done, steps in all) of a request, as `FastDecoder.generate`'s callback counts them."""
        slot = self._slots[self._index(key)]
        assert slot is not None
        return slot.offset - slot.first, slot.total - slot.first

    def remove(self, key: Key) -> None:
        """Drop a request (cancelled); its slot is free from the next step."""
        self._slots[self._index(key)] = None

    def _index(self, key: Key) -> int:
        for index, slot in enumerate(self._slots):
            if slot is not None and slot.key == key:
                return index
        raise KeyError(key)

    # --- joining -----------------------------------------------------------------------------

    def admit(self, key: Key, conditions: ConditionTensors, prompt: torch.Tensor | None, length: int,
              generator: torch.Generator) -> None:
        """Put a request in the lowest free slot: `length` frames in all, `prompt` [K, P] its first P.

        `conditions` has two rows, the request's then its null twin, as `FastDecoder.conditions`
        makes them for one request. Their cross-attention is projected into the slot's rows and the
        prompt fed in now; the request takes its first step with the batch's next `step`.
        """
        if self.free == 0:
            raise RuntimeError("no free slot")
        if any(slot is not None and slot.key == key for slot in self._slots):
            raise ValueError(f"{key!r} is decoding already")
        lm, index = self.decoder.lm, self._slots.index(None)
        if prompt is None:
            prompt = torch.zeros((lm.num_codebooks, 0), dtype=torch.long, device=self._keys.device)
        pattern, sequence, valid, first = pattern_start(lm, prompt[None], length)
        total = sequence.shape[-1]
        self._reserve_steps(total)
        self._sequences[index, :, :total] = sequence[0]
        self._valid[index, :, :total] = valid
        rows = slice(2 * index, 2 * index + 2)
        masked = self._write_conditions(rows, conditions)
        slot = _Slot(key, pattern, length, total, first, first, generator, masked)
        if first > 1:  # a prompt: its steps but the last go in at once; the last is the first `step`'s feed
            fed = sequence[..., : first - 1].expand(2, -1, -1)
            self.decoder.step(fed, self._keys[:, rows], self._values[:, rows], self._cross_rows(rows),
                              self._text_mask_rows(rows, masked), 0)
        self._slots[index] = slot

    def _write_conditions(self, rows: slice, conditions: ConditionTensors) -> bool:
        """Project a request's conditioning (it, then its null twin) into `rows`; whether it needs the mask."""
        projected = self.decoder.project_conditions(conditions)
        if projected is None:
            return False
        cross, mask = projected
        tokens = mask.shape[-1]
        self._reserve_text(cross, tokens)
        assert self._cross is not None
        for (keys, values), (new_keys, new_values) in zip(self._cross, cross):
            keys[rows, :, :tokens] = new_keys
            values[rows, :, :tokens] = new_values
        # A row with no real token (the null twin) attends to all of its own: audiocraft's choice
        # (see `fast_decode._padding_mask`), and the padding of longer batch-mates' text is masked.
        self._text_mask[rows] = False
        self._text_mask[rows, :tokens] = attended(mask)
        return not bool(self._text_mask[rows].all())

    def _reserve_steps(self, steps: int) -> None:
        """Grow the self-attention cache and the pattern sequences to `steps` pattern steps."""
        have = self._keys.shape[3]
        if steps <= have:
            return
        if isinstance(self.decoder, GraphedDecoder):
            steps = rounded(steps, STEP_ROUNDING)  # fewer cache lengths, fewer graphs to capture
        self._graphs.clear()  # they read and write the old cache
        keys, values = self.decoder.empty_cache(2 * len(self._slots), steps)
        keys[:, :, :, :have] = self._keys
        values[:, :, :, :have] = self._values
        self._keys, self._values = keys, values
        grow = (0, steps - have)
        self._sequences = torch.nn.functional.pad(self._sequences, grow, value=UNKNOWN_TOKEN)
        self._valid = torch.nn.functional.pad(self._valid, grow, value=False)

    def _reserve_text(self, like: CrossCache, tokens: int) -> None:
        """Grow the cross-attention cache (shaped like `like`, per layer [R, H, L, d]) to `tokens` text tokens."""
        have = self._text_mask.shape[1]
        if self._cross is not None and tokens <= have:
            return
        rows = self._text_mask.shape[0]
        if isinstance(self.decoder, GraphedDecoder):
            tokens = rounded(tokens, TEXT_ROUNDING)  # fewer text lengths, fewer graphs to capture
        self._graphs.clear()  # they read the old cross-attention cache and mask
        grown = []
        for index, (keys, values) in enumerate(like):
            shape = (rows, keys.shape[1], max(tokens, have), keys.shape[3])
            new_keys, new_values = keys.new_zeros(shape), values.new_zeros(shape)
            if self._cross is not None:
                new_keys[:, :, :have] = self._cross[index][0]
                new_values[:, :, :have] = self._cross[index][1]
            grown.append((new_keys, new_values))
        self._cross = grown
        # The rows of a slot never admitted attend to all of their (zero) text: a graph's step feeds
        # them, and a row attending to nothing is NaN in some CUDA attention kernels (pytorch#110213),
        # which would fail the graph's check against the eager step (torch's CPU kernels give zeros).
        self._text_mask = attended(torch.nn.functional.pad(self._text_mask, (0, max(tokens, have) - have), value=False))
        for index, slot in enumerate(self._slots):
            if slot is not None:
                slot.masked = not bool(self._text_mask[2 * index : 2 * index + 2].all())

    def _cross_rows(self, rows: slice) -> CrossCache | None:
        return None if self._cross is None else [(keys[rows], values[rows]) for keys, values in self._cross]

    def _text_mask_rows(self, rows: slice, masked: bool) -> torch.Tensor | None:
        """[R, 1, 1, L] for cross-attention, None when no row of `rows` has text padding to mask."""
        return self._text_mask[rows, None, None, :] if masked else None

    # --- decoding ----------------------------------------------------------------------------

    def step(self) -> list[FinishedRow]:
        """One pattern step for every occupied slot; the requests this step finished, which leave.

        With a `GraphedDecoder` whose graphs are on, the step runs in a graph of the slots up to the
        highest occupied one rounded up to a bucket (`graphs.BATCH_BUCKETS`, at most every slot),
        tied to this batch's cache: captured at the first step of that bucket over it, replayed at
        the next ones, dropped when the cache grows.
        """
        occupied = [index for index, slot in enumerate(self._slots) if slot is not None]
        if not occupied:
            return []
        lm, device = self.decoder.lm, self._keys.device
        graph_slots = self._graph_slots(occupied[-1] + 1)
        count = occupied[-1] + 1 if graph_slots is None else graph_slots
        slots = [tp.cast(_Slot, self._slots[index]) for index in occupied]
        # Slot i feeds its step `offset - 1`; a free slot below `count` its step 0 (a dummy, dropped).
        fed = [0] * count
        for index, slot in zip(occupied, slots):
            fed[index] = slot.offset - 1
        fed_at = torch.tensor(fed, device=device)
        codes = self._sequences[:count].gather(2, fed_at.view(-1, 1, 1).expand(-1, lm.num_codebooks, 1))
        codes = codes.clamp(min=0)  # a free slot's stale sequence may hold unknown tokens
        codes, positions = codes.repeat_interleave(2, dim=0), fed_at.repeat_interleave(2)
        logits = None if graph_slots is None else self._replayed(graph_slots, codes, positions)
        if logits is None:
            rows = slice(0, 2 * count)
            masked = any(slot.masked for slot in slots)
            logits = self.decoder.step(
                codes, self._keys[:, rows], self._values[:, rows], self._cross_rows(rows),
                self._text_mask_rows(rows, masked), RowPositions(positions, max(fed) + 1),
            )
        taken = torch.tensor(occupied, device=device)
        # Indexing by `taken` copies the occupied rows' logits out (of the graph's output too).
        logits = guided(logits[0::2][taken], logits[1::2][taken], self.params.cfg_coef)
        next_token = sample_next_tokens(logits, self.params, [slot.generator for slot in slots])[..., 0]
        at = fed_at[taken] + 1
        self._sequences[taken, :, at] = placed(
            next_token, self._sequences[taken, :, at], self._valid[taken, :, at], lm.special_token_id
        )
        return self._advance(occupied)

    def _graph_slots(self, count: int) -> int | None:
        """The slots a step of the first `count` runs in a graph of (its bucket, at most every
        slot); None where steps run eagerly (not a `GraphedDecoder`, graphs off, past the buckets)."""
        decoder = self.decoder
        if not isinstance(decoder, GraphedDecoder):
            return None
        if decoder.failure is not None:
            self._graphs.clear()
            return None
        bucket = batch_bucket(count)
        return None if bucket is None else min(bucket, len(self._slots))

    def _replayed(self, slots: int, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """The step of the first `slots` slots (`codes` [Rb, K, 1], `positions` [Rb]) in its graph,
        captured if new: the graph's own logits [Rb, K, card], valid until its next replay. None if
        the capture turned graphs off (the decoder logs it)."""
        decoder = tp.cast(GraphedDecoder, self.decoder)
        key = (slots, torch.is_autocast_enabled(codes.device.type))
        graph = self._graphs.get(key)
        if graph is None:
            rows = slice(0, 2 * slots)
            # The static inputs hold this step's before the capture, which runs the step on them.
            static_codes, static_positions = codes.clone(), positions.clone()
            replay = decoder.captured(
                static_codes, self._keys[:, rows], self._values[:, rows], self._cross_rows(rows),
                None if self._cross is None else self._text_mask[rows, None, None, :], static_positions,
            )
            if replay is None:
                return None
            graph = self._graphs[key] = _SlotGraph(static_codes, static_positions, replay)
        graph.codes.copy_(codes)
        graph.positions.copy_(positions)
        return graph.replay()

    def _advance(self, occupied: list[int]) -> list[FinishedRow]:
        finished = []
        for index in occupied:
            slot = self._slots[index]
            assert slot is not None
            slot.offset += 1
            if slot.offset == slot.total:
                sequence = self._sequences[index : index + 1, :, : slot.total].contiguous()
                codes, _, _ = slot.pattern.revert_pattern_sequence(sequence, special_token=UNKNOWN_TOKEN)
                finished.append(FinishedRow(slot.key, codes[0, :, : slot.length]))
                self._slots[index] = None
        return finished
