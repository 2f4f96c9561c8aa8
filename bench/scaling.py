"""Data-parallel scaling on CPU: 2 ranks (1 thread each) against 2 × one rank (1 thread), the same step.

The trainer's step (forward + fused Sumi loss + backward + clip + fused AdamW) on a d 256, 4-layer, 8k-vocabulary
model (the demo's) with micro-batch 4 × 256 per rank, under ``torchrun`` with gloo: world 1 gives the one-rank
rate r1, world 2 (DDP, or ``--parallelism fsdp``) the rate r2 of the whole job. Efficiency = r2 / (2 · r1), at
equal total threads (2 = 2 × 1). The two runs alternate for ``--rounds`` rounds and each keeps its best, because
the machine is shared. Prints one JSON line (goal: efficiency >= 0.9).

    nice python bench/scaling.py [--rounds 2] [--steps 6] [--parallelism ddp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from sumi.config import get_preset
    from sumi.model import SumiForMaskGeneration
    from sumi.train.config import OptimizerSection
    from sumi.train.optim import build_optimizer
    from sumi.train.parallelize import init_distributed, materialize_sharded, parallelize

    torch.set_num_threads(1)
    env = init_distributed("cpu")
    cfg = get_preset("sumi-tiny").replace(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                          vocab_size=8192, max_position_embeddings=256)
    parallelism = args.parallelism if env.distributed else "none"
    if parallelism == "fsdp":
        with torch.device("meta"):
            model = SumiForMaskGeneration(cfg)
        module = parallelize(model, env, parallelism)
        materialize_sharded(model, env.device, 0)
    else:
        model = SumiForMaskGeneration.from_config(cfg, seed=0)
        module = parallelize(model, env, parallelism)
    optimizer = build_optimizer(model, OptimizerSection())
    gen = torch.Generator().manual_seed(env.rank)
    x = torch.randint(3, cfg.vocab_size, (args.batch, 256), generator=gen)
    t = torch.rand(args.batch, generator=gen)

    def step():
        module(x, labels=x, t=t, validate=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    best = float("inf")
    for _ in range(args.steps):
        if env.distributed:
            dist.barrier()
        start = time.perf_counter()
        step()
        elapsed = torch.tensor([time.perf_counter() - start])
        if env.distributed:  # the job's step ends when its slowest rank's does
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        best = min(best, float(elapsed))
    if env.is_main:
        print(json.dumps({"world": env.world_size, "step_s": best,
                          "tokens_per_s": env.world_size * args.batch * 256 / best}))
    if env.distributed:
        dist.destroy_process_group()


def launch(world: int, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={world}", __file__,
           "--worker", "--steps", str(args.steps), "--batch", str(args.batch), "--parallelism", args.parallelism]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--parallelism", default="ddp", choices=["ddp", "fsdp"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    best = {1: 0.0, 2: 0.0}
    for _ in range(args.rounds):
        for world in (1, 2):
            best[world] = max(best[world], launch(world, args)["tokens_per_s"])
    print(json.dumps({"bench": "scaling", "parallelism": args.parallelism, "batch_per_rank": args.batch,
                      "one_rank_tokens_per_s": round(best[1], 1), "two_ranks_tokens_per_s": round(best[2], 1),
                      "efficiency": round(best[2] / (2 * best[1]), 3), "cpus": os.cpu_count(),
                      "load_average_1min": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
