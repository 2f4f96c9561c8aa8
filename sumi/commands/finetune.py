"""``sumi finetune --config recipe.yaml model.init_from=BASE finetune.data=chats.jsonl [key=value ...]``.

Supervised fine-tuning of a model directory on conversations (full, or LoRA with ``lora.rank=8``), with the
trainer of ``sumi train`` (checkpoints, ``--resume``, torchrun DDP/FSDP2, metrics). See docs/finetuning.md.
"""

from __future__ import annotations

import argparse
import logging
import os

ACCEPTS_EXTRA_ARGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML recipe (sections as for `sumi train`, plus finetune and lora)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="DIR",
                        help="continue from the newest complete checkpoint of the run (or from DIR)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.epilog = ("Any further argument section.key=value overrides the recipe, e.g. model.init_from=runs/demo/"
                     "model finetune.data=chats.jsonl lora.rank=8.")


def run(args: argparse.Namespace) -> int:
    from sumi.errors import ConfigError
    from sumi.finetune.run import finetune, with_base_model
    from sumi.train import resolve_run_config

    overrides = list(getattr(args, "extra_args", []) or [])
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        raise ConfigError(f"unrecognised argument(s) {bad}; overrides look like section.key=value")
    cfg = resolve_run_config(args.config, overrides)
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("sumi").setLevel(logging.WARNING)
    if args.print_config:
        print(with_base_model(cfg).to_yaml(), end="")
        return 0
    resume = False if args.resume is None else (True if args.resume == "auto" else args.resume)
    result = finetune(cfg, resume=resume)
    log = logging.getLogger("sumi.finetune")
    if result.heldout_nelbo is not None:
        log.info("done: %d steps, held-out response NELBO %.4f nats/token; model %s", result.steps,
                 result.heldout_nelbo, result.model_dir)
    return 0
