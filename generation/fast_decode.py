"""MusicGen decoding over audiocraft's own modules and weights, with a preallocated KV cache.

audiocraft's `LMModel.generate` grows each layer's keys and values by concatenation (the whole
cache is copied at every step) and projects the text's cross-attention keys and values again in
every layer at every step. `FastDecoder` runs the same modules (embeddings, norms, projections,
feed-forward, output heads: the state dict as loaded, untouched) in its own step loop:

- the self-attention keys and values go into a cache allocated once for the batch and the longest
  sequence, written in place;
- the cross-attention keys and values of the conditioning are projected once per batch;
- text padding is masked in cross-attention, so a row does not depend on its batch-mates' prompt
  lengths (audiocraft attends to the zero-embedded padding);
- classifier-free guidance is one forward pass over the doubled batch, and the delay pattern, the
  special token and the forced positions come from audiocraft's own pattern objects, as in
  `LMModel.generate`.

Shapes: B requests, R rows (2 B with guidance: the conditional rows then their null-conditioned
twins), K codebooks, T steps fed at once, S pattern steps, H heads of d channels, L conditioning
tokens, D = H d model channels.
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch
from audiocraft.models.lm import LMModel
from audiocraft.modules.codebooks_patterns import Pattern
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes
from audiocraft.modules.transformer import StreamingMultiheadAttention, StreamingTransformerLayer, create_sin_embedding
from torch.nn import functional as F

from .sampling import SamplingParams, sample_next_tokens

StepCallback = tp.Callable[[int, int], None]
"""Called after each step with (steps done, steps in all), as audiocraft's generation callback."""

UNKNOWN_TOKEN = -1
"""A pattern position not generated yet, as in `LMModel.generate`."""

ConditionTensors = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""audiocraft's conditioning output: name -> (embeddings [R, L, D], mask [R, L], 1 = a real token)."""

CrossCache = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, the conditioning's projected cross-attention (keys, values), each [R, H, L, d]."""


def unsupported_reason(lm: LMModel) -> str | None:
    """Why `FastDecoder` cannot run `lm` exactly as audiocraft would, or None when it can.

    It covers the released text-to-music MusicGens (small, medium, large, stereo): pre-norm layers,
    sinusoidal positions, audiocraft's own attention (`memory_efficient`), text by cross-attention.
    """
    if lm.training:
        return "the LM is in training mode"
    if lm.two_step_cfg:
        return "two-step classifier-free guidance"
    other_fusing = sorted(op for op, names in lm.fuser.fuse2cond.items() if names and op != "cross")
    if other_fusing:
        return f"conditions fused by {', '.join(other_fusing)} (melody conditioning)"
    transformer = lm.transformer
    if transformer.positional_embedding != "sin":
        return f"positional embedding {transformer.positional_embedding!r}"
    for layer in transformer.layers:
        if type(layer) is not StreamingTransformerLayer:
            return f"transformer layer {type(layer).__name__}"
        if not layer.norm_first:
            return "post-norm transformer layers"
        attn = layer.self_attn
        if not (attn.custom and attn.causal) or attn.past_context is not None or attn.rope is not None:
            return "self-attention other than causal, unbounded, audiocraft-custom without rope"
        if attn.qk_layer_norm or attn.kv_repeat != 1:
            return "query/key layer norm or repeated key/value heads"
        cross = layer.cross_attention
        if cross is not None and (not cross.custom or cross.qk_layer_norm):
            return "cross-attention other than audiocraft-custom without layer norm"
    return None


@dataclass(frozen=True)
class RowPositions:
    """Each row's own position, for a one-step feed where rows are at different positions."""

    positions: torch.Tensor
    """[R] long: where each row's step goes."""
    end: int
    """One past the furthest position: the cache steps a step attends to."""

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """[R, 1, 1, end] additive mask: 0 up to each row's own position, -inf past it (stale keys of
        an earlier request in its slot, or none). Additive, made once a step: scaled_dot_product_attention
        would turn a boolean mask into this in every layer."""
        past = torch.arange(self.end, device=self.positions.device) > self.positions.view(-1, 1)
        mask = torch.zeros(past.shape, dtype=dtype, device=past.device).masked_fill(past, float("-inf"))
        return mask[:, None, None, :]


@dataclass
class DecodeState:
    """Everything a batch's steps read and write besides the weights."""

    keys: torch.Tensor
    """Self-attention keys, [layers, R, H, S, d]; steps `[0, length)` are filled."""
    values: torch.Tensor
    """Self-attention values, like `keys`."""
    cross: CrossCache | None
    """Per layer, the conditioning's projected cross-attention (keys, values), each [R, H, L, d]."""
    cross_mask: torch.Tensor | None
    """[R, 1, 1, L], True where a row may attend; None when no row has padding to mask."""
    length: int = 0
    """Steps already in the cache: the position of the next step fed."""


class FastDecoder:
    """Decoding of one loaded audiocraft `LMModel`, sharing its modules (see the module's docstring).

    `fixed_shape`: one-step feeds attend over the whole cache (`RowPositions` at every row's
    position, the steps not written yet masked), so every tensor of a step has the same shape at
    every position, as a CUDA graph needs (`generation.graphs`). Off (the CPU default), a step
    attends to the cache up to its position only: less work, and CPU has no graphs to gain.
    """

    def __init__(self, lm: LMModel, fixed_shape: bool = False) -> None:
        reason = unsupported_reason(lm)
        if reason is not None:
            raise ValueError(f"the fast decoder cannot run this model: {reason}")
        self.lm = lm
        self.layers = tp.cast(list[StreamingTransformerLayer], list(lm.transformer.layers))
        self.fixed_shape = fixed_shape

    def conditions(self, attributes: tp.Sequence[ConditioningAttributes]) -> ConditionTensors:
        """The conditioning of B requests then their null twins (2 B rows), as `LMModel.generate` makes it."""
        provider = self.lm.condition_provider
        null = ClassifierFreeGuidanceDropout(p=1.0)(list(attributes))
        return provider(provider.tokenize(list(attributes) + null))

    def start(self, condition_tensors: ConditionTensors, rows: int, steps: int) -> DecodeState:
        """A state for `rows` rows and up to `steps` steps, its cross-attention projected once."""
        return self.state_for(self.project_conditions(condition_tensors), rows, steps)

    def state_for(self, projected: tuple[CrossCache, torch.Tensor] | None, rows: int, steps: int) -> DecodeState:
        """A state with a new zeroed cache for `rows` rows and `steps` steps and conditioning
        `projected` as `project_conditions` gives it."""
        keys, values = self.empty_cache(rows, steps)
        if projected is None:
            return DecodeState(keys, values, None, None)
        cross, mask = projected
        return DecodeState(keys, values, cross, _padding_mask(mask))

    def empty_cache(self, rows: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed self-attention (keys, values) for `rows` rows and `steps` steps, each [layers, R, H, S, d].

        Zeroed, not empty: a row masks the positions it has not written, and a masked NaN left in
        memory would still turn its attention output into NaN.
        """
        heads = self.layers[0].self_attn.num_heads
        shape = (len(self.layers), rows, heads, steps, self.lm.dim // heads)
        keys = torch.zeros(shape, device=self.device, dtype=self.cache_dtype())
        return keys, torch.zeros_like(keys)

    @property
    def device(self) -> torch.device:
        return self.layers[0].self_attn.in_proj_weight.device

    def cache_dtype(self) -> torch.dtype:
        """The precision keys and values come out of their projection in: autocast's where it is
        on (float16 on a GPU), else the weights'."""
        weight = self.layers[0].self_attn.in_proj_weight
        on = torch.is_autocast_enabled(weight.device.type)
        return torch.get_autocast_dtype(weight.device.type) if on else weight.dtype

    def project_conditions(self, condition_tensors: ConditionTensors) -> tuple[CrossCache, torch.Tensor] | None:
        """Per layer, the conditioning's cross-attention (keys, values) [R, H, L, d], and its
        real-token mask [R, L] (bool); None when the model has no cross-attention."""
        lm = self.lm
        if self.layers[0].cross_attention is None:
            return None
        rows = next(iter(condition_tensors.values()))[0].shape[0]
        # The fuser concatenates every cross-attended condition (and adds positions if configured).
        _, source = lm.fuser(torch.zeros(rows, 0, lm.dim, device=self.device), condition_tensors)
        mask = torch.cat([m for name, (_, m) in condition_tensors.items() if lm.fuser.cond2fuse[name] == "cross"], 1)
        return [_cross_keys_values(_cross_module(layer), source) for layer in self.layers], mask.bool()

    def forward(self, codes: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed `codes` [R, K, T] at the state's position; the logits of the last step, [R, K, card].

        More than one step at a time (a continuation's prompt) only as the first feed.
        """
        steps = codes.shape[-1]
        if steps > 1 and state.length > 0:
            raise ValueError("several steps at once only as the first feed")
        start: int | RowPositions = state.length
        if self.fixed_shape and steps == 1:
            start = RowPositions(torch.full((codes.shape[0],), state.length, device=codes.device), state.keys.shape[3])
        logits = self.step(codes, state.keys, state.values, state.cross, state.cross_mask, start)
        state.length += steps
        return logits

    def step(self, codes: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cross: CrossCache | None,
             cross_mask: torch.Tensor | None, start: int | RowPositions) -> torch.Tensor:
        """Feed `codes` [R, K, T] to R rows of a cache; the logits of the last step, [R, K, card].

        `keys`/`values` [layers, R, H, S, d] and `cross`/`cross_mask` (see `DecodeState`) are the
        rows' (views into a larger cache are written in place). `start` is the position of the first
        step fed: every row's (an int; T steps, causal among themselves), or each row's own (one
        step, T = 1, each row attending to its own positions only).
        """
        lm, transformer = self.lm, self.lm.transformer
        steps = codes.shape[-1]
        x = sum(lm.emb[k](codes[:, k]) for k in range(lm.num_codebooks))
        assert isinstance(x, torch.Tensor)
        where: int | tuple[RowPositions, torch.Tensor]
        if isinstance(start, int):
            positions = torch.arange(start, start + steps, device=x.device).view(1, -1, 1)
            where = start
        else:
            if steps != 1:
                raise ValueError("rows at their own positions take one step at a time")
            positions = start.positions.view(-1, 1, 1)
            where = start, start.attention_mask(keys.dtype)
        x = x + transformer.positional_scale * create_sin_embedding(
            positions, x.shape[-1], max_period=transformer.max_period, dtype=x.dtype
        )
        for index, layer in enumerate(self.layers):
            x = x + layer.layer_scale_1(self_attention(
                layer.self_attn, layer.norm1(x), keys[index], values[index], where
            ))
            if cross is not None:
                layer_keys, layer_values = cross[index]
                x = x + layer.layer_scale_cross(
                    cross_attention(_cross_module(layer), layer.norm_cross(x), layer_keys, layer_values, cross_mask)
                )
            x = x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))
        out = x[:, -1:]
        if lm.out_norm is not None:
            out = lm.out_norm(out)
        return torch.stack([linear(out) for linear in lm.linears], dim=1)[:, :, 0]

    def guided_logits(self, codes: torch.Tensor, state: DecodeState, cfg_coef: float) -> torch.Tensor:
        """Logits with classifier-free guidance: `codes` [B, K, T] over 2 B state rows -> [B, K, card]."""
        conditional, unconditional = self.forward(torch.cat([codes, codes]), state).split(codes.shape[0])
        return guided(conditional, unconditional, cfg_coef)

    def generate(
        self,
        attributes: tp.Sequence[ConditioningAttributes],
        prompt: torch.Tensor | None,
        max_gen_len: int,
        params: SamplingParams,
        generators: tp.Sequence[torch.Generator],
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Tokens [B, K, max_gen_len] (the prompt [B, K, T] included), row i sampled with `generators[i]`.

        The same steps as audiocraft's `LMModel.generate` with guidance in one pass.
        """
        lm = self.lm
        device = next(lm.parameters()).device
        batch = len(attributes)
        if prompt is None:
            prompt = torch.zeros((batch, lm.num_codebooks, 0), dtype=torch.long, device=device)
        pattern, sequence, valid, first = pattern_start(lm, prompt, max_gen_len)
        total = sequence.shape[-1]
        state = self.start(self.conditions(attributes), 2 * batch, total)
        previous = 0
        for offset in range(first, total):
            logits = self.guided_logits(sequence[..., previous:offset], state, params.cfg_coef)
            next_token = sample_next_tokens(logits, params, generators)
            step = slice(offset, offset + 1)
            sequence[..., step] = placed(next_token, sequence[..., step], valid[..., step], lm.special_token_id)
            previous = offset
            if callback is not None:
                callback(1 + offset - first, total - first)
        out, _, _ = pattern.revert_pattern_sequence(sequence, special_token=UNKNOWN_TOKEN)
        return out[..., :max_gen_len]


def pattern_start(lm: LMModel, prompt: torch.Tensor, length: int) -> tuple[Pattern, torch.Tensor, torch.Tensor, int]:
    """A decoding's pattern for `length` frames whose first P are `prompt` [B, K, P]: (pattern, its
    sequence [B, K, S] with the prompt in and the rest unknown, the valid positions [K, S], the first
    pattern step to sample), as `LMModel.generate` sets them up."""
    prompt_len = prompt.shape[-1]
    if not prompt_len < length:
        raise ValueError(f"a prompt of {prompt_len} frames leaves nothing to generate in {length}")
    pattern = lm.pattern_provider.get_pattern(length)
    codes = torch.full((prompt.shape[0], lm.num_codebooks, length), UNKNOWN_TOKEN, dtype=torch.long, device=prompt.device)
    codes[..., :prompt_len] = prompt
    sequence, _, valid = pattern.build_pattern_sequence(codes, lm.special_token_id)
    first = pattern.get_first_step_with_timesteps(prompt_len)
    assert first is not None
    return pattern, sequence, valid, first


def guided(conditional: torch.Tensor, unconditional: torch.Tensor, cfg_coef: float) -> torch.Tensor:
    """Classifier-free guidance of a step's logits [B, K, card] (each row's and its null twin's)."""
    return unconditional + (conditional - unconditional) * cfg_coef


def placed(next_token: torch.Tensor, current: torch.Tensor, valid: torch.Tensor, special_token: int) -> torch.Tensor:
    """What one pattern step holds once `next_token` is sampled (`current` shaped like it, `valid`
    broadcasting to it): the model never predicts the special token, so positions the pattern
    leaves empty get it, and positions already known (a prompt's) keep their token."""
    return torch.where(current == UNKNOWN_TOKEN, torch.where(valid, next_token, special_token), current)


def _cross_module(layer: StreamingTransformerLayer) -> StreamingMultiheadAttention:
    return tp.cast(StreamingMultiheadAttention, layer.cross_attention)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[R, T, H d] -> [R, H, T, d]."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[R, H, T, d] -> [R, T, H d]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _padding_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """[R, L] real-token mask -> [R, 1, 1, L] attention mask, None when there is nothing to mask.

    A row with no real token at all (a null condition) attends to every position, as audiocraft
    does: they are all zero embeddings, so its output does not depend on how many there are.
    """
    mask = attended(mask)
    return None if bool(mask.all()) else mask[:, None, None, :]


def attended(mask: torch.Tensor) -> torch.Tensor:
    """[R, L] real-token mask -> [R, L] what each row attends to: its real tokens, or all of them
    when it has none (a null condition, as in audiocraft; see `_padding_mask`)."""
    return mask | ~mask.any(dim=1, keepdim=True)


def _attend(attn: StreamingMultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention as audiocraft runs it, then the output projection: -> [R, T, D]."""
    dtype = q.dtype
    if attn.attention_as_float32:
        q, k, v = q.float(), k.float(), v.float()
    if mask is not None and mask.dtype not in (torch.bool, q.dtype):
        mask = mask.to(q.dtype)  # an additive mask made in the cache's precision
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return attn.out_proj(_merge_heads(x.to(dtype)))


def self_attention(attn: StreamingMultiheadAttention, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   start: int | tuple[RowPositions, torch.Tensor]) -> torch.Tensor:
    """Causal self-attention of `x` [R, T, D], writing its keys and values into the layer's cache
    `keys`/`values` [R, H, S, d] in place. -> [R, T, D].

    `start`: the position of the first step for every row (an int), or each row's own with its
    attention mask (`RowPositions.attention_mask`), T = 1.
    """
    rows, steps, _ = x.shape
    projected = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    # audiocraft's packing: "b t (p h d)" with p = q, k, v.
    q, k, v = projected.view(rows, steps, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    if isinstance(start, int):
        end = start + steps
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        # Causal masking matters only within a multi-step first feed; one step sees the whole cache.
        return _attend(attn, q, keys[:, :, :end], values[:, :, :end], causal=steps > 1)
    own, mask = start
    every_row = torch.arange(rows, device=x.device)
    keys[every_row, :, own.positions] = k[:, :, 0]
    values[every_row, :, own.positions] = v[:, :, 0]
    return _attend(attn, q, keys[:, :, : own.end], values[:, :, : own.end], mask)


def _cross_keys_values(attn: StreamingMultiheadAttention, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioning `source` [R, L, D] projected to cross-attention (keys, values), each [R, H, L, d]."""
    dim = attn.embed_dim
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    k = F.linear(source, weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
    v = F.linear(source, weight[2 * dim :], None if bias is None else bias[2 * dim :])
    return _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def cross_attention(attn: StreamingMultiheadAttention, x: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Cross-attention of `x` [R, T, D] to projected `keys`/`values` [R, H, L, d], `mask` [R, 1, 1, L]. -> [R, T, D]."""
    dim = attn.embed_dim
    bias = attn.in_proj_bias
    q = F.linear(x, attn.in_proj_weight[:dim], None if bias is None else bias[:dim])
    return _attend(attn, _heads(q, attn.num_heads), keys, values, mask)
