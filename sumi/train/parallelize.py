"""Apply activation checkpointing, ``torch.compile`` and DDP / FSDP2 to a plain Sumi model from outside.

Order (as in torchtitan): activation checkpointing → compile → data parallelism. Checkpointing and compilation
are done in place on each block (``block.forward`` is wrapped, ``nn.Module.compile``), so parameter names stay
the release names and checkpoints do not depend on which of them was on. Only PyTorch's own stack is used:
``DistributedDataParallel`` and FSDP2's ``fully_shard`` (one unit per block plus the root).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """Read the torchrun environment, pick the device and start the process group (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from sumi.errors import ConfigError

        raise ConfigError("training.device=cuda but no CUDA device is visible; use training.device=cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every block in backward (non-reentrant ``torch.utils.checkpoint``)."""
    for block in model.model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


@torch.no_grad()
def materialize_sharded(model: nn.Module, device: torch.device, seed: int | None) -> None:
    """Allocate a model built on the meta device and sharded by FSDP2, then initialise it shard by shard.

    Every rank draws each parameter's full initial value with the model's own policy
    (:meth:`~sumi.model.SumiForMaskGeneration.initial_value`, same seed and order as ``init_weights``) and keeps
    only its shard, so host memory peaks at one full parameter, not one full model, and the weights equal a
    single-process initialisation exactly.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    model.to_empty(device=device)
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    for name, param in model.named_parameters():
        full = model.initial_value(name, param.shape, gen).to(device=device, dtype=param.dtype)
        if isinstance(param, DTensor):
            full = distribute_tensor(full, param.device_mesh, param.placements)
        param.copy_(full)
    model.model.rotary.init_tables()


def parallelize(model: nn.Module, env: DistEnv, *, parallelism: str = "none", compile: bool = False,
                activation_checkpointing: bool = False) -> nn.Module:
    """Return the module to train (the model itself, or its DDP wrapper); FSDP2 shards it in place.

    Args:
        model: a :class:`~sumi.model.SumiForMaskGeneration` already on ``env.device``.
        parallelism: ``none``, ``ddp`` or ``fsdp`` (``none`` requires world size 1).
        compile: whole-model ``torch.compile`` (per block under FSDP2, whose hooks run between blocks).
    """
    if parallelism != "none" and not env.distributed:
        parallelism = "none"  # one process: nothing to parallelise
    if parallelism == "none" and env.distributed:
        from sumi.errors import ConfigError

        raise ConfigError(f"training.parallelism=none with {env.world_size} processes; use ddp or fsdp")
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if parallelism == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            if compile:
                block.compile()
            fully_shard(block)
        fully_shard(model)
        logger.info("FSDP2: %d block units + root over %d ranks", len(model.model.layers), env.world_size)
        return model
    if compile:
        model.compile()
    if parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        logger.info("DDP over %d ranks", env.world_size)
        return DistributedDataParallel(model, device_ids=device_ids)
    return model
