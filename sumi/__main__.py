"""``python -m sumi``: the ``sumi`` command."""

from sumi.cli import main

raise SystemExit(main())
