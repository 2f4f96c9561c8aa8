"""Atomic, resumable training checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under ``<output_dir>/checkpoints``::

    step-00000100/          one complete checkpoint
        .metadata, *.distcp   model + optimizer (DCP; sharded tensors stay sharded, any world size can load)
        trainer_state.json    step, LR scheduler, data-loader position, RNG states, counters
        config.yaml           the resolved run config
    latest                  name of the newest complete checkpoint (replaced atomically)
    .tmp-step-00000200/     a save in progress (ignored and removed; never read)

A save writes everything into ``.tmp-…`` and only then renames the directory (atomic on one file system) and
rewrites ``latest``; a process killed mid-save therefore leaves the previous checkpoint as the newest complete
one. Only after the new one is complete are checkpoints beyond ``keep`` deleted.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from sumi._io import atomic_write_text
from sumi.errors import CheckpointError

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
LATEST = "latest"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"


def encode_rng(state: torch.Tensor) -> str:
    """A generator state (uint8 tensor) as base64 text for JSON."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Copy the ``model.*`` tensors of a training checkpoint into a plain (unsharded) model, in place."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a DCP checkpoint directory (no .metadata)")
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state["model"])


class Checkpointer:
    """Saves and restores model, optimizer and trainer state under ``root`` (see module docstring)."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    # ------------------------------------------------------------------ discovery
    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Path | None:
        """The newest complete checkpoint (``latest`` pointer, else the highest step directory), or None."""
        pointer = self.root / LATEST
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if candidate.is_dir() and (candidate / STATE_FILE).is_file():
                return candidate
        complete = [p for p in self.complete_checkpoints() if (p / STATE_FILE).is_file()]
        return complete[-1] if complete else None

    # ------------------------------------------------------------------ save
    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any],
             config_yaml: str) -> Path:
        """Collective: every rank calls it. Returns the final checkpoint directory."""
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        if _is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with warnings.catch_warnings():  # DCP warns that one process without a process group saves alone
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        if _is_main():
            atomic_write_text(tmp / STATE_FILE, json.dumps(trainer_state, indent=1))
            atomic_write_text(tmp / CONFIG_FILE, config_yaml)
            _fsync_dir(tmp)
            if final.exists():  # re-saving the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            atomic_write_text(self.root / LATEST, final.name)
            for old in self.complete_checkpoints()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            logger.info("saved checkpoint %s", final)
        _barrier()
        return final

    # ------------------------------------------------------------------ load
    def load(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Collective: restore model and optimizer in place; return the trainer state mapping."""
        path = Path(path)
        state_file = path / STATE_FILE
        if not state_file.is_file() or not (path / ".metadata").is_file():
            raise CheckpointError(f"{path} is not a complete sumi training checkpoint (no {STATE_FILE} or "
                                  ".metadata); pass a step-XXXXXXXX directory or the checkpoints directory")
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(state, checkpoint_id=path)
        except Exception as exc:  # DCP names the missing/mismatched key
            raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        logger.info("resumed from %s", path)
        return json.loads(state_file.read_text())
