"""``sumi probe --model DIR --out DIR [--prompt P ...] [--sweep canvas|steps|tokens-per-step|all|none]
[--dynamics]``: inference probes written as ``probe.json`` plus PNG plots.

Without ``--sweep`` and ``--dynamics`` every sweep and the dynamics run; naming one runs only what is named.
"""

from __future__ import annotations

import argparse

from sumi.errors import InputError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (with tokenizer files)")
    parser.add_argument("--tokenizer", help="tokenizer path (default: the model directory's)")
    parser.add_argument("--out", required=True, help="output directory for probe.json and the PNG plots")
    parser.add_argument("--prompt", action="append", help="prompt text (repeatable; default 'In the beginning')")
    parser.add_argument("--sweep", action="append", choices=("canvas", "steps", "tokens-per-step", "all", "none"),
                        help="which sweep(s) to run (repeatable)")
    parser.add_argument("--dynamics", action="store_true", help="record a step-by-step run per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--canvas-lengths", type=_ints, default=(), help="canvas sweep values, e.g. 128,256,512")
    parser.add_argument("--steps", type=_ints, default=(), help="step sweep values, e.g. 16,32,64")
    parser.add_argument("--tokens-per-step", type=_ints, default=(), help="tokens-per-step sweep values, e.g. 1,2,4")
    parser.add_argument("--canvas-length", type=int, default=2048,
                        help="canvas of the other sweeps and of the dynamics run (capped at max positions)")
    parser.add_argument("--sampler", default="adaptive", choices=("adaptive", "ancestral", "greedy"))
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--score-timesteps", type=int, default=32, help="K of the NELBO scoring each output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from sumi.checkpoint import resolve_model
    from sumi.eval.probes import SWEEPS, ProbeConfig, run_probes

    chosen = set(args.sweep or [])
    if "all" in chosen and "none" in chosen:
        raise InputError("--sweep all and --sweep none contradict each other")
    if not chosen and not args.dynamics:
        sweeps, dynamics = SWEEPS, True
    else:
        sweeps = SWEEPS if "all" in chosen else tuple(s for s in SWEEPS if s in chosen)
        dynamics = args.dynamics
    config = ProbeConfig(
        prompts=tuple(args.prompt or ("In the beginning",)), max_new_tokens=args.max_new_tokens, sweeps=sweeps,
        dynamics=dynamics, canvas_lengths=args.canvas_lengths, steps=args.steps,
        tokens_per_step=args.tokens_per_step, sampler=args.sampler, temperature=args.temperature,
        canvas_length=args.canvas_length, score_timesteps=args.score_timesteps, seed=args.seed,
    )
    model, tokenizer = resolve_model(args.model, args.tokenizer, device=args.device)
    report = run_probes(model, tokenizer, args.out, config, show_progress=not args.no_progress)
    for name, records in report.sweeps.items():
        print(f"sweep {name}:")
        for r in records:
            print(f"  canvas {r['canvas_length']:>5}  steps {r['steps']:>4}  tokens/step {r['tokens_per_step']:>2}  "
                  f"NELBO {r['nelbo']:.3f} ± {r['nelbo_stderr']:.3f}  fixed-point {r['fixed_point_rate']:.2f}  "
                  f"nfe {r['nfe']:>4}  {r['wall_s']:.2f}s")
    for d in report.dynamics:
        print(f"dynamics: {d['steps_run']} steps, {sum(d['flips_per_position'])} token changes, "
              f"final text {d['text']!r}")
    print(f"wrote {len(report.files)} files to {args.out}")
    return 0
