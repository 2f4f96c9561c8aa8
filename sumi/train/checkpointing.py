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
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from sumi import safe_dcp
from sumi._io import atomic_write_text, fsync_dir, fsync_tree, output_failure
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


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Copy the ``model.*`` tensors of a training checkpoint into a plain (unsharded) model, in place.

    The checkpoint is verified against its checksums and read without unpickling code (:mod:`sumi.safe_dcp`).
    """
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a DCP checkpoint directory (no .metadata)")
    state = {"model": model.state_dict()}
    safe_dcp.load(state, path, what="model.init_from checkpoint")
    model.load_state_dict(state["model"])


def _verify_collectively(path: Path) -> None:
    """Check the checkpoint's checksums, each rank a share of the files; every rank raises on any mismatch."""
    files = safe_dcp.checksummed_files(path) if _is_main() or not dist.is_initialized() else None
    if not dist.is_initialized():
        if files is None:
            logger.warning("%s has no %s (written by an older sumi); loading it unverified", path,
                           safe_dcp.CHECKSUM_FILE)
        else:
            safe_dcp.verify_checksums(path)
        return
    shared = [sorted(files) if files is not None else None]
    dist.broadcast_object_list(shared, src=0)
    names = shared[0]
    error = ""
    if names is not None:
        try:
            safe_dcp.verify_checksums(path, names[dist.get_rank()::dist.get_world_size()])
        except CheckpointError as exc:
            error = str(exc)
    errors: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e), "")
    if first:
        raise CheckpointError(first)


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
            name = pointer.read_bytes().decode("utf-8", "replace").strip()
            candidate = self.root / name
            if STEP_DIR.match(name) and candidate.is_dir() and (candidate / STATE_FILE).is_file():
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
        try:
            with warnings.catch_warnings():  # DCP warns that one process without a process group saves alone
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
            if _is_main():
                atomic_write_text(tmp / STATE_FILE, json.dumps(trainer_state, indent=1))
                atomic_write_text(tmp / CONFIG_FILE, config_yaml)
                safe_dcp.write_checksums(tmp)
                fsync_tree(tmp)
                if final.exists():  # re-saving the same step (e.g. after a resume): move the old one aside first
                    aside = self.root / f".old-{final.name}"
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(final, aside)
                    os.replace(tmp, final)
                    shutil.rmtree(aside, ignore_errors=True)
                else:
                    os.replace(tmp, final)
                fsync_dir(self.root)
                atomic_write_text(self.root / LATEST, final.name)
        except BaseException as exc:
            self._failed_save(tmp, exc)
        if _is_main():
            for old in self.complete_checkpoints()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            logger.info("saved checkpoint %s", final)
        _barrier()
        return final

    def _failed_save(self, tmp: Path, exc: BaseException) -> None:
        """Remove the partial save, then re-raise: Ctrl-C as KeyboardInterrupt, a full disk as CheckpointError."""
        if _is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, CheckpointException) and any(
            isinstance(pair[0], KeyboardInterrupt) for pair in exc.failures.values()))
        if interrupted:
            raise KeyboardInterrupt from None
        reason = output_failure(exc)
        if reason is not None:
            raise CheckpointError(f"cannot save the checkpoint in {self.root}: {reason}. The previous checkpoint "
                                  "is intact; free space and continue with --resume") from None
        if isinstance(exc, CheckpointException):
            raise CheckpointError(f"saving the checkpoint in {self.root} failed: {safe_dcp.describe(exc)}") from None
        raise exc

    # ------------------------------------------------------------------ load
    def load(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Collective: restore model and optimizer in place; return the trainer state mapping."""
        path = Path(path)
        state_file = path / STATE_FILE
        if not state_file.is_file() or not (path / ".metadata").is_file():
            raise CheckpointError(f"{path} is not a complete sumi training checkpoint (no {STATE_FILE} or "
                                  ".metadata); pass a step-XXXXXXXX directory or the checkpoints directory")
        _verify_collectively(path)
        trainer_state = read_trainer_state(state_file)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        safe_dcp.load(state, path, what="training checkpoint", verify=False)
        try:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        except (Exception, CheckpointException) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: "
                                  f"{safe_dcp.describe(exc)}") from None
        logger.info("resumed from %s", path)
        return trainer_state


TRAINER_STATE_KEYS = ("step", "tokens_seen", "scheduler", "loader", "torch_rng")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` as a mapping with the keys a resume needs; CheckpointError when damaged."""
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and non-UTF-8 bytes
        raise CheckpointError(f"{path} is damaged ({type(exc).__name__}: {exc}); resume from an earlier "
                              "checkpoint (pass its step-XXXXXXXX directory to --resume)") from None
    missing = [k for k in TRAINER_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise CheckpointError(f"{path} lacks {missing or ['a valid step']}; it is damaged — resume from an "
                              "earlier checkpoint")
    return state
