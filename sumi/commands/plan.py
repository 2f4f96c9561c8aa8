"""``sumi plan``: per-GPU memory, parallel layout, step time, MFU and tokens/day of a training run on a cluster.

    sumi plan --config configs/sumi-7b-stage1.yaml --gpus 288 --tokens 1.5e12
    sumi plan sumi-1b --seq-len 1184 --global-batch 512 --gpus 8 --json
"""

from __future__ import annotations

import argparse
import json

from sumi.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sumi.plan import Cluster

    defaults = Cluster()
    parser.add_argument("model", nargs="?", help="a preset or a model directory (or give --config)")
    parser.add_argument("--config", help="a training recipe: its model, data.seq_len and global batch")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the recipe's, else 1184)")
    parser.add_argument("--global-batch", type=int, help="sequences per optimizer step (default: the recipe's)")
    parser.add_argument("--gpus", type=int, default=defaults.gpus)
    parser.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node)
    parser.add_argument("--memory-gib", type=float, default=defaults.memory_gib, help="memory per GPU")
    parser.add_argument("--peak-tflops", type=float, default=defaults.peak_tflops, help="dense bf16 peak per GPU")
    parser.add_argument("--intra-node-gbps", type=float, default=defaults.intra_node_gbps,
                        help="per-GPU bandwidth inside a node, GB/s")
    parser.add_argument("--inter-node-gbps", type=float, default=defaults.inter_node_gbps,
                        help="per-GPU bandwidth across nodes, GB/s")
    parser.add_argument("--matmul-efficiency", type=float, default=defaults.matmul_efficiency,
                        help="share of the peak a step reaches when not waiting on communication (assumed)")
    parser.add_argument("--tokens", type=float, help="also print GPU-hours and days for this many tokens")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def resolve(args: argparse.Namespace):
    """(model config, seq_len, global batch) from a recipe and/or a preset / directory."""
    from sumi.commands.info import resolve_config

    seq_len, global_batch, config = args.seq_len, args.global_batch, None
    if args.config:
        from sumi.train import resolve_run_config

        run = resolve_run_config(args.config)
        config = run.model.build()
        seq_len = seq_len or run.data.seq_len
        global_batch = global_batch or run.training.global_batch_size or None
    if args.model:
        config = resolve_config(args.model)[0]
    if config is None:
        raise ConfigError("give a model (a preset or a model directory) or --config RECIPE")
    if not global_batch:
        raise ConfigError("give --global-batch (sequences per optimizer step) or a recipe that sets "
                          "training.global_batch_size")
    return config, seq_len or 1184, global_batch


def run(args: argparse.Namespace) -> int:
    from sumi.plan import Cluster, describe, gpu_hours, plan

    config, seq_len, global_batch = resolve(args)
    cluster = Cluster(gpus=args.gpus, gpus_per_node=args.gpus_per_node, memory_gib=args.memory_gib,
                      peak_tflops=args.peak_tflops, intra_node_gbps=args.intra_node_gbps,
                      inter_node_gbps=args.inter_node_gbps, matmul_efficiency=args.matmul_efficiency)
    best, _ = plan(config, seq_len, global_batch, cluster)
    if args.json:
        out = {"seq_len": seq_len, "global_batch": global_batch, "cluster": cluster.__dict__,
               "parameters": config.num_parameters()["total"], "plan": best.to_dict()}
        if args.tokens:
            out["gpu_hours"] = gpu_hours(best, cluster, args.tokens)
        print(json.dumps(out))
        return 0
    print("\n".join(describe(config, seq_len, global_batch, cluster, best, args.tokens)))
    return 0
