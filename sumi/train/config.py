"""Typed run configuration of ``sumi train``: one dataclass per concern, composed into :class:`RunConfig`.

Resolution order (lowest first), done in one place, :func:`resolve_run_config`:

    dataclass defaults  <  model preset (``model.preset``)  <  YAML recipe  <  command-line ``key.sub=value``

Every section validates itself in ``__post_init__`` and raises :class:`ConfigError` with a message a user can act
on; an unknown key lists the valid ones. The resolved config is written as ``config.yaml`` next to every
checkpoint, so a run can always be reproduced from its own directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sumi._io import read_text
from sumi.config import SumiConfig, get_preset, list_presets
from sumi.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN
from sumi.errors import ConfigError, require
from sumi.finetune.config import FinetuneSection, LoraSection


@dataclass
class ModelSection:
    """Which transformer to train."""

    preset: str = "sumi-tiny"
    """Named architecture (``sumi-tiny``, ``sumi-160m``, ``sumi-1b``, ``sumi-7b``) the overrides edit."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``SumiConfig`` fields replacing the preset's (e.g. ``hidden_size: 256``); unknown names are an error."""
    causal: bool = False
    """Train the autoregressive baseline (causal mask, next-token cross-entropy) instead of the UDLM."""
    init_seed: int = 0
    """Seed of :meth:`SumiForMaskGeneration.init_weights` (the same on every rank)."""
    init_from: str = ""
    """Start from these weights (a release-layout model directory or a training checkpoint ``step-…``
    directory; weights only: optimizer, schedule and data start fresh), e.g. stage 2 from stage 1."""
    attn_implementation: str = "sdpa"
    """``sdpa`` (fused) or ``eager`` (reference) attention."""

    def __post_init__(self) -> None:
        require(self.preset.lower().replace("_", "-") in list_presets(),
                f"model.preset={self.preset!r} is unknown; available presets: {', '.join(list_presets())}")
        require(isinstance(self.overrides, dict), "model.overrides must be a mapping of SumiConfig fields")
        require(0 <= self.init_seed <= MAX_INT, f"model.init_seed must lie in [0, 2**63), got {self.init_seed}")
        require(self.attn_implementation in ("sdpa", "eager"),
                f"model.attn_implementation={self.attn_implementation!r}; use 'sdpa' or 'eager'")
        self.build()  # fail now, not after the data is loaded

    def build(self) -> SumiConfig:
        """The resolved architecture: preset, then overrides, then ``is_causal``."""
        overrides = dict(self.overrides)
        if self.causal:
            overrides["is_causal"] = True
        try:
            return get_preset(self.preset).replace(**overrides)
        except ConfigError as exc:
            raise ConfigError(f"model.overrides on preset {self.preset!r}: {exc}") from None


@dataclass
class DataSection:
    """Where the training tokens come from (packed shards written by ``sumi data build``)."""

    shard_dir: str = ""
    """Directory of packed token shards (with their manifest); required."""
    tokenizer: str = ""
    """Tokenizer shipped with the exported model (a directory, a tokenizer.json or ``sumi``)."""
    mixture: Any = ""
    """Optional mixture (a YAML path, or the mapping inline): when ``shard_dir`` does not exist yet it is built
    from this mixture first (see ``sumi.data.MixtureSpec``)."""
    seq_len: int = 1184
    """Canvas length used only when building shards from ``mixture``."""
    heldout_fraction: float = 0.01
    """Share of canvases kept out for held-out NELBO, used only when building shards."""

    def __post_init__(self) -> None:
        require(self.seq_len > 1, f"data.seq_len must be > 1, got {self.seq_len}")
        require(isinstance(self.mixture, str | dict),
                "data.mixture must be a path to a mixture YAML or an inline mapping with 'sources:'")
        require(0.0 < self.heldout_fraction < 1.0,
                f"data.heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")


@dataclass
class NoiseSection:
    """The diffusion-time draw of training (``docs/design.md`` §2.5)."""

    per_token_fraction: float = 0.2
    """Share of sequences whose tokens get independent t; the rest share one t per sequence."""
    min_log_snr: float = LOG_SNR_MIN
    """λ_min: t is drawn uniformly on [1 − σ(λ_max), 1 − σ(λ_min)]."""
    max_log_snr: float = LOG_SNR_MAX
    """λ_max."""

    def __post_init__(self) -> None:
        require(0.0 <= self.per_token_fraction <= 1.0,
                f"noise.per_token_fraction must lie in [0, 1], got {self.per_token_fraction}")
        require(self.min_log_snr < self.max_log_snr,
                f"noise.min_log_snr={self.min_log_snr} must be < noise.max_log_snr={self.max_log_snr}")


@dataclass
class OptimizerSection:
    """AdamW with decoupled weight decay on matrices only."""

    lr: float = 2e-4
    """Peak learning rate (reached at the end of warmup)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam β1, β2."""
    eps: float = 1e-8
    """Adam ε."""
    weight_decay: float = 0.1
    """Decoupled weight decay on 2-D weights; norm gains are never decayed."""
    decay_embeddings: bool = True
    """Also decay the embedding and head matrices (they are matrices; Sumi decays all matrices)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        require(self.lr > 0, f"optimizer.lr must be > 0, got {self.lr}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        require(self.eps > 0, f"optimizer.eps must be > 0, got {self.eps}")
        require(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.grad_clip >= 0, f"optimizer.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


SCHEDULE_KINDS = ("wsd", "cosine", "constant")


@dataclass
class ScheduleSection:
    """Learning-rate schedule over optimizer steps."""

    kind: str = "wsd"
    """``wsd`` (warmup-stable-decay), ``cosine`` or ``constant`` (after warmup)."""
    warmup_steps: int = 100
    """Linear warmup from lr/warmup_steps to the peak lr (Sumi: 2000)."""
    decay_fraction: float = 0.1
    """wsd: share of all steps spent in the final linear cooldown."""
    min_lr: float = 2e-5
    """Learning rate at the last step (wsd cooldown target / cosine floor)."""

    def __post_init__(self) -> None:
        require(self.kind in SCHEDULE_KINDS, f"schedule.kind={self.kind!r}; use one of {SCHEDULE_KINDS}")
        require(self.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(0.0 <= self.decay_fraction <= 1.0,
                f"schedule.decay_fraction must lie in [0, 1], got {self.decay_fraction}")
        require(self.min_lr >= 0, f"schedule.min_lr must be >= 0, got {self.min_lr}")


@dataclass
class TrainingSection:
    """The loop: length, batch, precision, parallelism, logging and evaluation."""

    steps: int = 1000
    """Optimizer steps of the run."""
    micro_batch_size: int = 8
    """Sequences per rank per forward/backward."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (global batch = micro × accum × world size)."""
    global_batch_size: int = 0
    """Sequences per optimizer step; when set, grad_accum_steps is derived as global / (micro × world size)."""
    seed: int = 0
    """Seed of the data order and of the t / z draws."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    precision: str = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``fp32`` or ``bf16``: under FSDP2 a ``MixedPrecisionPolicy`` (bf16
    parameters in compute, fp32 gradient reduction, fp32 master weights), otherwise bf16 autocast."""
    parallelism: str = "auto"
    """``auto`` (FSDP2 when world size > 1), ``none``, ``ddp`` or ``fsdp``."""
    data_parallel_replicate: int = 1
    """HSDP: replica groups (e.g. nodes); FSDP2 shards within a group and gradients are all-reduced across
    groups. 1 = plain FSDP2 over all data-parallel ranks. Needs parallelism=fsdp."""
    tensor_parallel: int = 1
    """Tensor-parallel degree (DTensor: column/row-parallel attention and SwiGLU, sequence-parallel norms); must
    divide the head counts and the SwiGLU width. Composed with FSDP2 on a 2-D mesh; needs parallelism=fsdp."""
    compile: bool = False
    """``torch.compile`` the model (whole model, or each block under FSDP2)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward (saves memory, costs ~1/3 more compute)."""
    activation_checkpointing_mode: str = "full"
    """``full`` (keep only each block's input) or ``selective`` (keep matmul and attention outputs, recompute
    the elementwise ops: less recompute, more memory)."""
    log_every: int = 10
    """Write a metrics record every this many steps (and at the last step)."""
    eval_every: int = 0
    """Held-out NELBO every this many steps (0 = only at the end)."""
    eval_batches: int = 8
    """Global held-out batches per evaluation (fixed data and noise seed, so evaluations are comparable)."""
    eval_seed: int = 1234
    """Seed of the held-out noise draws."""
    output_dir: str = "runs/train"
    """Run directory: metrics.jsonl, config.yaml, checkpoints/, model/ (the export), loss.png."""
    time_limit_minutes: float = 0.0
    """Stop after the step that crosses this wall-clock budget (0 = none), then evaluate, save and export as at
    the planned end. The schedule is not shortened, so a stopped WSD run skips (part of) its cooldown."""
    progress: bool = True
    """Show a progress bar with tokens/s and ETA (rank 0)."""
    loggers: str = ""
    """Metrics sinks besides ``metrics.jsonl``, comma-separated: ``tensorboard`` (``<output_dir>/tensorboard``),
    ``wandb`` (project ``wandb_project``; ``WANDB_MODE=offline`` works). A missing package is a warning."""
    wandb_project: str = "sumi"
    """W&B project name for ``loggers=wandb``."""

    def __post_init__(self) -> None:
        from sumi.train.metrics import LOGGERS

        unknown = sorted(set(self.logger_names) - set(LOGGERS))
        require(not unknown, f"training.loggers has unknown {unknown}; use a comma-separated subset of "
                f"{', '.join(LOGGERS)} (metrics.jsonl is always written)")
        for name in ("steps", "micro_batch_size", "grad_accum_steps", "log_every", "eval_batches"):
            require(getattr(self, name) >= 1, f"training.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "eval_seed"):
            require(0 <= getattr(self, name) <= MAX_INT,
                    f"training.{name} must lie in [0, 2**63), got {getattr(self, name)}")
        require(self.global_batch_size >= 0, f"training.global_batch_size must be >= 0 (0 = micro × accum × "
                f"world), got {self.global_batch_size}")
        require(self.time_limit_minutes >= 0, f"training.time_limit_minutes must be >= 0, got "
                f"{self.time_limit_minutes}")
        require(self.eval_every >= 0, f"training.eval_every must be >= 0 (0 = at the end), got {self.eval_every}")
        require(self.device in ("auto", "cpu", "cuda"), f"training.device={self.device!r}; use auto, cpu or cuda")
        require(self.precision in ("auto", "fp32", "bf16"),
                f"training.precision={self.precision!r}; use auto, fp32 or bf16")
        require(self.parallelism in ("auto", "none", "ddp", "fsdp"),
                f"training.parallelism={self.parallelism!r}; use auto, none, ddp or fsdp")
        for name in ("data_parallel_replicate", "tensor_parallel"):
            require(getattr(self, name) >= 1, f"training.{name} must be >= 1 (1 = off), got {getattr(self, name)}")
        require(self.activation_checkpointing_mode in ("full", "selective"),
                f"training.activation_checkpointing_mode={self.activation_checkpointing_mode!r}; use full or "
                "selective")


    @property
    def logger_names(self) -> list[str]:
        return [name.strip().lower() for name in self.loggers.split(",") if name.strip()]

@dataclass
class CheckpointSection:
    """Distributed checkpoints (``torch.distributed.checkpoint``) and the final export."""

    every: int = 1000
    """Save every this many steps (0 = only at the end)."""
    keep: int = 2
    """How many complete checkpoints to keep (oldest are deleted after a newer one is complete)."""
    export: bool = True
    """Write the final model in the release layout to ``<output_dir>/model``."""

    def __post_init__(self) -> None:
        require(self.every >= 0, f"checkpoint.every must be >= 0 (0 = only at the end), got {self.every}")
        require(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclass
class RunConfig:
    """Everything a training run needs; ``sumi train --config`` files mirror these sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    noise: NoiseSection = field(default_factory=NoiseSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    lora: LoraSection = field(default_factory=LoraSection)

    def __post_init__(self) -> None:
        require(not self.lora.enabled or self.model.init_from,
                "lora.rank > 0 adapts trained weights: set model.init_from to the base model directory")
        require(not (self.finetune.enabled and self.model.causal),
                "fine-tuning (finetune.data) trains the diffusion model; model.causal=true is not supported")
        require(self.schedule.warmup_steps <= self.training.steps or self.schedule.warmup_steps == 0,
                f"schedule.warmup_steps={self.schedule.warmup_steps} exceeds training.steps={self.training.steps}; "
                "shorten the warmup or train longer")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["optimizer"]["betas"] = list(self.optimizer.betas)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        from sumi._io import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_yaml())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, "")


# ---------------------------------------------------------------------------------------------- resolution
def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML / command-line value to the field's type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping with keys {sorted(_fields(tp))}, got {value!r}")
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, key) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float):
        return _number(value, tp, key)
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


MAX_INT = 2**63 - 1
"""Largest integer any field accepts (torch and numpy hold counts and seeds in int64)."""


def _number(value: Any, tp: type, key: str) -> int | float:
    """A finite float, or an integer in [-MAX_INT, MAX_INT] (``1e3`` is accepted as 1000, ``1.5`` is not)."""
    kind = "an integer" if tp is int else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise ConfigError(f"{key} must be {kind}, got {value!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if tp is float:
        return float(number)
    if isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        number = int(number)
    if abs(number) > MAX_INT:
        raise ConfigError(f"{key}={value!r} is too large (at most {MAX_INT})")
    return number


def _build(cls, data: dict[str, Any], prefix: str):
    known = _fields(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"section {prefix[:-1]!r}" if prefix else "the run config"
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]} in {where}; valid keys are: "
                          f"{', '.join(prefix + k for k in known)}")
    kwargs = {name: _coerce(data[name], tp, prefix + name) for name, tp in known.items() if name in data}
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):  # model.overrides merge per field
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"training.steps=200"`` → ``{"training": {"steps": 200}}``; the value is parsed as YAML."""
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. training.steps=200)")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse the value of override {text!r}: {exc}") from exc
    out: dict[str, Any] = {}
    node = out
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(read_text(path, ConfigError)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections ({', '.join(_fields(RunConfig))})")
    return data


def resolve_run_config(file: str | Path | dict[str, Any] | None = None,
                       overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults < file (a path or an already-parsed mapping) < ``key.sub=value`` overrides, validated."""
    merged: dict[str, Any] = {}
    if file is not None:
        merged = _deep_merge(merged, file if isinstance(file, dict) else load_yaml(file))
    for text in overrides:
        merged = _deep_merge(merged, parse_override(text))
    return RunConfig.from_dict(merged)
