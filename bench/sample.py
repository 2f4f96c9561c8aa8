"""Sampler speed: the fast samplers vs the straightforward loop, and the sampler's cost beyond the forward pass.

Model: ~25M non-embedding parameters (d 512, 8 layers, 8/2 heads, head_dim 64, SwiGLU 1408, vocab 32000), random
weights, fp32, 2 threads. Canvas 256 (16-token prompt, 64 new tokens), a 64-step linear schedule, temperature 1.
Prints one JSON line:

* ``forward_ms[B]``: one full SDPA forward (trunk + lm_head) of [B, 256], best of 3;
* ``fast[sampler][B]`` / ``reference[sampler][B]``: ms/step and new tokens/s (= B·64 / (64 steps · ms/step)).
  Fast ancestral runs all 64 steps (its cost varies along the schedule: lm_head only runs where the posterior
  needs logits); fast adaptive and the references cost the same every step, so their first ``--timed-steps``
  steps are timed. The reference uses eager attention, the explicit V-sized float64 posterior and
  ``torch.multinomial`` over every row;
* ``speedup[sampler][B]``: reference ms/step ÷ fast ms/step;
* ``step_vs_forward[sampler][B]``: fast ms/step ÷ forward ms − 1 (negative: a step is cheaper than a forward);
* ``sampler_overhead[sampler][B]``: the sampler's own work per step (the same loop on a model that returns
  precomputed logits, so the forward costs nothing) ÷ forward ms. Target ≤ 0.10.

Usage: ``python bench/sample.py [--timed-steps 6] [--threads 2]``. Runtime ~2-3 min on 2 idle cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from torch import nn

from sumi.config import sumi_tiny
from sumi.model import SumiForMaskGeneration
from sumi.sampling import generate, plan_canvas
from sumi.sampling.reference import reference_generate

CANVAS, PROMPT, NEW_TOKENS, STEPS = 256, 16, 64, 64


def bench_config():
    return dataclasses.replace(sumi_tiny(), vocab_size=32000, hidden_size=512, intermediate_size=1408,
                               num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                               max_position_embeddings=CANVAS)


class PrecomputedLogits(nn.Module):
    """Returns fixed logits: runs the sampler loop with a forward that costs nothing."""

    def __init__(self, logits: torch.Tensor, config) -> None:
        super().__init__()
        self.logits, self.config = logits, config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits[: ids.shape[0]]


def seconds(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_fast(model, prompts, canvas, sampler: str, timed: int) -> None:
    stop = (lambda info: info.step + 1 >= timed) if timed < STEPS else None
    out = generate(model, prompts, max_new_tokens=NEW_TOKENS, num_denoising_steps=STEPS, sampler=sampler,
                   canvas_length=CANVAS, initial_canvas=canvas, seed=1, callback=stop)
    assert out.steps_run == timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timed-steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = bench_config()
    model = SumiForMaskGeneration.from_config(config, seed=0).eval()
    n = args.timed_steps
    result = {"config": {"non_embedding_params": model.num_parameters()["non_embedding"], "vocab": config.vocab_size,
                         "canvas": CANVAS, "steps": STEPS, "new_tokens": NEW_TOKENS, "timed_steps": n,
                         "threads": args.threads, "dtype": "float32", "torch": torch.__version__},
              "forward_ms": {}, "fast": {}, "reference": {}, "speedup": {}, "step_vs_forward": {},
              "sampler_overhead": {}}
    for batch in (1, 4):
        key = str(batch)
        prompts = [list(range(3, 3 + PROMPT))] * batch
        plan = plan_canvas(prompts, vocab_size=config.vocab_size, max_positions=CANVAS, bos_id=0, eos_id=1,
                           max_new_tokens=NEW_TOKENS, canvas_length=CANVAS, generator=torch.Generator().manual_seed(0))
        canvas = plan.canvas
        with torch.inference_mode():
            logits = model(canvas).logits  # also the warm-up
            forward = seconds(lambda c=canvas: model(c), 3)
        result["forward_ms"][key] = round(1e3 * forward, 2)
        fake = PrecomputedLogits(logits, config)
        for sampler in ("ancestral", "adaptive"):
            timed = STEPS if sampler == "ancestral" else n
            fast_ms = 1e3 * seconds(lambda s=sampler, t=timed, p=prompts, c=canvas: run_fast(model, p, c, s, t)) / timed
            slow_ms = 1e3 * seconds(lambda s=sampler, c=canvas, f=plan.free_mask: reference_generate(
                model, c, f, sampler=s, num_steps=STEPS, generator=torch.Generator().manual_seed(1),
                stop_after=n)) / n
            sampler_ms = 1e3 * seconds(lambda s=sampler, p=prompts, c=canvas, m=fake: run_fast(m, p, c, s, n), 2) / n
            for name, ms in (("fast", fast_ms), ("reference", slow_ms)):
                result[name].setdefault(sampler, {})[key] = {
                    "ms_per_step": round(ms, 2), "new_tokens_per_s": round(batch * NEW_TOKENS / (STEPS * ms / 1e3), 2)}
            result["speedup"].setdefault(sampler, {})[key] = round(slow_ms / fast_ms, 3)
            result["step_vs_forward"].setdefault(sampler, {})[key] = round(fast_ms / (1e3 * forward) - 1, 4)
            result["sampler_overhead"].setdefault(sampler, {})[key] = round(sampler_ms / (1e3 * forward), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
