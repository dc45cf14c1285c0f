"""Test-session setup: the persistent JAX compilation cache, as the CLI sets it up.

Most of the suite's time on a small CPU is XLA compiling the estimators (about 10 s of CPU per spectrum
length). The cache lives outside the repository (``$JAX_COMPILATION_CACHE_DIR`` or ``~/.cache/pdbjax/jax``),
so a second run on the same machine skips the compiles; a first run on a fresh machine behaves exactly as
without it. Programs under 0.5 s are not stored, to keep the cache small across many test shapes.
"""

from __future__ import annotations

from pdbjax import compilation_cache

compilation_cache.enable(min_compile_time_s=0.5)
