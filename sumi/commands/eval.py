"""``sumi eval [lm-eval arguments]``: lm-evaluation-harness's own command line with the ``sumi`` backend.

Every argument goes to lm-eval unchanged (same flags, same output); ``--model sumi`` is added when no
``--model`` is given. Example::

    sumi eval --model_args pretrained=runs/demo/model,num_timesteps=128 --tasks arc_easy --limit 100
"""

from __future__ import annotations

import argparse
import sys

from sumi.errors import ConfigError

ACCEPTS_EXTRA_ARGS = True
SUBCOMMANDS = ("run", "ls", "validate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run lm-evaluation-harness with the sumi backend. All other arguments are passed to "
                          "lm-eval unchanged (see `sumi eval --lm-eval-help`); --model defaults to sumi.")
    parser.add_argument("--lm-eval-help", action="store_true", help="print lm-eval's own help and exit")


def lm_eval_argv(extra: list[str]) -> list[str]:
    """lm-eval's argv for ``sumi eval EXTRA``: ``run`` (unless another lm-eval command is named) with a
    default ``--model sumi``."""
    argv = list(extra)
    if argv and argv[0] in SUBCOMMANDS:
        command, rest = argv[0], argv[1:]
    else:
        command, rest = "run", argv
    if command == "run" and not any(a == "--model" or a.startswith("--model=") for a in rest):
        rest = ["--model", "sumi", *rest]
    return [command, *rest]


def run(args: argparse.Namespace) -> int:
    try:
        import lm_eval.__main__ as lm_eval_main
    except ModuleNotFoundError as exc:
        raise ConfigError(f"lm-eval is not installed ({exc}); install sumi-lm[eval]") from exc
    import sumi  # noqa: F401  (installs the post-import hook that registers the backend)
    import sumi.integrations.lm_eval as integration

    integration.register()  # lm_eval.api.registry may already be imported by now
    extra = list(getattr(args, "extra_args", []) or [])
    argv = ["--help"] if args.lm_eval_help else lm_eval_argv(extra)
    if not extra and not args.lm_eval_help:
        raise ConfigError("sumi eval needs lm-eval arguments, e.g. --model_args pretrained=DIR --tasks arc_easy")
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        lm_eval_main.cli_evaluate()
    except SystemExit as exc:  # argparse errors and --help exit; keep their status
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0
