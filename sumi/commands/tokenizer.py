"""``sumi tokenizer``: build the exact Sumi tokenizer, train a small BPE, encode/decode text.

    sumi tokenizer build-sumi --output DIR
    sumi tokenizer train --output DIR [--vocab-size 8192] [--mixture spec.yaml | --builtin shakespeare,bible]
    sumi tokenizer encode --tokenizer DIR_OR_NAME "text" [--json] [--bos] [--eos]
    sumi tokenizer decode --tokenizer DIR_OR_NAME 100256 9906 [--skip-special]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from sumi.errors import ConfigError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("build-sumi", help="write the exact Sumi tokenizer (cl100k + dolma2 specials)")
    p.add_argument("--output", required=True, help="directory to write tokenizer.json & co. into")
    p.add_argument("--rebuild", action="store_true", help="ignore the cached build")

    p = sub.add_parser("train", help="train a byte-level BPE (BOS/EOS/PAD = 0/1/2) on a corpus")
    p.add_argument("--output", required=True, help="directory to write the tokenizer into")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--min-frequency", type=int, default=2)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mixture", help="train on the documents of this YAML mixture (each document once)")
    group.add_argument("--builtin", default=None,
                       help="comma-separated embedded corpora (default: shakespeare,bible,python)")

    p = sub.add_parser("encode", help="print the token ids of a text")
    p.add_argument("text")
    p.add_argument("--tokenizer", default="sumi", help="a tokenizer directory/file or 'sumi' (default)")
    p.add_argument("--bos", action="store_true", help="prepend BOS")
    p.add_argument("--eos", action="store_true", help="append EOS")
    p.add_argument("--plain", dest="parse_special", action="store_false",
                   help="encode <|endoftext|> etc. in the text as ordinary text (as data building does) instead "
                        "of their ids (transformers' behaviour, the default)")
    p.add_argument("--parse-special", dest="parse_special", action="store_true", default=True,
                   help=argparse.SUPPRESS)  # the old flag, now the default
    p.add_argument("--json", action="store_true", help="print JSON with ids and tokens")

    p = sub.add_parser("decode", help="print the text of token ids")
    p.add_argument("ids", nargs="+", type=int)
    p.add_argument("--tokenizer", default="sumi")
    p.add_argument("--skip-special", action="store_true")


def _training_texts(args):
    from sumi.data.corpus import BUILTIN_SOURCES
    from sumi.data.mixture import MixtureSpec

    if args.mixture:
        spec = MixtureSpec.from_yaml(args.mixture)
    else:
        names = [n.strip() for n in (args.builtin or ",".join(BUILTIN_SOURCES)).split(",") if n.strip()]
        spec = MixtureSpec.builtin(names)
    spec.check()
    for source in spec.sources:
        if source.weight > 0:
            yield from source.iter_documents(spec.base_dir)


def run(args: argparse.Namespace) -> int:
    from sumi.tokenizer import load_tokenizer, sumi_tokenizer, train_bpe

    if args.action == "build-sumi":
        start = time.perf_counter()
        tokenizer = sumi_tokenizer(rebuild=args.rebuild)
        out = tokenizer.save_pretrained(args.output)
        print(f"wrote the Sumi tokenizer to {out} ({tokenizer.vocab_size:,} ids, BOS {tokenizer.bos_token_id}, "
              f"EOS {tokenizer.eos_token_id}, PAD {tokenizer.pad_token_id}) in {time.perf_counter() - start:.1f}s")
        return 0
    if args.action == "train":
        start = time.perf_counter()
        tokenizer = train_bpe(_training_texts(args), vocab_size=args.vocab_size,
                              min_frequency=args.min_frequency, show_progress=True)
        out = tokenizer.save_pretrained(args.output)
        print(f"wrote a {tokenizer.vocab_size:,}-id BPE to {out} (BOS {tokenizer.bos_token_id}, EOS "
              f"{tokenizer.eos_token_id}, PAD {tokenizer.pad_token_id}) in {time.perf_counter() - start:.1f}s")
        return 0
    tokenizer = load_tokenizer(args.tokenizer)
    if args.action == "encode":
        ids = tokenizer.encode(args.text, add_bos=args.bos, add_eos=args.eos, parse_special=args.parse_special)
        if args.json:
            print(json.dumps({"ids": ids, "tokens": [tokenizer.id_to_token(i) for i in ids],
                              "num_tokens": len(ids)}, ensure_ascii=False))
        else:
            print(" ".join(map(str, ids)))
        return 0
    if args.action == "decode":
        print(tokenizer.decode(args.ids, skip_special_tokens=args.skip_special))
        return 0
    raise ConfigError(f"unknown action {args.action!r}")


__all__ = ["add_arguments", "run"]
