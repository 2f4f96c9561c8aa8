"""The CPU demo's training step against the train-step benchmark's, in the same process: MFU of each and ratio.

Variants, interleaved step by step (each keeps its fastest step; the machine is shared):
``demo_eager`` / ``demo_compiled``: the model and batch of ``configs/tiny-cpu.yaml`` (what ``sumi demo`` trains,
8k vocabulary); ``bench_compiled``: ``bench/train_step.py``'s model (sumi-25m, 2 × 512, compiled). Same step as the
trainer (forward + fused loss + backward + clip + fused AdamW), same FLOP convention, same measured peak.
Prints one JSON line with ``demo_over_bench`` = demo MFU / benchmark MFU (the goal is >= 0.6).

    nice python bench/demo_efficiency.py [--threads 2] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))

import torch  # noqa: E402
from train_step import make_batch, matmul_peak, model_flops, one_step  # noqa: E402

from sumi.config import get_preset  # noqa: E402
from sumi.model import SumiForMaskGeneration  # noqa: E402
from sumi.train import resolve_run_config  # noqa: E402
from sumi.train.config import OptimizerSection  # noqa: E402
from sumi.train.optim import build_optimizer  # noqa: E402


def demo_config(recipe: str, vocab: int):
    cfg = resolve_run_config(recipe, [f"model.overrides.vocab_size={vocab}"])
    return cfg.model.build(), cfg.training.micro_batch_size, cfg.model.build().max_position_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "tiny-cpu.yaml"))
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo_cfg, demo_batch, demo_seq = demo_config(args.recipe, args.vocab)
    bench_cfg = get_preset("sumi-25m").replace(max_position_embeddings=512)
    setups = {"demo_eager": (demo_cfg, demo_batch, demo_seq, False),
              "demo_compiled": (demo_cfg, demo_batch, demo_seq, True),
              "bench_compiled": (bench_cfg, 2, 512, True)}
    built = {}
    for name, (cfg, batch, seq, compiled) in setups.items():
        model = SumiForMaskGeneration.from_config(cfg, seed=0)
        if compiled:
            model.compile()
        optimizer = build_optimizer(model, OptimizerSection())
        data = make_batch(cfg, batch, seq)
        for _ in range(2 if compiled else 1):  # warmup (compilation happens here)
            one_step(model, optimizer, data, fused=True)
        built[name] = (model, optimizer, data, model_flops(cfg, batch * seq, seq), batch * seq)
    best = {name: float("inf") for name in built}
    peak = 0.0
    for _ in range(args.steps):
        peak = max(peak, matmul_peak(reps=2))
        for name, (model, optimizer, data, _, _) in built.items():
            best[name] = min(best[name], one_step(model, optimizer, data, fused=True))
    peak = max(peak, matmul_peak())
    result = {"bench": "demo_efficiency", "threads": args.threads, "peak_fp32_gflops": round(peak, 1),
              "load_average_1min": round(os.getloadavg()[0], 2)}
    for name, (_, _, _, flops, tokens) in built.items():
        result[f"{name}_tokens_per_s"] = round(tokens / best[name], 1)
        result[f"{name}_mfu"] = round(flops / best[name] / 1e9 / peak, 3)
    result["demo_params_non_embedding"] = demo_cfg.num_parameters()["non_embedding"]
    result["demo_over_bench"] = round(result["demo_compiled_mfu"] / result["bench_compiled_mfu"], 3)
    result["demo_eager_over_bench"] = round(result["demo_eager_mfu"] / result["bench_compiled_mfu"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
