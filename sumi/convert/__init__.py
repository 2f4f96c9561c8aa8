"""Checkpoint conversion: trainer DCP <-> release layout, and Megatron-LM GPT -> release layout.

    convert(src, dst)                                    # format of src detected, dst = release (or DCP)
    convert(src, dst, src_format="megatron", config="sumi-7b", dtype="bfloat16")

Formats: ``release`` (config.json + safetensors, :mod:`sumi.checkpoint`), ``dcp`` (a trainer step directory or
a model-only DCP written by this module, :mod:`sumi.convert.dcp`), ``megatron`` (torch_dist directory or legacy
``model_optim_rng.pt``, :mod:`sumi.convert.megatron`). Every tensor passes through a
:class:`sumi.model.SumiForMaskGeneration` built on the meta device, so names and shapes are checked against the
config before anything is written. The mapping is documented in ``docs/interop.md``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

import sumi.convert.dcp as dcp_io
from sumi._io import staged_directory
from sumi.checkpoint import (
    is_model_dir,
    iter_checkpoint_tensors,
    load_model,
    output_errors,
    resolve_dtype,
    save_model,
)
from sumi.config import CONFIG_NAME, PRESETS, SumiConfig, get_preset
from sumi.convert import megatron
from sumi.errors import CheckpointError, ConfigError
from sumi.model import SumiForMaskGeneration

logger = logging.getLogger(__name__)

FORMATS = ("release", "dcp", "megatron")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def resolve_config(spec: SumiConfig | str | Path | None) -> SumiConfig | None:
    """A config from a :class:`SumiConfig`, a model directory / ``config.json`` path, or a preset name."""
    if spec is None or isinstance(spec, SumiConfig):
        return spec
    path = Path(spec)
    if path.is_dir() or path.suffix == ".json":
        return SumiConfig.from_json_file(path)
    if str(spec).lower().replace("_", "-") in PRESETS:
        return get_preset(str(spec))
    raise ConfigError(f"--config {spec!r} is neither a model directory, a config.json nor a preset "
                      f"({', '.join(PRESETS)})")


def detect_format(path: str | Path) -> str:
    """``release``, ``dcp`` or ``megatron``; raises :class:`CheckpointError` naming what was expected."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir() and is_model_dir(path):
        return "release"
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return "megatron"
    if path.is_dir() and ((path / megatron.TRACKER_FILE).is_file() or (path / megatron.LEGACY_FILE).is_file()
                          or any(path.glob("mp_rank_*"))):
        return "megatron"
    try:
        step = dcp_io.resolve_step_dir(path)
    except CheckpointError:
        step = None
    if step is not None:
        keys = dcp_io.tensor_keys(step)
        if any(k.startswith(dcp_io.MODEL_PREFIX) and not megatron.looks_like_megatron([k]) for k in keys):
            return "dcp"
        if megatron.looks_like_megatron(keys):
            return "megatron"
    raise CheckpointError(
        f"cannot tell the format of {path}: expected a release directory (config.json + *.safetensors), a sumi "
        "DCP checkpoint (.metadata with model.* tensors), or a Megatron checkpoint (torch_dist directory, "
        f"{megatron.LEGACY_FILE}, iter_*/ or {megatron.TRACKER_FILE}); pass --from to say which"
    )


def _as_model(state: dict[str, torch.Tensor], config: SumiConfig):
    """Check names and shapes by loading into a meta-built model (no copy: assign=True)."""
    with torch.device("meta"):
        model = SumiForMaskGeneration(config)
    expected = model.state_dict()
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint tensors do not match the config: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''} — is --config the right architecture?"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, but the config implies "
                                  f"{tuple(expected[name].shape)} — is --config the right architecture?")
    model.load_state_dict(state, assign=True, strict=not config.tie_word_embeddings)
    model.tie_embeddings()
    return model


def _copy_tokenizer(source: Path | None, dst: Path) -> None:
    if source is None:
        return
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not copied:
        raise CheckpointError(f"--tokenizer {source} holds none of {TOKENIZER_FILES}")
    for name in copied:
        shutil.copy2(source / name, dst / name)


def _check_output(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse a destination that is, holds or lies inside the source, or a non-empty one without ``overwrite``."""
    s, d = src.resolve(), dst.resolve()
    if d == s or d in s.parents or s in d.parents:
        raise ConfigError(f"destination {dst} {'is' if d == s else 'contains' if d in s.parents else 'lies inside'} "
                          f"the source {src}; choose an output directory outside it")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"output {dst} exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(f"output directory {dst} is not empty; choose a new one or pass --force (the old "
                              "content is replaced only after the new one is complete)")


def convert(src: str | Path, dst: str | Path, *, src_format: str = "auto", dst_format: str | None = None,
            config: SumiConfig | str | Path | None = None, dtype: torch.dtype | str | None = None,
            max_shard_size: int | str = "5GB", tokenizer: str | Path | None = None,
            overwrite: bool = False) -> Path:
    """Convert ``src`` into ``dst`` (a new directory) and return ``dst``.

    Args:
        src_format: ``auto`` (detect), ``release``, ``dcp`` or ``megatron``.
        dst_format: ``release`` or ``dcp``; default ``dcp`` for a release source, else ``release``.
        config: the architecture (model dir, config.json, preset or :class:`SumiConfig`). Required for
            Megatron; for DCP it defaults to the config.json / trainer config.yaml found next to the checkpoint.
        dtype: dtype of the written tensors; default keeps the source's.
        tokenizer: directory whose tokenizer files are copied next to a release output.
    """
    src, dst = Path(src), Path(dst)
    if src_format == "auto":
        src_format = detect_format(src)
    if src_format not in FORMATS:
        raise ConfigError(f"unknown source format {src_format!r}; use one of {('auto',) + FORMATS}")
    dst_format = dst_format or ("dcp" if src_format == "release" else "release")
    if dst_format not in ("release", "dcp"):
        raise ConfigError(f"unknown target format {dst_format!r}; use 'release' or 'dcp'")
    if src_format == dst_format:
        raise ConfigError(f"{src} is already in the {src_format} format")
    _check_output(src, dst, overwrite)
    target_dtype = resolve_dtype(dtype)
    cfg = resolve_config(config)

    if src_format == "release":
        model = load_model(src, dtype=target_dtype or _stored_dtype(src))
        if cfg is not None and cfg.replace(extra={}, dtype=model.config.dtype) != model.config.replace(extra={}):
            raise ConfigError(f"--config differs from {src / CONFIG_NAME}; a release directory carries its own")
    elif src_format == "dcp":
        cfg = cfg or dcp_io.config_of(src)
        if cfg is None:
            raise ConfigError(f"{src} records no architecture (no config.json or config.yaml); pass --config")
        model = _as_model(dcp_io.read_model_state(src), cfg)
    else:
        if cfg is None:
            raise ConfigError("a Megatron checkpoint does not record the Sumi architecture in a safe form; pass "
                              "--config (a model directory, config.json or preset such as sumi-7b)")
        model = _as_model(megatron.to_release_state(megatron.load_state(src), cfg), cfg)

    # Built aside and swapped in whole: with --force the old output survives a failure (full disk, Ctrl-C).
    with output_errors(dst), staged_directory(dst) as staging:
        if dst_format == "release":
            save_model(model, staging, max_shard_size=max_shard_size, dtype=target_dtype)
            _copy_tokenizer(Path(tokenizer) if tokenizer else None, staging)
        else:
            state = {k: (v.to(target_dtype) if target_dtype else v) for k, v in model.state_dict().items()}
            dcp_io.write_model_state(state, model.config, staging)
    logger.info("converted %s (%s) -> %s (%s)", src, src_format, dst, dst_format)
    return dst


def _stored_dtype(directory: Path) -> torch.dtype:
    """The dtype the release's tensors are stored in (load_model would otherwise upcast bf16 on CPU)."""
    for _, tensor, _ in iter_checkpoint_tensors(directory):
        return tensor.dtype
    raise CheckpointError(f"{directory} holds no tensors")


__all__ = ["FORMATS", "convert", "detect_format", "resolve_config"]
