"""Test-session setup: a persistent JAX compilation cache.

Most of the suite's time on a small CPU is XLA compiling the estimators (about 10 s of CPU per matrix
shape). The cache lives outside the repository (``$JAX_COMPILATION_CACHE_DIR`` or
``~/.cache/pdbjax/jax``), so a second run on the same machine skips the compiles; a first run on a fresh
machine behaves exactly as without it.
"""

from __future__ import annotations

import os

import jax

_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pdbjax", "jax")
try:
    os.makedirs(_cache, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
except OSError:  # read-only home: run without the cache
    pass
