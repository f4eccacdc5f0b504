"""Loading MusicGen through audiocraft, and writing small random checkpoints in its format.

A checkpoint directory holds what audiocraft's loaders read for a local path:
`state_dict.bin` (the LM: `xp.cfg` and `best_state`) and `compression_state_dict.bin`
(the EnCodec codec, embedded in full). Real weights from the hub and our offline test models
go through the same `MusicGen.get_pretrained` call.
"""

from __future__ import annotations

import contextlib
import logging
import typing as tp
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .sampling import RowSeededLMModel

if tp.TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)

LM_CHECKPOINT = "state_dict.bin"
CODEC_CHECKPOINT = "compression_state_dict.bin"

# The names audiocraft's MusicGen.get_pretrained resolves on the Hugging Face hub.
KNOWN_MODELS = (
    "facebook/musicgen-small",
    "facebook/musicgen-medium",
    "facebook/musicgen-large",
    "facebook/musicgen-melody",
    "facebook/musicgen-melody-large",
    "facebook/musicgen-stereo-small",
    "facebook/musicgen-stereo-medium",
    "facebook/musicgen-stereo-large",
    "facebook/musicgen-stereo-melody",
    "facebook/musicgen-stereo-melody-large",
)


class ModelNotFoundError(ValueError):
    """The name is neither a known MusicGen release nor a directory holding a checkpoint."""


def choose_device(preference: str = "auto") -> str:
    """CUDA if present, else Apple MPS, else CPU; an explicit preference is taken as given."""
    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_model_name(name: str) -> None:
    """Raise `ModelNotFoundError` unless `name` is a known release or a checkpoint directory."""
    path = Path(name)
    if path.is_dir():
        missing = [f for f in (LM_CHECKPOINT, CODEC_CHECKPOINT) if not (path / f).is_file()]
        if missing:
            raise ModelNotFoundError(f"{name} is not a MusicGen checkpoint: missing {', '.join(missing)}")
        return
    if name not in KNOWN_MODELS:
        raise ModelNotFoundError(
            f"Unknown model {name!r}: use one of {', '.join(KNOWN_MODELS)} or a checkpoint directory"
        )


def _omegaconf_globals() -> list[tp.Any]:
    """Classes a released checkpoint's pickled OmegaConf `xp.cfg` is made of.

    torch >= 2.6 unpickles with `weights_only=True`, which refuses any class it was not told
    about. Rather than turning that off (which would run arbitrary code from any file), we allow
    exactly OmegaConf's container and node types, which hold data only.
    """
    import collections

    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    return [
        DictConfig, ListConfig, ContainerMetadata, Metadata,
        AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode,
        tp.Any, dict, list, int, collections.defaultdict,
    ]


@contextlib.contextmanager
def allow_omegaconf_checkpoints() -> tp.Iterator[None]:
    """Let `torch.load(weights_only=True)` read checkpoints whose config is an OmegaConf object."""
    with torch.serialization.safe_globals(_omegaconf_globals()):
        yield


@contextlib.contextmanager
def _quiet_weight_norm() -> tp.Iterator[None]:
    """audiocraft's EnCodec still uses the deprecated weight_norm: nothing for users to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        yield


def load_musicgen(name: str, device: str = "auto") -> MusicGen:
    """Load MusicGen by hub name or checkpoint directory through audiocraft's own loader.

    The LM's sampler is switched to `RowSeededLMModel`, which draws each batch row from its own
    random generator, so a request's seed gives the same audio alone or in any batch.
    """
    from audiocraft.models import MusicGen

    check_model_name(name)
    device = choose_device(device)
    with allow_omegaconf_checkpoints(), _quiet_weight_norm():
        model = MusicGen.get_pretrained(name, device=device)
    RowSeededLMModel.adopt(model.lm)
    log.info("loaded %s on %s (%d Hz, %d channel(s))", name, device, model.sample_rate, model.audio_channels)
    return model


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a MusicGen LM and its codec; `TINY` is for tests, `SMALL` and `MEDIUM` match the releases."""

    dim: int
    num_heads: int
    num_layers: int
    card: int
    n_q: int
    codec_filters: int
    codec_dimension: int


TINY = ModelShape(dim=32, num_heads=4, num_layers=2, card=64, n_q=4, codec_filters=4, codec_dimension=32)
SMALL = ModelShape(dim=1024, num_heads=16, num_layers=24, card=2048, n_q=4, codec_filters=64, codec_dimension=128)
MEDIUM = ModelShape(dim=1536, num_heads=24, num_layers=48, card=2048, n_q=4, codec_filters=64, codec_dimension=128)

SAMPLE_RATE = 32000
CODEC_RATIOS = [8, 5, 4, 4]  # hop 640 samples: 50 frames a second at 32 kHz, as released MusicGen
LUT_BINS = 1024


def lm_config(shape: ModelShape) -> dict[str, tp.Any]:
    """An `xp.cfg` for `builders.get_lm_model`, laid out as released MusicGen configs are.

    Text goes through a lookup-table conditioner with audiocraft's `noop` tokenizer (a hash of the
    whole description), so nothing has to be downloaded, unlike T5.
    """
    return {
        "lm_model": "transformer_lm",
        "device": "cpu",
        "dtype": "float32",
        "dataset": {"segment_duration": 30.0, "sample_rate": SAMPLE_RATE, "channels": 1},
        "transformer_lm": {
            "dim": shape.dim, "num_heads": shape.num_heads, "num_layers": shape.num_layers,
            "hidden_scale": 4, "n_q": shape.n_q, "card": shape.card, "dropout": 0.0,
            "emb_lr": None, "activation": "gelu", "norm_first": True, "bias_ff": False,
            "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True,
            "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "layer_scale": None, "positional_embedding": "sin", "xpos": False,
            "checkpointing": "none", "weight_init": "gaussian", "depthwise_init": "current",
            "zero_bias_init": True, "norm": "layer_norm", "cross_attention": False,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None,
            "kv_repeat": 1, "two_step_cfg": False,
        },
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": list(range(shape.n_q)), "flatten_first": 0, "empty_initial": 0},
        },
        "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {
            "cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
            "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": [],
        },
        "conditioners": {
            "description": {"model": "lut", "lut": {"n_bins": LUT_BINS, "dim": shape.dim, "tokenizer": "noop"}},
        },
    }


def codec_config(shape: ModelShape) -> dict[str, tp.Any]:
    """An `xp.cfg` for `builders.get_compression_model`: a mono 32 kHz EnCodec."""
    return {
        "compression_model": "encodec",
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "encodec": {
            "autoencoder": "seanet", "quantizer": "rvq", "sample_rate": SAMPLE_RATE,
            "channels": 1, "causal": False, "renormalize": False,
        },
        "seanet": {
            "dimension": shape.codec_dimension, "channels": 1, "causal": False,
            "n_filters": shape.codec_filters, "n_residual_layers": 1, "ratios": CODEC_RATIOS,
            "activation": "ELU", "activation_params": {"alpha": 1.0}, "norm": "weight_norm",
            "norm_params": {}, "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3,
            "dilation_base": 2, "pad_mode": "constant", "true_skip": True, "compress": 2,
            "lstm": 2, "disable_norm_outer_blocks": 0, "encoder": {}, "decoder": {},
        },
        "rvq": {
            "n_q": shape.n_q, "q_dropout": False, "bins": shape.card, "decay": 0.99,
            "kmeans_init": True, "kmeans_iters": 10, "threshold_ema_dead_code": 2,
            "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False,
            "orthogonal_reg_max_codes": None,
        },
    }


def build_random_lm(shape: ModelShape, seed: int = 0, device: str = "cpu") -> tp.Any:
    """A randomly initialised audiocraft `LMModel` of `shape`, in eval mode, built by audiocraft's builder."""
    from audiocraft.models import builders

    torch.manual_seed(seed)
    lm_cfg = OmegaConf.create(lm_config(shape))
    lm_cfg.device = device
    return builders.get_lm_model(lm_cfg).eval()


def build_random_musicgen_parts(shape: ModelShape, seed: int = 0, device: str = "cpu") -> tuple[tp.Any, tp.Any]:
    """Build a randomly initialised (LM, codec) pair with audiocraft's own builders.

    Returns `(lm, compression_model)` in eval mode. The codec's quantizer is run once on random
    latents so its k-means codebooks are initialised, as audiocraft's debug model does.
    """
    from audiocraft.models import builders

    lm = build_random_lm(shape, seed, device)
    codec_cfg = OmegaConf.create(codec_config(shape))
    codec_cfg.device = device
    with _quiet_weight_norm():
        codec = builders.get_compression_model(codec_cfg)
    quantizer = tp.cast(torch.nn.Module, codec.quantizer)
    quantizer.train()
    quantizer(torch.randn(8, shape.codec_dimension, 256, device=device), SAMPLE_RATE // 640)
    return lm, codec.eval()


def write_random_checkpoint(
    directory: Path, shape: ModelShape = TINY, seed: int = 0, cfg_as_omegaconf: bool = True
) -> Path:
    """Write a random MusicGen to `directory` in audiocraft's checkpoint layout.

    `cfg_as_omegaconf=True` stores `xp.cfg` as an OmegaConf `DictConfig`, as some released
    checkpoints do; `False` stores a plain dict.
    """
    lm, codec = build_random_musicgen_parts(shape, seed)
    directory.mkdir(parents=True, exist_ok=True)
    for filename, cfg, module in (
        (LM_CHECKPOINT, lm_config(shape), lm),
        (CODEC_CHECKPOINT, codec_config(shape), codec),
    ):
        xp_cfg = OmegaConf.create(cfg) if cfg_as_omegaconf else cfg
        torch.save({"xp.cfg": xp_cfg, "best_state": module.state_dict(), "version": "loopjam-random"}, directory / filename)
    return directory
