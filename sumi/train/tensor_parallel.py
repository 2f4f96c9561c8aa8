"""Tensor + sequence parallelism for a plain Sumi model with DTensor ``parallelize_module`` (Megatron layout).

Per block, on a TP group of ``tp`` ranks (activations shown for a [B, S, d] residual stream)::

    h [B, S/tp, d] (sequence-sharded) ─ RMSNorm (sequence-parallel) ─ all-gather → [B, S, d]
      → q/k/v column-parallel: heads/tp query heads, kv_heads/tp key-value heads per rank
      → sink attention on the local heads (the sink logit is per head: nothing to communicate)
      → o_proj row-parallel → reduce-scatter → [B, S/tp, d] + residual
    the same for SwiGLU: gate/up column-parallel (intermediate/tp), down row-parallel.

The embedding is row-parallel (vocabulary-sharded, output sequence-sharded), the final norm sequence-parallel,
and the head column-parallel with its logits gathered to every TP rank: the fused Sumi loss needs each token's
whole vocabulary row (a vocabulary-parallel loss is future work; it would save the [B, S, V] gather).
GQA needs ``num_key_value_heads % tp == 0`` (each rank keeps whole key/value heads for its query heads).
"""

from __future__ import annotations

import logging

from torch import nn

from sumi.errors import ConfigError

logger = logging.getLogger(__name__)


def check_tensor_parallel(config, tp: int) -> None:
    """ConfigError unless the head counts and the SwiGLU width split evenly over ``tp`` ranks."""
    for name, value in (("num_attention_heads", config.num_attention_heads),
                        ("num_key_value_heads", config.num_key_value_heads),
                        ("intermediate_size", config.intermediate_size)):
        if value % tp:
            raise ConfigError(f"training.tensor_parallel={tp} does not divide model {name}={value}; choose a "
                              "degree that divides the head counts and the SwiGLU width")


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Shard ``model`` (a :class:`~sumi.model.SumiForMaskGeneration`) in place over the 1-D ``tp_mesh``."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    tp = tp_mesh.size()
    check_tensor_parallel(model.config, tp)
    parallelize_module(model, tp_mesh, {
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "model.norm": SequenceParallel(),
        "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    })
    for block in model.model.layers:
        parallelize_module(block, tp_mesh, {
            "input_layernorm": SequenceParallel(),
            # forward(x, rope, key_mask): only x is sequence-sharded; RoPE tables and the mask stay plain.
            "self_attn": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                            desired_input_layouts=(Replicate(), None, None)),
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
            "post_attention_layernorm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
        })
        # The projections now return this rank's heads only; the attention reshapes by these counts.
        block.self_attn.num_heads //= tp
        block.self_attn.num_kv_heads //= tp
    logger.info("tensor parallel over %d ranks (sequence-parallel norms)", tp)
