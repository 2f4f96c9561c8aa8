"""UDLM vs AR at equal size and tokens, with error bars: the tiny-cpu model trained for a few steps on the embedded
corpus, once as a uniform diffusion model and once as a causal baseline, for several seeds (each seed changes the
initialisation, the data order and the noise), both scored on the same held-out batches.

The UDLM number is a NELBO (an upper bound on the NLL, estimated with one random noise level per held-out row); the
AR number is the exact NLL. Their spread over seeds is the error bar; the UDLM's own Monte-Carlo error of the
held-out estimate is included in that spread because each seed also draws its own evaluation noise.

Prints one JSON line. Usage: python bench/udlm_vs_ar.py [--seeds 3] [--steps 80] [--out runs/udlm_vs_ar]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from sumi.commands.demo import _shards, _tokenizer
from sumi.train import resolve_run_config, train

ROOT = Path(__file__).resolve().parents[1]


def one_run(out: Path, shard_dir: Path, tok, *, causal: bool, seed: int, steps: int) -> float:
    name = f"{'ar' if causal else 'udlm'}-seed{seed}"
    cfg = resolve_run_config(str(ROOT / "configs" / "tiny-cpu.yaml"), [
        f"data.shard_dir={shard_dir}", f"training.output_dir={out / name}", f"training.seed={seed}",
        f"training.eval_seed={seed}", f"model.init_seed={seed}", f"model.causal={str(causal).lower()}",
        f"training.steps={steps}", f"schedule.warmup_steps={min(8, steps)}", f"training.eval_every={steps}",
        "training.eval_batches=8", f"checkpoint.every={steps}", "checkpoint.export=false",
        f"model.overrides.vocab_size={tok.vocab_size}", "training.progress=false"])
    return float(train(cfg, tokenizer=tok, overwrite=True).heldout_nelbo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "udlm_vs_ar")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(args.out, 8192)
    shard_dir = _shards(args.out, tok, 256, 0)
    result = {"steps": args.steps, "seeds": args.seeds}
    for causal, key in ((False, "udlm_nelbo"), (True, "ar_nll")):
        values = [one_run(args.out, shard_dir, tok, causal=causal, seed=s, steps=args.steps) for s in range(args.seeds)]
        result[key] = {"values": [round(v, 4) for v in values], "mean": round(statistics.mean(values), 4),
                       "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}
    gaps = [u - a for u, a in zip(result["udlm_nelbo"]["values"], result["ar_nll"]["values"])]
    result["gap"] = {"values": [round(g, 4) for g in gaps], "mean": round(statistics.mean(gaps), 4),
                     "std": round(statistics.stdev(gaps), 4) if len(gaps) > 1 else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
