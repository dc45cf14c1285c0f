"""The fits' programs kept across processes as :mod:`jax.export` modules, so a warm process does not trace them.

JAX's persistent compilation cache (:mod:`pdbjax.compilation_cache`) skips XLA's compile, but every
process still traces each program to a jaxpr and lowers it to find the cache key. For the fits that is
most of a warm process: a warm MiniLM load plus ``analyze`` takes 5.33 s with every program traced and
2.89 s with them read back (``python benchmarks/exported.py``, ``benchmarks/results/exported.md``).

:func:`jit` is ``jax.jit`` plus a cache keyed *before* tracing: by the function, a digest of the pdbjax
source, JAX's version and flags, the backend, and the arguments' shapes, dtypes and static values. A miss
exports the function (:func:`jax.export.export`: StableHLO of the same jaxpr) and stores it; a hit
deserializes it and calls it (:meth:`jax.export.Exported.call`), which compiles through the persistent
compilation cache. The key holds every input of the trace, so a hit runs the program ``jax.jit`` builds.

Off until :func:`enable` (:func:`pdbjax.compilation_cache.enable`, which the CLI calls, turns it on). Used
only for concrete arguments that are JAX or NumPy arrays on the default device of a single process;
under a caller's ``jit``/``vmap``, with Python scalars, arrays on other or several devices, or a function
JAX cannot export, the call is plain ``jax.jit``.

:func:`jit` also takes XLA compiler options for the CPU backend (``cpu_compiler_options``, passed as
``jax.jit``'s ``compiler_options`` when JAX's default backend is the CPU, with or without the cache). Where the
installed XLA does not know one of them (``No such compile option``), every later call in the process
compiles without options (an option changes how fast a program compiles and runs, and its results only at
the level of floating-point rounding).
:data:`FAST_COMPILE` is the set the decompositions, the PDB fit, the PUB fits (in ``analyze``'s program and alone,
as ``compress`` fits them), the figures, and ``compress``'s decisions (``filter._decide``) and rebuilds take
(``benchmarks/results/xla_options.md``, ``compiles.md``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import pathlib
import sys
from typing import Any, Callable, Sequence

import jax
import jaxlib
import numpy as np
from jax import export

from pdbjax._atomic import atomic_write_bytes
from pdbjax._validate import is_traced

__all__ = ["FAST_COMPILE", "enable", "disable", "jit", "register", "stats"]

#: Most modules kept; the least recently used are removed beyond it (MiniLM's analyze uses 4, 6-180 kB each).
MAX_ENTRIES = 256
_SUFFIX = ".jaxexport"
_DIGEST = 32  # an entry is the serialized module followed by its SHA-256

#: XLA's loop emitters instead of its fusion emitters, and LLVM's optimisation level 1 instead of 2, for
#: programs made of many small fused loops that run once per call of a few rows. At the pipeline's shape
#: (8 of MiniLM-L6's attention spectra padded to 512) XLA:CPU compiles the PDB fit in 0.81 s instead of
#: 1.49 s, the PUB fits in 0.50 s instead of 0.74 s, the figures in 0.72 s instead of 1.17 s and ``compress``'s
#: decisions in 0.18 s instead of 0.32 s, and runs each within 2.0 ms of XLA's defaults per call; level 0
#: would halve the compile again but run the three fits 1.8x to 4.1x slower. The programs compiled per matrix
#: shape take it too (the decompositions of :mod:`pdbjax.linalg`, ``compress``'s rebuilds): MiniLM's 1536 x 384
#: matrices compile in 0.05-0.07 s instead of 0.09-0.15 s, and run LAPACK's and the matrix products' time as
#: before (``python benchmarks/xla_options.py``, ``xla_options.md``). Used on the CPU backend only.
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}

_state: dict[str, Any] = {"dir": None, "memory": {}}
_counts = {"loaded": 0, "exported": 0, "bypassed": 0}
_options = {"known": True}  # False once XLA has refused a compiler option in this process


def enable(path: str | os.PathLike[str]) -> None:
    """Keep exported programs in ``path`` (created if needed) from now on in this process."""
    os.makedirs(path, exist_ok=True)
    _state.update(dir=pathlib.Path(path), memory={})


def disable() -> None:
    """Stop using the cache (programs already read in this process are dropped)."""
    _state.update(dir=None, memory={})


def stats() -> dict[str, int]:
    """Calls in this process served by a stored module (``loaded``), exported and stored (``exported``), or
    run through plain ``jax.jit`` (``bypassed``); calls served from memory are not counted."""
    return dict(_counts)


def register(cls: type) -> type:
    """Let :mod:`jax.export` store a NamedTuple result type (class decorator)."""
    export.register_namedtuple_serialization(cls, serialized_name=f"{cls.__module__}.{cls.__qualname__}")
    return cls


def jit(
    fn: Callable | None = None, *, static_argnames: Sequence[str] | str = (), cpu_compiler_options: dict[str, Any] | None = None,
) -> Callable:
    """``jax.jit(fn, static_argnames=...)`` whose traced programs are kept across processes, compiled with
    ``cpu_compiler_options`` on the CPU backend (module docstring).

    Usable as ``@jit`` or ``@jit(static_argnames=..., cpu_compiler_options=...)``; called like the jitted
    function, which it is whenever the cache does not apply (module docstring).
    """
    if fn is None:
        return functools.partial(jit, static_argnames=static_argnames, cpu_compiler_options=cpu_compiler_options)
    statics = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    plain = jax.jit(fn, static_argnames=statics)
    tuned = jax.jit(fn, static_argnames=statics, compiler_options=cpu_compiler_options) if cpu_compiler_options else plain
    signature = inspect.signature(fn)
    where = f"{fn.__module__}.{fn.__qualname__}"
    # The stored module does not depend on the options, the compiled call kept in memory does.
    options = repr(sorted((cpu_compiler_options or {}).items()))

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if _state["dir"] is None:
            return _run(tuned, plain, *args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        names = [n for n in bound.arguments if n not in statics]
        dynamic = [bound.arguments[n] for n in names]
        static = {n: bound.arguments[n] for n in statics}
        key = _key(where, dynamic, static)
        entry = None if key is None else _state["memory"].get((key, options))
        if entry is None and key is not None:
            program = _load(key) or _export(plain, names, dynamic, static, key)
            entry = False  # not exportable: plain jax.jit for this key from now on (not traced for export again)
            if program is not None:  # the module's call, and a jit of it that carries the compiler options
                tuned_call = jax.jit(program.call, compiler_options=cpu_compiler_options) if cpu_compiler_options else program.call
                entry = (tuned_call, program.call)
            _state["memory"][key, options] = entry
        if not entry:
            _counts["bypassed"] += 1
            return _run(tuned, plain, *args, **kwargs)
        return _run(*entry, *jax.device_put(dynamic))

    call.lower, call._cache_size = tuned.lower, tuned._cache_size  # jax.jit's AOT API and compile count
    return call


def _run(tuned: Callable, plain: Callable, *args, **kwargs):
    """``tuned(*args, **kwargs)`` (a jit with CPU compiler options) at the top level on the CPU backend;
    ``plain`` on other backends, inside a caller's trace (JAX takes compiler options only from the outermost
    jit) or where XLA does not know an option."""
    if tuned is plain or not _options["known"] or jax.default_backend() != "cpu" or is_traced(args, kwargs):
        return plain(*args, **kwargs)
    try:
        return tuned(*args, **kwargs)
    except ValueError as err:  # constant arguments inside a caller's jit
        if "top-level" not in str(err):
            raise
    except jax.errors.JaxRuntimeError as err:
        if "No such compile option" not in str(err):
            raise
        _options["known"] = False
    return plain(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# keys


@functools.cache
def _environment() -> str:
    """What every key shares: pdbjax's source, JAX's version and flags, the backend."""
    source = hashlib.sha256()
    for path in sorted(pathlib.Path(__file__).parent.rglob("*.py")):
        source.update(path.read_bytes())
    device = jax.devices()[0]
    return repr((
        source.hexdigest(), jax.__version__, jaxlib.__version__, device.platform, device.device_kind,
        os.environ.get("XLA_FLAGS", ""),
    ))


@functools.cache
def _constant_names(modules: tuple[str, ...]) -> tuple[tuple[Any, str], ...]:
    """The module-level numeric constants (``UPPER_CASE`` ints and floats, e.g. ``linalg.HOT_ROW``) of the pdbjax
    ``modules``, which its programs read while they are traced and a user may set (this module's cache sizes aside)."""
    return tuple((sys.modules[mod], name) for mod in modules if mod not in (__name__, "pdbjax.compilation_cache")
                 for name, value in sorted(vars(sys.modules[mod]).items())
                 if name.isupper() and isinstance(value, (int, float)) and not isinstance(value, bool))


def _constants() -> tuple:
    """The current values of :func:`_constant_names` of the pdbjax modules imported so far."""
    modules = tuple(sorted(m for m in list(sys.modules) if m.startswith("pdbjax.")))
    return tuple(getattr(module, name) for module, name in _constant_names(modules))


def _key(where: str, dynamic: list, static: dict[str, Any]) -> str | None:
    """The cache key of a call, or None where the cache does not apply (module docstring)."""
    if jax.process_count() > 1:
        return None
    device = jax.devices()[0]
    leaves, tree = jax.tree_util.tree_flatten(dynamic)
    avals = []
    for x in leaves:
        if is_traced(x):
            return None
        if isinstance(x, jax.Array):
            if x.devices() != {device}:
                return None
            avals.append((x.shape, str(x.dtype), x.weak_type))
        elif isinstance(x, np.ndarray):
            avals.append((x.shape, str(jax.dtypes.canonicalize_dtype(x.dtype)), False))
        else:  # a Python scalar's dtype depends on context (weak types): left to jax.jit
            return None
    # what may change within a process: JAX's 64-bit mode and matmul precision, and pdbjax's tuning constants
    text = repr((_environment(), where, str(tree), avals, sorted(static.items()), jax.config.jax_enable_x64,
                 jax.config.jax_default_matmul_precision, _constants()))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# store and read


def _load(key: str) -> export.Exported | None:
    path = _state["dir"] / (key + _SUFFIX)
    try:
        stored = path.read_bytes()
        data, digest = stored[:-_DIGEST], stored[-_DIGEST:]
        if hashlib.sha256(data).digest() != digest:  # damaged: its StableHLO would fail only when called
            return None
        program = export.deserialize(bytearray(data))
    except Exception:  # noqa: BLE001 - missing, truncated, damaged or foreign: export again (and replace it)
        return None
    try:
        os.utime(path)  # least recently used goes first
    except OSError:  # a read-only or shared cache, or an entry another process has just evicted
        pass
    _counts["loaded"] += 1
    return program


def _export(jitted, names: list[str], dynamic: list, static: dict[str, Any], key: str) -> export.Exported | None:
    closed = lambda *values: jitted(**dict(zip(names, values)), **static)  # noqa: E731
    try:
        program = export.export(jax.jit(closed))(*jax.device_put(dynamic))
        data = program.serialize()
    except (ValueError, TypeError, NotImplementedError, ImportError):  # e.g. an unregistered result type
        return None
    try:
        atomic_write_bytes(_state["dir"] / (key + _SUFFIX), bytes(data) + hashlib.sha256(data).digest())
        _evict(_state["dir"])
    except OSError:  # a read-only directory: the program is used, not kept
        pass
    _counts["exported"] += 1
    return program


def _evict(directory: pathlib.Path) -> None:
    entries = sorted(directory.glob("*" + _SUFFIX), key=lambda p: p.stat().st_mtime)
    for path in entries[: max(0, len(entries) - MAX_ENTRIES)]:
        path.unlink(missing_ok=True)
