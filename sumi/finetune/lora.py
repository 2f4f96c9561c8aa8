"""LoRA adapters through ``peft``: wrap a Sumi model, train adapters only, save them in PEFT's format, merge.

``peft`` works on any ``nn.Module`` whose targets are ``nn.Linear``; Sumi's projections are plain ``nn.Linear``
layers named as in the release checkpoint (``q_proj`` … ``down_proj``), so no Sumi-specific glue is needed. An
adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` exactly as
``peft.PeftModel.save_pretrained`` writes them, so ``PeftModel.from_pretrained(base, dir)`` loads it too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from sumi.errors import CheckpointError, ConfigError
from sumi.finetune.config import LoraSection

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs the `peft` package; `pip install peft`") from None
    return peft


def apply_lora(model: nn.Module, section: LoraSection, seed: int = 0) -> nn.Module:
    """``model`` wrapped in a ``peft.PeftModel`` with fresh adapters (B = 0, so the output is unchanged);
    every base weight is frozen and only the adapters train (and, with ``section.train_norms``, trainable copies
    of the RMSNorm gains, which PEFT saves with the adapters and merges back). The A matrices are drawn from
    ``seed`` (peft draws them from torch's global RNG, which is left as it was), so a run is reproducible from
    its config."""
    peft = _peft()
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    norms = sorted(n for n in leaf_names if n.endswith("norm")) if section.train_norms else None
    config = peft.LoraConfig(r=section.rank, lora_alpha=section.alpha, lora_dropout=section.dropout,
                             target_modules=list(section.targets), bias="none", modules_to_save=norms)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = peft.get_peft_model(model, config)
    trainable, total = parameter_counts(wrapped)
    logger.info("LoRA r=%d on %s: %d of %d parameters train (%.2f%%)", section.rank, ",".join(section.targets),
                trainable, total, 100 * trainable / total)
    return wrapped


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (shared tensors counted once)."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapters of a LoRA-wrapped model in PEFT's format (adapter_config.json + safetensors)."""
    directory = Path(directory)
    # The base's embedding is never resized here, so only the adapters are saved (an adapter on embed_tokens is
    # saved as its own A/B like any other); "auto" would try to detect resized embeddings and warn.
    model.save_pretrained(str(directory), save_embedding_layers=False)
    return directory


def load_adapter(base: nn.Module, directory: str | Path) -> nn.Module:
    """``base`` with the adapters of ``directory`` (a PEFT adapter directory) attached, in eval mode."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{directory} is not a LoRA adapter directory (no {ADAPTER_CONFIG}); give the "
                              "adapter folder written by `sumi finetune` (<output_dir>/adapter)")
    peft = _peft()
    try:
        return peft.PeftModel.from_pretrained(base, str(directory)).eval()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot attach the adapter {directory} to this model ({exc}); was it trained on "
                              "this base model?") from exc


def merge(model: nn.Module) -> nn.Module:
    """The plain model with W + (alpha/r)·B·A folded into every adapted weight (adapters removed)."""
    return model.merge_and_unload() if is_lora(model) else model
