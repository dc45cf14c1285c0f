"""The ``>>>`` examples in the library's docstrings run and print what they show (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["spectral", "simulate", "estimate", "pub", "lsq", "linalg", "precision", "report", "shrink", "tree", "distributed"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"pdbjax.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0
    # distributed's examples need a multi-process job: they are all marked +SKIP (counted as attempted: 0)
    assert result.attempted > 0 or name == "distributed"
