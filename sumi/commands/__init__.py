"""Subcommands of the ``sumi`` CLI: each module exposes ``add_arguments(parser)`` and ``run(args) -> int``."""
