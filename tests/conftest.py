"""Test-session setup: no persistent compilation cache in the test process.

Serialising some of the gradient programs of ``tests/test_spectral.py`` for JAX's persistent cache crashed
inside XLA (``executable.serialize()``: an abort and a segmentation fault, on a loaded machine where their
compile time crossed the cache's threshold), and a fresh CI machine gains little from a cache that starts
empty. So the cache is switched off here, even when ``$JAX_COMPILATION_CACHE_DIR`` is set. Subprocesses
that run the CLI use the CLI's cache (:mod:`pdbjax.compilation_cache`).
"""

from __future__ import annotations

import jax
import pytest

from pdbjax import exported

jax.config.update("jax_enable_compilation_cache", False)


def _exported_state():
    """Undo :func:`pdbjax.exported.enable` or ``disable`` at the end of a scope (the CLI's ``main``, called
    in-process by a test or a module's fixture, turns it on): a later test counting ``jax.jit``'s cache, or
    one that wraps a function the scope stored, would otherwise be served by the stored modules."""
    before = exported._state["dir"]
    yield
    if exported._state["dir"] != before:
        if before is None:
            exported.disable()
        else:
            exported.enable(before)


_restore_exported_per_test = pytest.fixture(autouse=True)(_exported_state)
_restore_exported_per_module = pytest.fixture(autouse=True, scope="module")(_exported_state)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each module's compiled programs when it is done, so one long test process does not accumulate
    thousands of XLA executables (the suite crashed inside the compiler late in a single-process run)."""
    yield
    jax.clear_caches()
