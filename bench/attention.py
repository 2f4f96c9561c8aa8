"""Attention paths: fused SDPA sink attention vs the eager reference, on the ~25M-non-embedding config.

Prints one JSON line: max |Δlogits| between the paths (fp32, with and without key padding) and the forward-time
ratio eager/SDPA measured in the same process (ratios, not absolute times: machines are shared and noisy).
Usage: python bench/attention.py [--seq 512] [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sumi.config import get_preset
from sumi.model import SumiForMaskGeneration


def interleaved_best_times(model, ids, impls, repeats):
    """Best forward time per attention path, alternating paths so machine noise hits both alike."""
    best = dict.fromkeys(impls, float("inf"))
    with torch.inference_mode():
        for round_ in range(repeats + 1):
            for impl in impls:
                model.set_attn_implementation(impl)
                start = time.perf_counter()
                model(ids)
                if round_:  # round 0 is warm-up
                    best[impl] = min(best[impl], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = get_preset("sumi-25m")
    model = SumiForMaskGeneration.from_config(config, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen)
    padded = torch.ones_like(ids)
    padded[:, args.seq * 3 // 4:] = 0
    result = {"bench": "attention", "config": "d512-L8-H8/2-V32k", "seq": args.seq, "batch": args.batch}
    logits = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        with torch.inference_mode():
            logits[impl] = (model(ids).logits, model(ids, attention_mask=padded).logits)
    for impl, seconds in interleaved_best_times(model, ids, ("eager", "sdpa"), args.repeats).items():
        result[f"{impl}_forward_s"] = round(seconds, 4)
    result["max_abs_diff"] = float((logits["eager"][0] - logits["sdpa"][0]).abs().max())
    keep = padded.bool()
    result["max_abs_diff_padded"] = float((logits["eager"][1] - logits["sdpa"][1])[keep].abs().max())
    result["speedup_sdpa_over_eager"] = round(result["eager_forward_s"] / result["sdpa_forward_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
