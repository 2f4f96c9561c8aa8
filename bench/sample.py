"""Sampler speed: the fast samplers vs the straightforward loop, and the sampler's cost beyond the forward pass.

Model: ~25M non-embedding parameters (d 512, 8 layers, 8/2 heads, head_dim 64, SwiGLU 1408, vocab 32000), random
weights, fp32, 2 threads. Canvas 256 (16-token prompt, 64 new tokens), a 64-step linear schedule, temperature 1.
Prints one JSON line:

* ``forward_ms[B]``: one full SDPA forward (trunk + lm_head) of [B, 256], best of 3;
* ``fast[sampler][B]`` / ``reference[sampler][B]``: ms/step and new tokens/s (= B·64 / (64 steps · ms/step)).
  Fast ancestral runs all 64 steps (its cost varies along the schedule: lm_head only runs where the posterior
  needs logits); fast adaptive costs the same every step, so its first ``--timed-steps`` steps are timed, and
  the reference's first step is timed several times. Each step's time is the minimum over ``--repeats``
  identical runs (a busy machine only adds time). The reference uses eager attention, the explicit V-sized
  float64 posterior and ``torch.multinomial`` over every row;
* ``speedup[sampler][B]``: reference ms/step ÷ fast ms/step;
* ``step_vs_forward[sampler][B]``: fast ms/step ÷ forward ms − 1 (negative: a step is cheaper than a forward);
* ``sampler_overhead[sampler][B]``: the sampler's own work per step (the same loop, over the same steps, on a
  model that returns precomputed logits, so the forward costs nothing) ÷ forward ms. Target ≤ 0.10.

Usage: ``python bench/sample.py [--timed-steps 6] [--repeats 2] [--threads 2]``. Runtime ~3 min on 2 idle cores.
``--overhead-only psi threshold`` times only those samplers' own work (the logits-only loop) against a forward.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from sumi.config import get_preset
from sumi.model import SumiForMaskGeneration
from sumi.sampling import generate, plan_canvas
from sumi.sampling.reference import reference_generate

CANVAS, PROMPT, NEW_TOKENS, STEPS = 256, 16, 64, 64



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


SAMPLER_OPTIONS = {"psi": {"psi_kappa": 0.5}, "threshold": {"threshold": 0.8, "tokens_per_step": 4}}
"""Options of the few-step samplers when their own work is timed (``--overhead-only``)."""


def fast_step_times(model, prompts, canvas, sampler: str, timed: int) -> list[float]:
    """Wall time of each of the first ``timed`` steps of a 64-step run (seconds)."""
    marks = [time.perf_counter()]

    def tick(info) -> bool:
        marks.append(time.perf_counter())
        return info.step + 1 >= timed

    out = generate(model, prompts, max_new_tokens=NEW_TOKENS, num_denoising_steps=STEPS, sampler=sampler,
                   canvas_length=CANVAS, initial_canvas=canvas, seed=1, callback=tick,
                   **SAMPLER_OPTIONS.get(sampler, {}))
    assert out.steps_run == timed
    return [b - a for a, b in zip(marks, marks[1:])]


def best_per_step(runs: list[list[float]]) -> list[float]:
    """Per-step minimum over repeated identical runs: a busy machine only ever adds time."""
    return [min(times) for times in zip(*runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timed-steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overhead-only", nargs="+", default=None, metavar="SAMPLER",
                        help="only time these samplers' own work against a forward (e.g. psi threshold)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = get_preset("sumi-25m").replace(max_position_embeddings=CANVAS)
    model = SumiForMaskGeneration.from_config(config, seed=0).eval()
    n, repeats = args.timed_steps, args.repeats
    result = {"config": {"non_embedding_params": model.num_parameters(exclude_embeddings=True),
                         "vocab": config.vocab_size,
                         "canvas": CANVAS, "steps": STEPS, "new_tokens": NEW_TOKENS, "timed_steps": n,
                         "repeats": repeats, "threads": args.threads, "dtype": "float32", "torch": torch.__version__},
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
        fake = PrecomputedLogits(logits, config)

        def forward_time(c=canvas, repeats=2):
            with torch.inference_mode():
                return seconds(lambda: model(c), repeats)

        def reference_step(sampler, c=canvas, f=plan.free_mask):
            return seconds(lambda: reference_generate(model, c, f, sampler=sampler, num_steps=STEPS,
                                                      generator=torch.Generator().manual_seed(1), stop_after=1))

        # Every number is a minimum over repeats (per step for the loops), and the repeats interleave the fast
        # loop, the reference, the logits-only loop and the forward: a busy machine only adds time, so minima
        # taken close together are the closest to an idle machine.
        forward = forward_time(repeats=3)
        if args.overhead_only:
            for sampler in args.overhead_only:
                runs = []
                for _ in range(repeats):
                    runs.append(fast_step_times(fake, prompts, canvas, sampler, n))
                    forward = min(forward, forward_time(repeats=1))
                sampler_ms = 1e3 * sum(best_per_step(runs)) / n
                result["sampler_overhead"].setdefault(sampler, {})[key] = round(sampler_ms / (1e3 * forward), 4)
            result["forward_ms"][key] = round(1e3 * forward, 2)
            continue
        timings = {}
        for sampler in ("ancestral", "adaptive"):
            timed = STEPS if sampler == "ancestral" else n  # ancestral's cost varies along the schedule
            fast_runs, slow, sampler_runs = [], float("inf"), []
            for _ in range(repeats):
                fast_runs.append(fast_step_times(model, prompts, canvas, sampler, timed))
                slow = min([slow] + [reference_step(sampler) for _ in range(max(1, n // repeats))])
                sampler_runs.append(fast_step_times(fake, prompts, canvas, sampler, timed))
                forward = min(forward, forward_time(repeats=1))
            fast_ms = 1e3 * sum(best_per_step(fast_runs)) / timed
            sampler_ms = 1e3 * sum(best_per_step(sampler_runs)) / timed
            timings[sampler] = (fast_ms, 1e3 * slow, sampler_ms)
        result["forward_ms"][key] = round(1e3 * forward, 2)
        for sampler, (fast_ms, slow_ms, sampler_ms) in timings.items():
            for name, ms in (("fast", fast_ms), ("reference", slow_ms)):
                result[name].setdefault(sampler, {})[key] = {
                    "ms_per_step": round(ms, 2), "new_tokens_per_s": round(batch * NEW_TOKENS / (STEPS * ms / 1e3), 2)}
            result["speedup"].setdefault(sampler, {})[key] = round(slow_ms / fast_ms, 3)
            result["step_vs_forward"].setdefault(sampler, {})[key] = round(fast_ms / (1e3 * forward) - 1, 4)
            result["sampler_overhead"].setdefault(sampler, {})[key] = round(sampler_ms / (1e3 * forward), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
