"""``sumi score --model DIR (--text T | --file F | --prompt P --continuation C | --shards DIR)``: NELBO in
nats/token.

Prints one line per text (NELBO ± Monte-Carlo standard error, bits per byte, perplexity bound) or, with
``--json``, JSON Lines: one object per scored text, carrying the text (or prompt and continuation) it scored.
``--shards`` scores packed canvases of a shard directory (default: its held-out split) exactly as stored —
ids, no BOS/EOS added — and prints their token-weighted NELBO.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sumi._io import read_text
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
    src.add_argument("--shards", help="a shard directory (`sumi data`): score its packed canvases")
    src.add_argument("--split", default="heldout", choices=("heldout", "train"), help="with --shards")
    src.add_argument("--max-canvases", type=int, default=16, help="with --shards: score the first N canvases")
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
    parser.add_argument("--json", action="store_true",
                        help="print JSON Lines: one object per scored text, with the text itself")
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
            content = read_text(path)
        texts.extend([line for line in content.splitlines() if line.strip()] if args.lines else [content])
    if not texts:
        raise InputError("nothing to score: pass --text, --file, or --prompt with --continuation")
    return texts, None


def _score_shards(args: argparse.Namespace) -> int:
    """Token-weighted NELBO of the first ``--max-canvases`` canvases of a shard split (ids as stored)."""
    import math

    from sumi.checkpoint import resolve_model
    from sumi.data.loader import PackedDataset
    from sumi.eval.nelbo import NelboConfig, canvas_size, nelbo_of_ids

    if args.text or args.file or args.prompt or args.continuation:
        raise InputError("--shards scores stored canvases; do not combine it with --text/--file/--prompt")
    if args.max_canvases <= 0:
        raise InputError(f"--max-canvases must be positive, got {args.max_canvases}")
    model, tokenizer = resolve_model(args.model, args.tokenizer, device=args.device)
    data = PackedDataset(args.shards, args.split)
    if len(data) == 0:
        raise InputError(f"the {args.split} split of {args.shards} is empty")
    config = NelboConfig(num_timesteps=args.num_timesteps, num_draws=args.num_draws,
                         canvas_length=args.canvas_length, batch_size=args.batch_size, seed=args.seed,
                         effective_snr=args.effective_snr)
    length = canvas_size(model, config.canvas_length)
    canvases = [[int(i) for i in data[n][:length]] for n in range(min(args.max_canvases, len(data)))]
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(canvases) * config.num_timesteps * config.num_draws, desc="NELBO", unit="row")
    try:
        raw = nelbo_of_ids(model, [([], c) for c in canvases], config, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    tokens = sum(r.num_tokens for r in raw)
    total = sum(r.total_nats for r in raw)
    stderr = math.sqrt(sum(r.total_stderr ** 2 for r in raw)) / tokens
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    num_bytes = sum(len(tokenizer.decode([i for i in c if i not in specials]).encode()) for c in canvases)
    result = {"shards": str(args.shards), "split": args.split, "canvases": len(canvases), "canvas_length": length,
              "num_tokens": tokens, "nelbo": total / tokens, "stderr": stderr,
              "perplexity_bound": math.exp(min(total / tokens, 700.0)),
              "bits_per_byte": total / (num_bytes * math.log(2)) if num_bytes else None,
              "num_timesteps": config.num_timesteps, "num_draws": config.num_draws}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['nelbo']:.4f} ± {stderr:.4f} nats/token over {len(canvases)} {args.split} canvases "
              f"({tokens} tokens, {length} per canvas, K={config.num_timesteps}); ppl ≤ "
              f"{result['perplexity_bound']:.2f}")
    return 0


def run(args: argparse.Namespace) -> int:
    from sumi.eval.nelbo import score

    if args.shards:
        return _score_shards(args)
    texts, continuations = _texts(args)
    results = score(
        args.model, args.tokenizer, texts, continuation=continuations, num_timesteps=args.num_timesteps,
        num_draws=args.num_draws, canvas_length=args.canvas_length, batch_size=args.batch_size, seed=args.seed,
        add_bos=not args.no_bos, add_eos=not args.no_eos, tokenization=args.tokenization,
        truncation=args.truncation, effective_snr=args.effective_snr, device=args.device,
        show_progress=not args.no_progress,
    )
    if args.json:
        for i, r in enumerate(results):
            scored = {"text": texts[i]} if continuations is None else {"prompt": texts[i],
                                                                        "continuation": continuations[i]}
            fields = {k: v for k, v in r.to_dict().items() if k != "per_timestep"}
            print(json.dumps({**scored, **fields}, ensure_ascii=False))
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
