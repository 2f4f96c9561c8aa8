"""``sumi train --config recipe.yaml [section.key=value ...] [--resume [DIR]]``: pretrain a UDLM or AR baseline.

Run with ``torchrun --nproc_per_node=N -m sumi.cli train ...`` (or ``torchrun $(which sumi) train ...``) for
DDP / FSDP2; one process needs nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os

ACCEPTS_EXTRA_ARGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML recipe (see configs/); sections model, data, noise, "
                        "optimizer, schedule, training, checkpoint")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="DIR",
                        help="continue from the newest complete checkpoint of the run (or from DIR)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a run folder that holds an earlier run, moving that run aside to "
                        "<output_dir>.old-<time> first (nothing is deleted)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.epilog = "Any further argument section.key=value overrides the recipe, e.g. training.steps=200."


def run(args: argparse.Namespace) -> int:
    from sumi.errors import ConfigError
    from sumi.train import resolve_run_config, train

    overrides = list(getattr(args, "extra_args", []) or [])
    if args.resume not in (None, "auto") and "=" in args.resume and not os.path.exists(args.resume):
        # `--resume training.steps=42`: argparse took the override as --resume's optional folder.
        overrides.append(args.resume)
        args.resume = "auto"
    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues the run and --overwrite moves it aside; pass only one")
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        raise ConfigError(f"unrecognised argument(s) {bad}; overrides look like section.key=value")
    cfg = resolve_run_config(args.config, overrides)
    if int(os.environ.get("RANK", "0")) != 0:  # one voice per job: only rank 0 logs progress
        logging.getLogger("sumi").setLevel(logging.WARNING)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    resume = False if args.resume is None else (True if args.resume == "auto" else args.resume)
    result = train(cfg, resume=resume, overwrite=args.overwrite)
    log = logging.getLogger("sumi.train")
    what = "NLL" if cfg.model.causal else "NELBO"
    if result.heldout_nelbo is not None:
        log.info("done: %d steps, %d tokens, held-out %s %.4f nats/token; run dir %s", result.steps, result.tokens,
                 what, result.heldout_nelbo, result.output_dir)
    return 0
