"""Trainer checkpoints (``torch.distributed.checkpoint``, DCP) <-> the release layout.

The trainer (:mod:`sumi.train.checkpointing`) saves ``{"model": model_sd, "optim": optim_sd}`` with
``dcp.save``; DCP flattens nested keys with dots, so the model's tensors are stored as ``model.<release name>``
(e.g. ``model.model.embed_tokens.weight``, ``model.lm_head.weight``) and the optimizer's as ``optim.*``. A
step directory also holds ``trainer_state.json`` and ``config.yaml`` (the resolved run config, whose ``model``
section gives the architecture).

Reading selects the ``model.*`` tensors from the DCP metadata and loads only those (the optimizer, usually
2x the model, is never read). Writing (release -> DCP) produces ``{"model": state_dict}`` in the same layout plus
the release ``config.json``: a model-only checkpoint a training run can initialise from with
``dcp.load({"model": get_model_state_dict(model)}, checkpoint_id=DIR)``. It has no optimizer or trainer state,
so it is not a resumable step directory.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from sumi.config import CONFIG_NAME, SumiConfig
from sumi.errors import CheckpointError, ConfigError
from sumi.train.config import ModelSection

logger = logging.getLogger(__name__)

METADATA_FILE = ".metadata"
MODEL_PREFIX = "model."
RUN_CONFIG_FILE = "config.yaml"
# Wrappers that can leak into FQNs when a state dict is taken without DCP's canonicalising helpers.
_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "module.")


def is_dcp_dir(path: str | Path) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def resolve_step_dir(path: str | Path) -> Path:
    """A DCP directory from a step directory, or from the trainer's ``checkpoints`` root (its ``latest``)."""
    path = Path(path)
    if is_dcp_dir(path):
        return path
    pointer = path / "latest"
    if pointer.is_file():
        name = pointer.read_bytes().decode("utf-8", "replace").strip()
        candidate = path / name
        if "/" not in name and name not in ("", ".", "..") and is_dcp_dir(candidate):
            return candidate
    steps = sorted(p for p in path.glob("step-*") if is_dcp_dir(p)) if path.is_dir() else []
    if steps:
        return steps[-1]
    raise CheckpointError(f"{path} is not a DCP checkpoint: no {METADATA_FILE} (pass a step-XXXXXXXX directory "
                          "or the trainer's checkpoints directory)")


def read_metadata(path: Path):
    """DCP metadata read by sumi's restricted unpickler (never runs code from the checkpoint)."""
    from sumi import safe_dcp

    safe_dcp.verify_checksums(path)
    return safe_dcp.read_metadata(path)


def tensor_keys(path: Path) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Every tensor entry of a DCP checkpoint: flattened key -> (global shape, dtype)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    out = {}
    for key, meta in read_metadata(path).state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            out[key] = (meta.size, meta.properties.dtype)
    return out


def load_tensors(path: Path, select: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    """Load the tensors whose flattened key ``select`` maps to a name (returns {name: tensor}); one process."""
    from sumi import safe_dcp

    wanted: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    for key, (shape, dtype) in tensor_keys(path).items():
        name = select(key)
        if name is None:
            continue
        if name in names.values():
            raise CheckpointError(f"{path}: two DCP entries map to tensor {name!r}")
        wanted[key] = torch.empty(shape, dtype=dtype)
        names[key] = name
    if not wanted:
        return {}
    safe_dcp.load(wanted, path, what="the tensors of DCP checkpoint", verify=False)  # verified by tensor_keys
    return {names[key]: tensor for key, tensor in wanted.items()}


def _model_name(key: str) -> str | None:
    if not key.startswith(MODEL_PREFIX):
        return None
    name = key[len(MODEL_PREFIX):]
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def read_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a trainer DCP checkpoint, by release tensor name (optimizer state is not read)."""
    path = resolve_step_dir(path)
    state = load_tensors(path, _model_name)
    if not state:
        keys = sorted(tensor_keys(path))[:5]
        raise CheckpointError(f"{path} has no '{MODEL_PREFIX}*' tensors (found e.g. {keys}); it is not a sumi "
                              "trainer checkpoint — for a Megatron-LM checkpoint use --from megatron")
    return state


def config_of(path: str | Path) -> SumiConfig | None:
    """The architecture recorded next to a DCP checkpoint: ``config.json`` (written by release -> DCP) or the
    trainer's ``config.yaml`` (its ``model`` section). None when neither is there."""
    path = resolve_step_dir(path)
    if (path / CONFIG_NAME).is_file():
        return SumiConfig.from_json_file(path / CONFIG_NAME)
    run_file = path / RUN_CONFIG_FILE
    if run_file.is_file():
        try:
            run = yaml.safe_load(run_file.read_bytes()) or {}
            return ModelSection(**run.get("model", {})).build()
        except (yaml.YAMLError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"cannot read the model section of {run_file}: {exc}") from exc
    return None


def write_model_state(state: dict[str, torch.Tensor], config: SumiConfig, directory: str | Path) -> Path:
    """Save ``{"model": state}`` with DCP into an empty ``directory``, plus the release ``config.json``."""
    import torch.distributed.checkpoint as dcp

    from sumi import safe_dcp

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise CheckpointError(f"{directory} is not empty; choose a new output directory")
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": {k: v.contiguous() for k, v in state.items()}}, checkpoint_id=str(directory))
    safe_dcp.write_checksums(directory)  # the tensors; config.json is validated when read
    (directory / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return directory
