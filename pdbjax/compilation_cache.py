"""JAX's persistent compilation cache, as the CLI, the test suite and the benchmarks set it up.

A model's analysis compiles a handful of XLA programs (MiniLM-L6: 18, 8.3 s of compile in all,
``benchmarks/results/compiles.md``); with the cache a second process loads them instead of compiling.
:func:`enable` also turns on :mod:`pdbjax.exported`, which keeps the fits' traced programs, so that a
second process does not trace them either.
"""

from __future__ import annotations

import os

from pdbjax import exported

__all__ = ["MAX_BYTES", "cache_dir", "enable"]

# JAX's file names for an entry and its access time (jax/_src/lru_cache.py).
_CACHE_SUFFIX, _ATIME_SUFFIX = "-cache", "-atime"
#: Subdirectory of the cache directory that holds :mod:`pdbjax.exported`'s programs.
EXPORTED = "pdbjax-exported"
#: Size limit of the cache directory (least recently used entries are evicted beyond it).
MAX_BYTES = 4 << 30


def cache_dir() -> str:
    """``$JAX_COMPILATION_CACHE_DIR`` when set, else ``~/.cache/pdbjax/jax``."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pdbjax", "jax")


def enable(min_compile_time_s: float = 0.0) -> str | None:
    """Persist every compiled program taking at least ``min_compile_time_s`` (JAX's default is 1 s, which
    leaves most of the fits' small programs to be recompiled in every process) in :func:`cache_dir`.

    Returns the directory, or None when it cannot be created (a read-only home): that only costs the
    speed-up.
    """
    import jax

    path = cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    # A size limit makes JAX's cache take a file lock around every read and write: without it, a
    # process reading an entry that another process is still writing can crash deserialising it
    # (seen with two pdbjax processes on one cache). Least recently used entries go beyond MAX_BYTES.
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    _adopt_orphans(path)
    try:  # and the fits' traced programs, so that a warm process does not trace them either
        exported.enable(os.path.join(path, EXPORTED))
    except OSError:
        pass
    return path


def _adopt_orphans(path: str) -> int:
    """Give every entry without its ``KEY-atime`` file one that marks it least recently used.

    With a size limit, JAX (up to at least 0.10.2) reads the access time of every entry before each
    write, so a single ``KEY-cache`` without ``KEY-atime`` (written by a process with no size limit, or
    one that stopped between the two writes) makes every later write fail with a warning: the cache still
    serves hits but never grows, and each process recompiles what is missing (jax-ml/jax#39880, fixed
    upstream by treating the missing time as 0). This writes that 0. Existing times are never replaced
    (exclusive create), so a concurrent reader's fresh time wins. Returns the number of files written.
    """
    written = 0
    try:
        entries = os.listdir(path)
    except OSError:
        return 0
    have = set(entries)
    for name in entries:
        if name.endswith(_CACHE_SUFFIX) and name[: -len(_CACHE_SUFFIX)] + _ATIME_SUFFIX not in have:
            try:
                with open(os.path.join(path, name[: -len(_CACHE_SUFFIX)] + _ATIME_SUFFIX), "xb") as f:
                    f.write((0).to_bytes(8, "little"))
                written += 1
            except OSError:  # created meanwhile by another process, or a read-only cache: nothing to do
                pass
    return written
