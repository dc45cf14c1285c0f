"""``python -m pdbjax``: the command-line interface."""

from pdbjax.cli import main

raise SystemExit(main())
