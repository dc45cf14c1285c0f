"""Small input checks shared by the public functions."""

from __future__ import annotations

from typing import Any

import jax


def is_traced(*xs: Any) -> bool:
    """True when any leaf of ``xs`` is a JAX tracer (we are inside ``jit``/``vmap``/``grad``)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs))
