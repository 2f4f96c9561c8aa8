"""Run under torchrun (gloo, CPU): every parallel layout against one process, loss and full gradients.

Usage: ``torchrun --nproc_per_node=W tests/dist_parity.py OUT.json VARIANT [VARIANT ...]``; a variant is
``replicate,shard,tp,ac,compile,bf16`` (e.g. ``1,2,2,selective,0,0``). Each rank builds the sumi-tiny model on the
meta device, applies ``sumi.train.parallelize`` with that layout, materialises its shards, runs forward +
backward on its data-parallel rows of a fixed global batch, and compares the loss and every parameter's full
gradient with a single-process model on the whole batch. Rank 0 writes the largest differences to OUT.json.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from sumi.config import sumi_tiny
from sumi.model import SumiForMaskGeneration
from sumi.train.parallelize import Layout, init_distributed, materialize_sharded, parallelize

GLOBAL_BATCH, SEQ = 4, 32


def batch(config):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(3, config.vocab_size, (GLOBAL_BATCH, SEQ), generator=gen)
    z = torch.where(torch.rand(x.shape, generator=gen) < 0.5, x,
                    torch.randint(3, config.vocab_size, x.shape, generator=gen))
    t = torch.rand(GLOBAL_BATCH, generator=gen) * 0.8 + 0.1
    return z, x, t


def reference(config, data, bf16: bool):
    model = SumiForMaskGeneration.from_config(config, seed=0)
    if bf16:  # what FSDP2's policy computes with: bf16 copies of the fp32 weights
        model = model.to(torch.bfloat16)
    z, x, t = data
    loss = model(z, labels=x, t=t, validate=False).loss
    loss.backward()
    return loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}


def run_variant(env, config, data, spec: str) -> dict:
    replicate, shard, tp, ac, compile_, bf16 = spec.split(",")
    layout = Layout("fsdp", int(replicate), int(shard), int(tp))
    with torch.device("meta"):
        model = SumiForMaskGeneration(config)
    module = parallelize(model, env, layout, compile=compile_ == "1",
                         activation_checkpointing=False if ac == "none" else ac, bf16_params=bf16 == "1")
    materialize_sharded(model, env.device, 0)
    b = GLOBAL_BATCH // layout.data_size
    rows = slice(layout.data_rank(env.rank) * b, (layout.data_rank(env.rank) + 1) * b)
    z, x, t = data
    loss = module(z[rows], labels=x[rows], t=t[rows], validate=False).loss
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss = mean_loss.item() / env.world_size  # TP ranks hold the same loss: the mean is the DP mean
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad
        grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).float()
    ref_loss, ref_grads = reference(config, data, bf16 == "1")
    worst = max(((grads[n] - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp_min(1e-12)).item()
                for n in ref_grads)
    off = [n for n in ref_grads if not torch.allclose(grads[n], ref_grads[n], rtol=1e-3, atol=1e-5)]
    return {"loss": mean_loss, "ref_loss": ref_loss, "max_rel_grad_diff": worst,
            "names": sorted(grads) == sorted(ref_grads), "off": off[:8]}


def main() -> None:
    out, variants = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    config = sumi_tiny()
    data = batch(config)
    results = {spec: run_variant(env, config, data, spec) for spec in variants}
    if env.is_main:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
