"""``sumi score --model DIR (--text T | --file F | --prompt P --continuation C)``: NELBO in nats/token.

Prints one line per text (NELBO ± Monte-Carlo standard error, bits per byte, perplexity bound) or, with
``--json``, a JSON list of results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sumi.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (config.json, safetensors, tokenizer)")
    parser.add_argument("--tokenizer", help="tokenizer path (default: the model directory's)")
    src = parser.add_argument_group("what to score (one of)")
    src.add_argument("--text", action="append", help="a text to score (repeatable)")
    src.add_argument("--file", action="append", help="a UTF-8 file scored as one text (repeatable; '-' = stdin)")
    src.add_argument("--lines", action="store_true", help="with --file: score every non-empty line on its own")
    src.add_argument("--prompt", help="a clean prompt (never scored); needs --continuation")
    src.add_argument("--continuation", action="append", help="scored text after --prompt (repeatable)")
    est = parser.add_argument_group("estimator")
    est.add_argument("-K", "--num-timesteps", type=int, default=128, help="grid points over alpha (default 128)")
    est.add_argument("--num-draws", type=int, default=1, help="noise draws per grid point (default 1)")
    est.add_argument("--canvas-length", type=int, default=2048, help="canvas ids (capped at max positions)")
    est.add_argument("--batch-size", type=int, default=32, help="canvas rows per forward pass")
    est.add_argument("--seed", type=int, default=0)
    est.add_argument("--effective-snr", action="store_true", help="the reference's biased variance heuristic")
    enc = parser.add_argument_group("encoding")
    enc.add_argument("--no-bos", action="store_true", help="do not prefix BOS to the prompt")
    enc.add_argument("--no-eos", action="store_true", help="do not score a closing EOS")
    enc.add_argument("--tokenization", choices=("separate", "joint"), default="separate",
                     help="encode prompt and continuation separately (paper) or jointly then split")
    enc.add_argument("--truncation", choices=("error", "left", "right"), default="error",
                     help="over-long inputs: refuse, drop the oldest prompt tokens, or drop the end")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _texts(args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    """(texts, continuations): continuations is None for unconditional scoring."""
    if args.prompt is not None or args.continuation:
        if args.prompt is None or not args.continuation:
            raise InputError("--prompt and --continuation go together")
        if args.text or args.file:
            raise InputError("give either --prompt/--continuation or --text/--file, not both")
        return [args.prompt] * len(args.continuation), list(args.continuation)
    texts = list(args.text or [])
    for name in args.file or []:
        if name == "-":
            content = sys.stdin.read()
        else:
            path = Path(name)
            if not path.is_file():
                raise InputError(f"--file {name}: no such file")
            content = path.read_text(encoding="utf-8")
        texts.extend([line for line in content.splitlines() if line.strip()] if args.lines else [content])
    if not texts:
        raise InputError("nothing to score: pass --text, --file, or --prompt with --continuation")
    return texts, None


def run(args: argparse.Namespace) -> int:
    from sumi.eval.nelbo import score

    texts, continuations = _texts(args)
    results = score(
        args.model, args.tokenizer, texts, continuation=continuations, num_timesteps=args.num_timesteps,
        num_draws=args.num_draws, canvas_length=args.canvas_length, batch_size=args.batch_size, seed=args.seed,
        add_bos=not args.no_bos, add_eos=not args.no_eos, tokenization=args.tokenization,
        truncation=args.truncation, effective_snr=args.effective_snr, device=args.device,
        show_progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps([{k: v for k, v in r.to_dict().items() if k != "per_timestep"} for r in results],
                         indent=2))
        return 0
    shown = continuations if continuations is not None else texts
    for text, r in zip(shown, results):
        preview = text.replace("\n", " ")
        preview = preview[:40] + "…" if len(preview) > 41 else preview
        print(f"{r.nelbo:.4f} ± {r.stderr:.4f} nats/token  ({r.num_tokens} tokens, {r.bits_per_byte:.4f} bits/byte, "
              f"ppl ≤ {r.perplexity_bound:.2f})  {preview!r}")
    if len(results) > 1:
        tokens = sum(r.num_tokens for r in results)
        total = sum(r.total_nats for r in results)
        err = sum(r.total_stderr ** 2 for r in results) ** 0.5
        print(f"all: {total / tokens:.4f} ± {err / tokens:.4f} nats/token over {tokens} tokens")
    return 0
