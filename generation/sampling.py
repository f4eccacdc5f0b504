"""Sampling each batch row from its own random generator.

audiocraft draws the next tokens of a whole batch from torch's one global generator, so a row's
audio would depend on which other requests shared its batch. LoopJam records one seed per request
and `/replay` runs that request alone, so each row gets its own `torch.Generator` instead.
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch
from audiocraft.models.lm import LMModel


@dataclass(frozen=True)
class SamplingParams:
    """How each next token is drawn; a temperature of 0 picks the most likely token."""

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0


def keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the `k` most likely tokens. `probs`: [..., card]."""
    kth_value = torch.topk(probs, min(k, probs.shape[-1]), dim=-1).values[..., -1:]
    return probs * (probs >= kth_value)


def keep_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the tokens outside the smallest set whose probability reaches `p`. `probs`: [..., card]."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


class RowSeededLMModel(LMModel):
    """An audiocraft `LMModel` whose sampling uses one generator per batch row.

    Set `row_generators` (one per row) before `generate`; with `None` it samples as audiocraft does.
    """

    row_generators: list[torch.Generator] | None = None

    @classmethod
    def adopt(cls, lm: LMModel) -> LMModel:
        """Give an already built and loaded `LMModel` this sampling behaviour (weights untouched)."""
        lm.__class__ = cls
        adopted = tp.cast(RowSeededLMModel, lm)
        adopted.row_generators = None
        return adopted

    def _guided_logits(self, sequence: torch.Tensor, condition_tensors: dict, cfg_coef: float | None) -> torch.Tensor:
        """Logits of the next step with classifier-free guidance. `sequence`: [B, K, S] -> [B, K, card]."""
        batch = sequence.shape[0]
        if not condition_tensors:
            return self(sequence, conditions=[], condition_tensors={})[:, :, -1]
        # One forward pass over conditional rows then their null-conditioned twins.
        logits = self(torch.cat([sequence, sequence]), conditions=[], condition_tensors=condition_tensors)
        conditional, unconditional = logits[:, :, -1].split(batch)
        coef = self.cfg_coef if cfg_coef is None else cfg_coef
        return unconditional + (conditional - unconditional) * coef

    def _sample_next_token(self, sequence, cfg_conditions, unconditional_state, use_sampling=False,
                           temp=1.0, top_k=0, top_p=0.0, cfg_coef=None, two_step_cfg=None) -> torch.Tensor:
        """Next tokens, [B, K, 1], each row drawn from its own generator."""
        two_step = self.two_step_cfg if two_step_cfg is None else two_step_cfg
        if self.row_generators is None or two_step:
            return super()._sample_next_token(sequence, cfg_conditions, unconditional_state, use_sampling,
                                              temp, top_k, top_p, cfg_coef, two_step_cfg)
        if len(self.row_generators) != sequence.shape[0]:
            raise ValueError(f"{len(self.row_generators)} generators for a batch of {sequence.shape[0]}")
        logits = self._guided_logits(sequence, cfg_conditions, cfg_coef)
        params = SamplingParams(temp if use_sampling else 0.0, top_k, top_p)
        return sample_next_tokens(logits, params, self.row_generators)


def sample_next_tokens(logits: torch.Tensor, params: SamplingParams,
                       generators: tp.Sequence[torch.Generator]) -> torch.Tensor:
    """Next tokens as LoopJam draws them, row i with `generators[i]`. `logits`: [B, K, card] -> [B, K, 1]."""
    if params.temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p > 0.0:
        probs = keep_top_p(probs, params.top_p)
    elif params.top_k > 0:
        probs = keep_top_k(probs, params.top_k)
    return sample_rows(probs, generators)


def sample_rows(probs: torch.Tensor, generators: tp.Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row and codebook, row i drawn with `generators[i]`. `probs`: [B, K, card] -> [B, K, 1].

    The same tokens as `torch.multinomial(probs[i], 1, generator=generators[i])` for each row:
    for one sample, torch takes argmax(p / q) with q ~ Exp(1) (the exponential race). Only the
    noise is drawn row by row; one argmax serves the batch, without multinomial's per-call checks
    (three device synchronisations a row on a GPU).
    """
    noise = torch.stack([torch.empty_like(row).exponential_(1, generator=gen) for row, gen in zip(probs, generators)])
    return torch.argmax(probs / noise, dim=-1, keepdim=True)
