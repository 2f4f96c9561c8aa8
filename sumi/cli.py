"""The ``sumi`` command line.

Each subcommand lives in ``sumi/commands/<name>.py`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so ``sumi info`` does not pay for
lm-eval or uvicorn. User mistakes (:class:`sumi.errors.SumiError`) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sumi.errors import SumiError

OUTPUT_ARGS = ("output", "out", "trajectory", "gif", "dst")
"""Arguments naming a file or folder a command writes: checked for writability before any work starts."""

# name -> (module, one-line help). Order is the order shown by `sumi --help`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sumi.commands.demo", "train a small UDLM on the bundled corpus, sample from it, score it"),
    "train": ("sumi.commands.train", "pretrain a UDLM (or AR baseline) from a YAML recipe"),
    "finetune": ("sumi.commands.finetune", "fine-tune a model on conversations (full or LoRA; chat template)"),
    "chat": ("sumi.commands.chat", "chat with a model in the terminal (chat template, streaming canvas)"),
    "generate": ("sumi.commands.generate", "generate text with a diffusion sampler"),
    "score": ("sumi.commands.score", "NELBO (nats/token) of a text or a continuation"),
    "eval-samples": ("sumi.commands.eval_samples", "sample quality under a judge LM (Gen PPL, entropy, NFE)"),
    "eval": ("sumi.commands.eval", "run lm-evaluation-harness with the sumi backend"),
    "probe": ("sumi.commands.probe", "inference probes (canvas, steps, dynamics) with plots"),
    "convert": ("sumi.commands.convert", "convert between DCP, release layout and Megatron checkpoints"),
    "serve": ("sumi.commands.serve", "OpenAI-compatible HTTP server"),
    "info": ("sumi.commands.info", "resolved config and parameter counts of a model dir or preset"),
    "plan": ("sumi.commands.plan", "per-GPU memory, parallel layout, step time and MFU of a run on a cluster"),
    "tokenizer": ("sumi.commands.tokenizer", "build, train and inspect tokenizers"),
    "data": ("sumi.commands.data", "tokenise a data mixture into packed memory-mapped shards"),
}


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` states each option's default (unless the help text already does, or there is none to say)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == [] or
                default is argparse.SUPPRESS or action.nargs == 0 and default is True or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sumi", description="Uniform diffusion language models.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == only:
            _load(name).add_arguments(sp)
            _state_defaults(sp)
    return parser


def _state_defaults(parser: argparse.ArgumentParser) -> None:
    """Options declared without help text still show their default in ``--help`` (argparse hides them)."""
    for action in parser._actions:
        if action.help is None and action.option_strings and action.nargs != 0 and action.default not in (
                None, False, [], argparse.SUPPRESS):
            action.help = "default: %(default)s"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in SUBCOMMANDS:
        command = None  # let argparse report the invalid choice
    try:
        parser = build_parser(only=command)
    except ModuleNotFoundError as exc:
        print(f"sumi: the '{command}' command is not available in this install ({exc})", file=sys.stderr)
        return 2
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    module = _load(args.command)
    if rest and not getattr(module, "ACCEPTS_EXTRA_ARGS", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(module, "ACCEPTS_EXTRA_ARGS", False):
        args.extra_args = rest
    try:
        _check_outputs(args)
        status = int(module.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler, not at interpreter exit
        return status
    except SumiError as exc:
        if args.verbose:
            raise
        return _fail(args.command, str(exc))
    except KeyboardInterrupt:
        print(f"sumi {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # an OSError, but not a failure: the reader left (sumi info … | head)
        return _quiet_broken_pipe()
    except Exception as exc:
        if args.verbose:
            raise
        reason = _environment_failure(exc)  # the environment (missing file, full disk, memory): status 2
        if reason is not None:
            return _fail(args.command, reason)
        # A bug in sumi: still one line (the traceback is one -v away), and status 1 so it is not mistaken
        # for a user error.
        print(f"sumi {args.command}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
              "(a bug in sumi; rerun with -v for the traceback and report it)", file=sys.stderr)
        return 1


def _fail(command: str, message: str) -> int:
    line = " ".join(message.split())  # one line, even when a library's message spans several
    print(f"sumi {command}: error: {line}", file=sys.stderr)
    return 2


def _check_outputs(args: argparse.Namespace) -> None:
    from sumi._io import check_writable

    for name in OUTPUT_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str | bytes | os.PathLike) and str(value) not in ("", "-"):
            check_writable(value, f"--{name}" if name != "dst" else "destination")


def _environment_failure(exc: BaseException) -> str | None:
    """A one-line reason for failures the user fixes (missing file, no permission, full disk, out of memory)."""
    from sumi._io import output_failure

    if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc):
        return ("out of memory: the request is too large for this machine; lower the sizes (tokens, steps, "
                "batch) or use a larger device")
    if isinstance(exc, OSError):
        reason = output_failure(exc)
        if reason is not None:
            return f"{reason}; free space or choose another path"
        if exc.errno is not None:
            where = f" {exc.filename}" if exc.filename else ""
            return f"cannot access{where}: {exc.strerror}"
    return None


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (``sumi info … | head``): exit quietly, as Unix tools do.

    Python would report the failed flush of stdout at exit; pointing stdout at /dev/null first prevents that.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 141  # 128 + SIGPIPE, the status a shell reports for a killed writer


if __name__ == "__main__":
    raise SystemExit(main())
