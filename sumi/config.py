"""The Sumi model configuration: one typed dataclass, presets, and ``config.json`` in the release's key names.

``SumiConfig`` covers every field of the released ``tohoku-nlp/sumi-7b`` ``config.json`` (see
``docs/design.md`` §3). Keys sumi does not interpret (``auto_map``, ``transformers_version``, …) are
kept in :attr:`SumiConfig.extra` and written back unchanged, so a round trip never loses information.

Presets are named constructors: :func:`sumi_7b` is exactly the release; the smaller ones edit its fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sumi.errors import ConfigError

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"

# Special ids of the Sumi tokenizer (cl100k_base ranks + OLMo-style added tokens).
SUMI_BOS_ID = 100256
SUMI_EOS_ID = 100257
SUMI_PAD_ID = 100277
SUMI_VOCAB_SIZE = 100278

_SUPPORTED_ACTS = ("silu",)
_SUPPORTED_ROPE_TYPES = ("default",)
_DTYPES = ("float32", "bfloat16", "float16")
# Upper bounds far beyond any real model (Sumi-7B: 36 layers, d 4096, I 12288, 4864 positions, 100k vocab) that
# stop an absurd config.json before anything is allocated (1e9 layers, 4e6 positions grew memory without bound).
SIZE_LIMITS = {"vocab_size": 1 << 24, "hidden_size": 1 << 17, "intermediate_size": 1 << 19,
               "num_hidden_layers": 1 << 11, "num_attention_heads": 1 << 11, "num_key_value_heads": 1 << 11,
               "max_position_embeddings": 1 << 20, "head_dim": 1 << 12}


@dataclass
class SumiConfig:
    """Architecture and checkpoint metadata of a Sumi transformer (field names = ``config.json`` keys)."""

    vocab_size: int = SUMI_VOCAB_SIZE
    """Number of token ids the embedding and head cover."""
    hidden_size: int = 4096
    """Residual stream width d."""
    intermediate_size: int = 12288
    """SwiGLU hidden width I."""
    num_hidden_layers: int = 36
    """Number of transformer blocks."""
    num_attention_heads: int = 32
    """Query heads H."""
    num_key_value_heads: int = 8
    """Key/value heads H_kv (GQA); must divide H."""
    head_dim: int | None = 128
    """Per-head width; ``None`` means hidden_size // num_attention_heads."""
    hidden_act: str = "silu"
    """MLP activation (SwiGLU gate); only ``silu`` exists in Sumi."""
    max_position_embeddings: int = 4864
    """Longest sequence the RoPE tables and samplers allow."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon added to the mean square."""
    rope_parameters: dict[str, Any] = field(
        default_factory=lambda: {"rope_theta": 500000.0, "rope_type": "default"}
    )
    """RoPE settings: ``rope_theta`` (base) and ``rope_type`` (only ``default``)."""
    attention_bias: bool = False
    """Bias on the attention projections (always False in Sumi; kept for layout parity)."""
    add_qkv_bias: bool = False
    """Bias on q/k/v (always False in Sumi)."""
    mlp_bias: bool = False
    """Bias on the MLP projections (always False in Sumi)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (0 in Sumi; sumi does not implement dropout)."""
    tie_word_embeddings: bool = False
    """Share embedding and head weights (False in Sumi)."""
    bos_token_id: int = SUMI_BOS_ID
    """Beginning-of-document id."""
    eos_token_id: int = SUMI_EOS_ID
    """End-of-document id."""
    pad_token_id: int = SUMI_PAD_ID
    """Padding id."""
    initializer_range: float = 0.02
    """Std of the normal init of embeddings and linear weights."""
    pretraining_tp: int = 1
    """Tensor-parallel degree of the original training run (metadata only)."""
    use_cache: bool = True
    """Metadata kept for the release's remote code; sumi's bidirectional model has no KV cache."""
    uniform_diffusion_beta_is: float = 1.0
    """β_IS: weight of the Itakura-Saito term of the training loss."""
    uniform_diffusion_z_loss_strength: float = 1e-5
    """ζ: weight of the z-loss logsumexp(logits)²."""
    dtype: str = "bfloat16"
    """Storage dtype of the weights."""
    is_causal: bool = False
    """sumi extension: a causal (autoregressive) baseline of the same transformer. Written only when True."""
    architectures: list[str] = field(default_factory=lambda: ["SumiForMaskGeneration"])
    """Hugging Face architecture names."""
    model_type: str = "sumi"
    """Hugging Face model type."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of a loaded ``config.json`` that sumi does not interpret (``auto_map`` …), written back as-is."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters.get("rope_theta", 10000.0))

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts computed from the shapes (no model needed): total, embedding, non-embedding.

        ``embedding`` counts the input embedding and the (untied) output head, the two V×d matrices.
        """
        d, i, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.resolved_head_dim
        h, hkv = self.num_attention_heads, self.num_key_value_heads
        attn = d * h * hd + 2 * d * hkv * hd + h * hd * d
        mlp = 3 * d * i
        per_layer = attn + mlp + 2 * d
        embed = v * d * (1 if self.tie_word_embeddings else 2)
        non_embed = self.num_hidden_layers * per_layer + d
        return {"total": embed + non_embed, "embedding": embed, "non_embedding": non_embed}

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` with an actionable message when the fields are inconsistent."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"invalid Sumi config: {msg}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive integer, got {value!r}")
            need(value <= SIZE_LIMITS[name], f"{name}={value} exceeds the limit {SIZE_LIMITS[name]}; the config "
                 "is not a plausible model (check the file)")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_key_value_heads={self.num_key_value_heads} must divide "
             f"num_attention_heads={self.num_attention_heads} (grouped-query attention)")
        if self.head_dim is None:
            need(self.hidden_size % self.num_attention_heads == 0,
                 f"num_attention_heads={self.num_attention_heads} must divide hidden_size={self.hidden_size} "
                 "(or set head_dim explicitly)")
        else:
            need(isinstance(self.head_dim, int) and not isinstance(self.head_dim, bool)
                 and 0 < self.head_dim <= SIZE_LIMITS["head_dim"],
                 f"head_dim must be a positive integer <= {SIZE_LIMITS['head_dim']}, got {self.head_dim!r}")
        need(self.max_position_embeddings * self.resolved_head_dim <= 1 << 28,
             f"max_position_embeddings × head_dim = {self.max_position_embeddings} × {self.resolved_head_dim} exceeds "
             "2^28 (the RoPE tables alone would take > 2 GiB); the config is not plausible")
        need(self.resolved_head_dim % 2 == 0,
             f"head_dim={self.resolved_head_dim} must be even (RoPE rotates pairs of channels)")
        need(self.hidden_act in _SUPPORTED_ACTS,
             f"hidden_act={self.hidden_act!r} is not supported; use one of {_SUPPORTED_ACTS}")
        need(isinstance(self.rope_parameters, dict), "rope_parameters must be a mapping")
        theta = self.rope_parameters.get("rope_theta")
        need(isinstance(theta, int | float) and not isinstance(theta, bool) and math.isfinite(theta) and theta > 1,
             f"rope_parameters.rope_theta must be a finite number > 1, got {theta!r}")
        rope_type = self.rope_parameters.get("rope_type", "default")
        need(rope_type in _SUPPORTED_ROPE_TYPES,
             f"rope_parameters.rope_type={rope_type!r} is not supported; use one of {_SUPPORTED_ROPE_TYPES}")
        for name in ("rms_norm_eps", "uniform_diffusion_beta_is", "uniform_diffusion_z_loss_strength",
                     "initializer_range", "attention_dropout"):
            value = getattr(self, name)
            need(isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
                 f"{name} must be a finite number, got {value!r}")
        need(self.rms_norm_eps > 0, f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        for flag in ("tie_word_embeddings", "is_causal", "use_cache"):
            need(isinstance(getattr(self, flag), bool), f"{flag} must be true or false, got {getattr(self, flag)!r}")
        for flag in ("attention_bias", "add_qkv_bias", "mlp_bias"):
            need(getattr(self, flag) is False, f"{flag}=true is not part of the Sumi architecture (no biases)")
        need(self.attention_dropout == 0.0, "attention_dropout must be 0.0 (sumi does not implement dropout)")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.vocab_size,
                 f"{name}={value!r} must be an id in [0, vocab_size={self.vocab_size})")
        need(self.dtype in _DTYPES, f"dtype={self.dtype!r} must be one of {_DTYPES}")
        need(self.uniform_diffusion_beta_is >= 0, "uniform_diffusion_beta_is must be >= 0")
        need(self.uniform_diffusion_z_loss_strength >= 0, "uniform_diffusion_z_loss_strength must be >= 0")

    # ------------------------------------------------------------------ dict / json I/O
    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` mapping in the release's key order and names (extras appended)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            if f.name == "is_causal" and not self.is_causal:
                continue
            out[f.name] = getattr(self, f.name)
        out["architectures"] = list(self.architectures)
        out["rope_parameters"] = dict(self.rope_parameters)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = False) -> SumiConfig:
        """Build a config from a ``config.json`` mapping.

        Unknown keys are kept in :attr:`extra` (``strict=False``, the default for files), or rejected with a
        message listing the valid keys (``strict=True``, used for user overrides where a typo must not pass).
        Legacy ``rope_theta`` at top level is folded into ``rope_parameters``.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a Sumi config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        if "rope_theta" in data and "rope_parameters" not in data:
            data["rope_parameters"] = {"rope_theta": float(data.pop("rope_theta")), "rope_type": "default"}
        if "torch_dtype" in data and "dtype" not in data:
            data["dtype"] = data.pop("torch_dtype")
        unknown = {k: v for k, v in data.items() if k not in known}
        if strict and unknown:
            raise ConfigError(
                f"unknown config key(s) {sorted(unknown)}; valid keys are: {', '.join(sorted(known))}"
            )
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(data.get("extra", {})) if isinstance(data.get("extra"), dict) else {}
        extra.update({k: v for k, v in unknown.items() if k != "extra"})
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:  # wrong value types surface here
            raise ConfigError(f"invalid Sumi config: {exc}") from exc

    def replace(self, **overrides: Any) -> SumiConfig:
        """A copy with fields changed; unknown field names are an error (no silent typos)."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"unknown config field(s) {bad}; valid fields are: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_json_file(cls, path: str | Path) -> SumiConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (a model directory needs a {CONFIG_NAME})")
        try:
            data = json.loads(path.read_bytes())
        except ValueError as exc:  # bad JSON, or bytes that are not UTF-8
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, directory: str | Path, generation: dict | None = None) -> Path:
        """Write ``config.json`` and ``generation_config.json`` into ``directory``. The generation config holds the
        special ids and T = 1, then the fields of ``generation`` (a model's own generate defaults, e.g. the
        explicit fields of its ``GenerationConfig``) over them."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        gen = {"bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "temperature": 1.0,
               **(generation or {})}
        (directory / GENERATION_CONFIG_NAME).write_text(json.dumps(gen, indent=2) + "\n")
        return path


# ---------------------------------------------------------------------------------------------- presets
def sumi_7b() -> SumiConfig:
    """Exactly the released ``tohoku-nlp/sumi-7b`` (7,767,543,808 parameters)."""
    return SumiConfig(extra={"transformers_version": "5.8.1"})


def sumi_1b() -> SumiConfig:
    """A ~1.2B-parameter sibling (0.77B non-embedding; d 2048, 16 layers, 16/4 heads), Sumi vocabulary."""
    return dataclasses.replace(
        sumi_7b(), hidden_size=2048, intermediate_size=6144, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=4, head_dim=128, extra={},
    )


def sumi_160m() -> SumiConfig:
    """A ~160M-non-embedding model (d 1024, 14 layers, 16/4 heads, head_dim 64), Sumi vocabulary."""
    return dataclasses.replace(
        sumi_7b(), hidden_size=1024, intermediate_size=2816, num_hidden_layers=14,
        num_attention_heads=16, num_key_value_heads=4, head_dim=64, max_position_embeddings=2048, extra={},
    )


def sumi_25m() -> SumiConfig:
    """The benchmark size: ~23M non-embedding parameters (d 512, 8 layers, 8/2 heads, head_dim 64, SwiGLU 1408),
    vocab 32,000, fp32, ids 0..2 = BOS/EOS/PAD. ``bench/`` measures training and sampling speed on it."""
    return dataclasses.replace(
        sumi_7b(), vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, dtype="float32", extra={},
    )


def sumi_tiny() -> SumiConfig:
    """The CPU test size: d 64, 2 layers, 4/2 heads, vocab 512, fp32. Ids 0..2 are BOS/EOS/PAD."""
    return dataclasses.replace(
        sumi_7b(), vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, dtype="float32", extra={},
    )


PRESETS: dict[str, Callable[[], SumiConfig]] = {
    "sumi-7b": sumi_7b,
    "sumi-1b": sumi_1b,
    "sumi-160m": sumi_160m,
    "sumi-25m": sumi_25m,
    "sumi-tiny": sumi_tiny,
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> SumiConfig:
    """The preset called ``name`` (``sumi-7b``, ``sumi-1b``, ``sumi-160m``, ``sumi-tiny``)."""
    key = name.lower().replace("_", "-")
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(list_presets())}")
    return PRESETS[key]()
