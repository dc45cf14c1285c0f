"""``python -m pdbjax``: the command-line interface."""

from pdbjax.cli import console

console()
