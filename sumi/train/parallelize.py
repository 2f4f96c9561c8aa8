"""Apply tensor parallelism, activation checkpointing, ``torch.compile`` and DDP / FSDP2 / HSDP to a plain Sumi
model from outside.

Order (as in torchtitan): tensor parallelism → activation checkpointing → compile → data parallelism. Everything
is done in place (``parallelize_module`` swaps parameters for DTensors, ``block.forward`` is wrapped,
``nn.Module.compile``), so parameter names stay the release names and checkpoints do not depend on the layout.
Only PyTorch's own stack is used.

The ranks form a device mesh ``(dp_replicate, dp_shard, tp)`` (:class:`Layout`; tp innermost, so a TP group is
consecutive ranks, i.e. one node's GPUs):

* ``tp``: DTensor ``parallelize_module`` (:mod:`sumi.train.tensor_parallel`): column-parallel q/k/v and
  gate/up, row-parallel o/down, sequence-parallel norms, and each rank keeps ``heads / tp`` query heads and
  ``kv_heads / tp`` key/value heads (the sink is per head, so it needs nothing);
* ``dp_shard``: FSDP2 ``fully_shard`` (one unit per block plus the root), with a ``MixedPrecisionPolicy`` of
  bf16 parameters and fp32 gradient reduction when ``precision`` is bf16;
* ``dp_replicate``: HSDP: full replicas across groups (nodes), FSDP within each, gradients all-reduced across.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from sumi.errors import ConfigError

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
        raise ConfigError("training.device=cuda but no CUDA device is visible; use training.device=cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


@dataclass(frozen=True)
class Layout:
    """How the ranks split the work: ``world = replicate × shard × tensor`` (``data = replicate × shard``)."""

    data_parallel: str = "none"
    """``none`` (one process), ``ddp`` or ``fsdp`` (FSDP2; HSDP when ``replicate`` > 1)."""
    replicate: int = 1
    """HSDP replica groups (FSDP2 shards within a group, gradients are all-reduced across groups)."""
    shard: int = 1
    """Ranks a parameter is sharded over (FSDP2) or replicated over (DDP)."""
    tensor: int = 1
    """Tensor-parallel degree (ranks splitting each matmul)."""

    @property
    def data_size(self) -> int:
        """Data-parallel ranks: each sees different rows (the ranks of one TP group see the same rows)."""
        return self.replicate * self.shard

    def data_rank(self, rank: int) -> int:
        """The data-parallel index of global ``rank`` (tp is the innermost mesh dimension)."""
        return rank // self.tensor

    @staticmethod
    def resolve(parallelism: str, world_size: int, replicate: int = 1, tensor: int = 1) -> Layout:
        """Check the requested degrees against the world size; a ConfigError says what to change."""
        if world_size % (replicate * tensor):
            raise ConfigError(f"{world_size} ranks are not divisible by training.data_parallel_replicate × "
                              f"training.tensor_parallel = {replicate} × {tensor}; change one of them")
        shard = world_size // (replicate * tensor)
        if parallelism == "auto":
            parallelism = "fsdp" if world_size > 1 else "none"
        if parallelism == "none":
            if world_size > 1:
                raise ConfigError(f"training.parallelism=none with {world_size} processes; use ddp or fsdp")
            return Layout()
        if parallelism == "ddp" and (replicate > 1 or tensor > 1):
            raise ConfigError("training.data_parallel_replicate and training.tensor_parallel need "
                              "training.parallelism=fsdp (DDP composes with neither here)")
        if world_size == 1 and not dist.is_initialized():
            return Layout()  # one process and no process group: nothing to parallelise
        return Layout(parallelism, replicate, shard, tensor)

    def mesh(self, device_type: str):
        """The ``(dp_replicate, dp_shard, tp)`` DeviceMesh over all ranks."""
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device_type, (self.replicate, self.shard, self.tensor),
                                mesh_dim_names=("dp_replicate", "dp_shard", "tp"))


def _attention_ops() -> set:
    names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    return {getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)}


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpointing: keep matmul and attention outputs, recompute the cheap elementwise ops (norms,
    RoPE, SiLU·up, residual adds) that hold most of a block's activation memory per FLOP."""
    if op in _SAVED_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SAVED_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
              *_attention_ops()}
AC_MODES = ("full", "selective")


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The blocks of a Sumi model, also when it is wrapped in LoRA adapters (``peft.PeftModel``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.layers


def apply_activation_checkpointing(model: nn.Module, mode: str = "full") -> None:
    """Recompute every block in backward (non-reentrant ``torch.utils.checkpoint``).

    ``full`` recomputes the whole block (stores only its input); ``selective`` stores matmul and attention
    outputs and recomputes the elementwise ops in between (less recompute, more memory).
    """
    if mode not in AC_MODES:
        raise ConfigError(f"activation checkpointing mode {mode!r}; use one of {AC_MODES}")
    extra = {}
    if mode == "selective":
        extra["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_matmuls)
    for block in transformer_blocks(model):
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **extra, **kwargs)

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


def parallelize(model: nn.Module, env: DistEnv, layout: Layout | str = "none", *, compile: bool = False,
                activation_checkpointing: bool | str = False, bf16_params: bool = False) -> nn.Module:
    """Return the module to train (the model itself, or its DDP wrapper); TP and FSDP2 work in place.

    Args:
        model: a :class:`~sumi.model.SumiForMaskGeneration` on ``env.device`` (or on meta, for FSDP2 / TP).
        layout: a :class:`Layout`, or ``none`` / ``ddp`` / ``fsdp`` over all ranks.
        compile: ``torch.compile`` each block (with DP / TP hooks running between blocks), the whole model
            otherwise.
        activation_checkpointing: ``False``, ``True`` / ``"full"`` or ``"selective"``.
        bf16_params: FSDP2 ``MixedPrecisionPolicy``: bf16 parameters in forward/backward, fp32 gradient
            reduction and fp32 master weights and optimizer state.
    """
    if isinstance(layout, str):
        layout = Layout.resolve(layout, env.world_size)
    if compile and layout.tensor > 1:
        # Measured (torch 2.13, gloo): with compiled blocks under TP the embedding's gradient comes out wrong
        # (loss and every block gradient match one process); refuse rather than train on it.
        raise ConfigError("training.compile with training.tensor_parallel > 1 gives a wrong embedding gradient "
                          "in this torch version (tests/test_parallel_layouts.py); turn one of them off")
    mesh = layout.mesh(env.device.type) if layout.data_parallel == "fsdp" else None
    if layout.tensor > 1:
        from sumi.train.tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(model, mesh["tp"])
    if activation_checkpointing:
        apply_activation_checkpointing(model, "full" if activation_checkpointing is True else
                                       activation_checkpointing)
    if layout.data_parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        dp_mesh = mesh["dp_replicate", "dp_shard"] if layout.replicate > 1 else mesh["dp_shard"]
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params
                  else MixedPrecisionPolicy())
        for block in transformer_blocks(model):
            if compile:
                block.compile()
            fully_shard(block, mesh=dp_mesh, mp_policy=policy)
        fully_shard(model, mesh=dp_mesh, mp_policy=policy)
        logger.info("FSDP2: %d block units + root; mesh replicate %d × shard %d × tp %d%s",
                    len(transformer_blocks(model)), layout.replicate, layout.shard, layout.tensor,
                    ", bf16 params / fp32 reduce" if bf16_params else "")
        return model
    if bf16_params:
        raise ConfigError("bf16 parameters (MixedPrecisionPolicy) need training.parallelism=fsdp; "
                          "use bf16 autocast otherwise")
    if compile:
        model.compile()
    if layout.data_parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        logger.info("DDP over %d ranks", env.world_size)
        return DistributedDataParallel(model, device_ids=device_ids)
    return model
