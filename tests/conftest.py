"""Test-session setup.

The suite does not use JAX's persistent compilation cache in its own process: serialising some of the
gradient programs of ``tests/test_spectral.py`` aborted inside XLA (``executable.serialize()``, twice, on
a loaded machine, where their compile time crossed the cache's threshold), and a fresh CI machine gains
little from a cache that starts empty. Subprocesses that run the CLI use the CLI's cache
(:mod:`pdbjax.compilation_cache`).
"""
