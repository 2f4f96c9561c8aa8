"""``sumi data``: tokenise a mixture into packed shards, and inspect a shard directory.

    sumi data build [--mixture spec.yaml | --builtin shakespeare,bible] --tokenizer sumi --output DIR \
        [--seq-len 1184] [--heldout 0.01] [--seed 0] [--workers N] [--overwrite]
    sumi data inspect shards/embedded [--split train] [--canvas 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("build", help="tokenise a YAML mixture into packed memory-mapped shards")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mixture", help="YAML mixture spec (default: the embedded mixture)")
    group.add_argument("--builtin", help="comma-separated embedded corpora, each with weight 1")
    p.add_argument("--tokenizer", default="sumi", help="tokenizer directory/file, or 'sumi' (cl100k)")
    p.add_argument("--output", required=True, help="shard directory to create")
    p.add_argument("--seq-len", type=int, default=1184, help="canvas length in tokens")
    p.add_argument("--heldout", type=float, default=0.01, help="held-out fraction of the token stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="tokeniser threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard directory")

    p = sub.add_parser("inspect", help="print a shard directory's manifest and decode a canvas")
    p.add_argument("directory")
    p.add_argument("--split", default="train", choices=("train", "heldout"))
    p.add_argument("--canvas", type=int, default=0, help="which canvas to decode")
    p.add_argument("--max-chars", type=int, default=2000, help="cut the decoded canvas at this many characters")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the shard files")


def _summary(manifest, directory) -> str:
    lines = [f"{directory}: seq_len {manifest.seq_len}, {manifest.dtype}, seed {manifest.seed}, "
             f"tokenizer vocab {manifest.vocab_size:,} (BOS {manifest.tokenizer['bos_token_id']}, "
             f"EOS {manifest.tokenizer['eos_token_id']}, PAD {manifest.tokenizer['pad_token_id']})"]
    for split, info in manifest.splits.items():
        lines.append(f"  {split:>8}: {info.num_canvases:,} canvases = {info.num_canvases * manifest.seq_len:,} "
                     f"tokens, {info.num_documents:,} documents, {len(info.shards)} shard file(s), "
                     f"{info.pad_tokens} pad tokens")
    lines.append(f"  {'source':>12} {'weight':>6} {'docs':>7} {'tokens':>12} {'train tok':>12} {'heldout tok':>12}")
    for s in manifest.sources:
        lines.append(f"  {s['name']:>12} {s['weight']:>6g} {s['documents']:>7,} {s['tokens']:>12,} "
                     f"{s['train_tokens']:>12,} {s['heldout_tokens']:>12,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sumi.data import MixtureSpec, PackedDataset, build_shards
    from sumi.tokenizer import load_tokenizer

    if args.action == "build":
        if args.mixture:
            spec = MixtureSpec.from_yaml(args.mixture)
        elif args.builtin:
            spec = MixtureSpec.builtin([n.strip() for n in args.builtin.split(",") if n.strip()])
        else:
            spec = MixtureSpec.embedded()
        tokenizer = load_tokenizer(args.tokenizer)
        start = time.perf_counter()
        manifest = build_shards(spec, tokenizer, args.output, seq_len=args.seq_len, heldout_fraction=args.heldout,
                                seed=args.seed, num_workers=args.workers, show_progress=True,
                                overwrite=args.overwrite)
        elapsed = time.perf_counter() - start
        tokens = sum(s["tokens"] for s in manifest.sources)
        print(_summary(manifest, args.output))
        print(f"built in {elapsed:.1f}s ({tokens / elapsed:,.0f} source tokens/s)")
        return 0
    dataset = PackedDataset(args.directory, args.split, verify="none" if args.no_verify else "checksum")
    if args.json:
        print(json.dumps(dataset.manifest.to_dict(), indent=2))
        return 0
    print(_summary(dataset.manifest, args.directory))
    if len(dataset):
        text = dataset.tokenizer().decode(dataset[args.canvas])
        cut = text[: args.max_chars]
        print(f"--- {args.split} canvas {args.canvas} ({dataset.seq_len} tokens) ---")
        print(cut + ("…" if len(text) > len(cut) else ""))
    return 0
