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


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def lm_eval_argv(extra: list[str], cuda_available: bool | None = None) -> list[str]:
    """lm-eval's argv for ``sumi eval EXTRA``: ``run`` (unless another lm-eval command is named) with a
    default ``--model sumi`` and, when neither ``--device`` nor ``model_args`` ``device=`` is given, the device
    this machine has (lm-eval's own default is ``cuda:0`` even without a GPU)."""
    argv = list(extra)
    if argv and argv[0] in SUBCOMMANDS:
        command, rest = argv[0], argv[1:]
    else:
        command, rest = "run", argv
    if command == "run" and not _has_flag(rest, "--model"):
        rest = ["--model", "sumi", *rest]
    if command == "run" and not _has_flag(rest, "--device") and not _model_args_device(rest):
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        rest = [*rest, "--device", "cuda" if cuda_available else "cpu"]
    return [command, *rest]


def _model_args_device(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--model_args=") else (
            argv[i + 1] if arg == "--model_args" and i + 1 < len(argv) else None)
        if value is not None and any(part.strip().startswith("device=") for part in value.split(",")):
            return True
    return False


def run(args: argparse.Namespace) -> int:
    try:
        import lm_eval.__main__ as lm_eval_main
    except ModuleNotFoundError as exc:
        raise ConfigError(f"lm-eval is not installed ({exc}); install sumi-lm[eval]") from exc
    import sumi.integrations.lm_eval  # noqa: F401  (registers model="sumi" with lm-eval)
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
