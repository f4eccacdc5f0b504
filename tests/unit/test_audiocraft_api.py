"""The private parts of audiocraft that LoopJam relies on are still there, with the same signatures.

`generation/sampling.py` overrides `LMModel._sample_next_token` (its signature changed on
audiocraft's main branch after 1.3.0), `generation/engine.py` calls MusicGen's private token
methods, and `generation/fast_decode.py` runs the transformer's modules itself (and
`generation/slots.py` through it, with audiocraft's delay pattern). An audiocraft upgrade that
moves any of these fails here, naming what changed and which module to update, instead of failing
deep inside a generation (or, worse, silently decoding differently).
"""

from __future__ import annotations

import inspect
import typing as tp

import pytest
from audiocraft.models.lm import LMModel
from audiocraft.models.musicgen import MusicGen
from audiocraft.modules.codebooks_patterns import Pattern
from audiocraft.modules.transformer import create_sin_embedding

from generation.model import TINY, build_random_lm

SIGNATURES: list[tuple[tp.Callable[..., tp.Any], tuple[str, ...], str]] = [
    (LMModel._sample_next_token,
     ("self", "sequence", "cfg_conditions", "unconditional_state", "use_sampling", "temp", "top_k", "top_p",
      "cfg_coef", "two_step_cfg"), "generation/sampling.py (RowSeededLMModel)"),
    (LMModel.forward, ("self", "sequence", "conditions", "condition_tensors", "stage"), "generation/sampling.py"),
    (MusicGen._prepare_tokens_and_attributes, ("self", "descriptions", "prompt", "melody_wavs"), "generation/engine.py"),
    (MusicGen._generate_tokens, ("self", "attributes", "prompt_tokens", "progress"), "generation/engine.py"),
    (MusicGen.set_generation_params,
     ("self", "use_sampling", "top_k", "top_p", "temperature", "duration", "cfg_coef", "two_step_cfg", "extend_stride"),
     "generation/engine.py"),
    (MusicGen.set_custom_progress_callback, ("self", "progress_callback"), "generation/engine.py"),
    (Pattern.build_pattern_sequence, ("self", "z", "special_token", "keep_only_valid_steps"), "generation/fast_decode.py (pattern_start)"),
    (Pattern.revert_pattern_sequence, ("self", "s", "special_token", "keep_only_valid_steps"), "generation/fast_decode.py and slots.py"),
    (Pattern.get_first_step_with_timesteps, ("self", "t", "q"), "generation/fast_decode.py (pattern_start)"),
    (create_sin_embedding, ("positions", "dim", "max_period", "dtype"), "generation/fast_decode.py"),
]

# Attributes `generation/fast_decode.py` reads, on a built LM and its parts.
LM_ATTRIBUTES = ("emb", "linears", "out_norm", "fuser", "condition_provider", "pattern_provider", "transformer",
                 "special_token_id", "num_codebooks", "card", "dim", "two_step_cfg", "training")
TRANSFORMER_ATTRIBUTES = ("layers", "positional_embedding", "positional_scale", "max_period")
LAYER_ATTRIBUTES = ("self_attn", "cross_attention", "norm1", "norm2", "norm_cross", "norm_first",
                    "layer_scale_1", "layer_scale_2", "layer_scale_cross", "_ff_block")
ATTENTION_ATTRIBUTES = ("in_proj_weight", "in_proj_bias", "out_proj", "num_heads", "embed_dim", "custom", "causal",
                        "past_context", "rope", "qk_layer_norm", "kv_repeat", "attention_as_float32")
FUSER_ATTRIBUTES = ("fuse2cond", "cond2fuse")


@pytest.mark.parametrize("function, expected, user", SIGNATURES, ids=lambda v: getattr(v, "__qualname__", None))
def test_signature_is_the_one_loopjam_was_written_for(
    function: tp.Callable[..., tp.Any], expected: tuple[str, ...], user: str
) -> None:
    found = tuple(inspect.signature(function).parameters)
    assert found == expected, (
        f"audiocraft's {function.__qualname__} changed: LoopJam expects ({', '.join(expected)}), "
        f"the installed audiocraft has ({', '.join(found)}); update {user}"
    )


def test_modules_have_the_attributes_the_fast_decoder_reads() -> None:
    lm = build_random_lm(TINY)
    layer = lm.transformer.layers[0]
    parts = [
        ("LMModel", lm, LM_ATTRIBUTES), ("StreamingTransformer", lm.transformer, TRANSFORMER_ATTRIBUTES),
        ("StreamingTransformerLayer", layer, LAYER_ATTRIBUTES), ("ConditionFuser", lm.fuser, FUSER_ATTRIBUTES),
        ("StreamingMultiheadAttention (self)", layer.self_attn, ATTENTION_ATTRIBUTES),
        ("StreamingMultiheadAttention (cross)", layer.cross_attention, ATTENTION_ATTRIBUTES),
    ]
    missing = [f"{name}.{attribute}" for name, obj, attributes in parts for attribute in attributes
               if not hasattr(obj, attribute)]
    assert not missing, (
        f"the installed audiocraft's modules lack {', '.join(missing)}: update generation/fast_decode.py "
        "(or set [model] decoder = \"audiocraft\" meanwhile)"
    )
