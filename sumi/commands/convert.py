"""``sumi convert SRC DST``: trainer DCP <-> release layout, Megatron-LM GPT -> release layout.

    sumi convert runs/tiny/checkpoints model-dir                      # newest trainer checkpoint -> release
    sumi convert model-dir dcp-dir                                    # release -> model-only DCP
    sumi convert megatron/iter_0010000 sumi-7b-dir --from megatron --config sumi-7b --dtype bfloat16
"""

from __future__ import annotations

import argparse

from sumi.convert import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source checkpoint: release dir, DCP step dir / checkpoints dir, Megatron "
                                    "torch_dist dir, iter_* dir or model_optim_rng.pt")
    parser.add_argument("dst", help="output directory (must be new or empty, see --force)")
    parser.add_argument("--from", dest="src_format", default="auto", choices=("auto",) + FORMATS,
                        help="source format (default: detected)")
    parser.add_argument("--to", dest="dst_format", default=None, choices=("release", "dcp"),
                        help="target format (default: dcp for a release source, release otherwise)")
    parser.add_argument("--config", default=None,
                        help="architecture: model dir, config.json or preset (required for Megatron)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="dtype of the written tensors (default: the source's)")
    parser.add_argument("--max-shard-size", default="5GB", help="release shard size (default 5GB)")
    parser.add_argument("--tokenizer", default=None, help="copy tokenizer files from this directory")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")


def run(args: argparse.Namespace) -> int:
    from sumi.convert import convert

    out = convert(args.src, args.dst, src_format=args.src_format, dst_format=args.dst_format, config=args.config,
                  dtype=args.dtype, max_shard_size=args.max_shard_size, tokenizer=args.tokenizer,
                  overwrite=args.force)
    print(f"wrote {out}")
    return 0
