"""pdbjax.exported: the fits' traced programs kept across processes give the results of ``jax.jit``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import NamedTuple

import jax
import numpy as np
import pytest

import pdbjax
from pdbjax import exported


@pytest.fixture
def cache(tmp_path):
    exported.enable(tmp_path)
    yield tmp_path
    exported.disable()


def _eigs(batch=3, p=40, seed=0):
    W = np.random.default_rng(seed).standard_normal((batch, 100, p)).astype(np.float32)
    return pdbjax.eigenvalues(W)


def _count(before):
    return {k: v - before[k] for k, v in exported.stats().items()}


def test_stored_program_gives_the_jit_result_bit_for_bit(cache):
    exported.disable()
    eigs = _eigs()
    want = pdbjax.fit_pdb(eigs, 100)
    exported.enable(cache)
    before = exported.stats()
    first = pdbjax.fit_pdb(eigs, 100)  # exported and stored
    exported.enable(cache)  # a fresh start: the program is read back from the directory
    second = pdbjax.fit_pdb(eigs, 100)
    assert _count(before) == {"loaded": 1, "exported": 1, "bypassed": 0}
    assert len(list(cache.glob("*.jaxexport"))) == 1
    for got in (first, second):
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_key_separates_shapes_and_static_arguments(cache):
    exported.disable()
    eigs, fewer = _eigs(p=40), _eigs(batch=2, p=40)
    exported.enable(cache)
    pdbjax.fit_pdb(eigs, 100)
    pdbjax.fit_pdb(eigs, 100, mode="reference")  # a static argument
    pdbjax.fit_pdb(fewer, 100)  # another shape
    pdbjax.fit_pdb(eigs, 100)  # the first again
    assert len(list(cache.glob("*.jaxexport"))) == 3


def test_traced_calls_and_python_scalars_bypass_the_cache(cache):
    eigs = _eigs()
    before = exported.stats()
    jax.jit(lambda e: pdbjax.fit_pdb(e, 100).lambda_plus)(eigs)  # under the caller's jit: tracers
    pdbjax.linalg._spectrum(np.ones((2, 8, 4), np.float32))  # NumPy arrays are keyed like jax.jit converts them
    assert _count(before)["bypassed"] == 1
    assert not any(exported._key("f", [x], {}) for x in (1.0, [1.0]))


def test_damaged_entry_is_exported_again(cache):
    exported.disable()
    eigs = _eigs()
    exported.enable(cache)
    want = np.asarray(pdbjax.fit_pdb(eigs, 100).lambda_plus)
    (entry,) = cache.glob("*.jaxexport")
    entry.write_bytes(b"not a module")
    exported.enable(cache)
    before = exported.stats()
    np.testing.assert_array_equal(np.asarray(pdbjax.fit_pdb(eigs, 100).lambda_plus), want)
    assert _count(before) == {"loaded": 0, "exported": 1, "bypassed": 0}
    assert entry.read_bytes() != b"not a module"



@pytest.mark.parametrize("offset", [0.25, 0.5, 0.75])
def test_an_entry_with_one_flipped_byte_is_exported_again(cache, offset):
    """A flipped byte inside the serialized StableHLO deserializes and used to fail only when called (in 31 of 41
    positions a bug hunt tried): the entry's SHA-256 rejects it before."""
    exported.disable()
    eigs = _eigs()
    exported.enable(cache)
    want = np.asarray(pdbjax.fit_pdb(eigs, 100).lambda_plus)
    (entry,) = cache.glob("*.jaxexport")
    data = bytearray(entry.read_bytes())
    data[int(offset * len(data))] ^= 0xFF
    entry.write_bytes(bytes(data))
    exported.enable(cache)
    before = exported.stats()
    np.testing.assert_array_equal(np.asarray(pdbjax.fit_pdb(eigs, 100).lambda_plus), want)
    assert _count(before) == {"loaded": 0, "exported": 1, "bypassed": 0}


def test_an_entry_that_cannot_be_touched_is_still_read(cache, monkeypatch):
    """A read-only or shared cache (os.utime refused) still serves its programs."""
    exported.disable()
    eigs = _eigs()
    exported.enable(cache)
    want = np.asarray(pdbjax.fit_pdb(eigs, 100).lambda_plus)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(exported.os, "utime", refuse)
    exported.enable(cache)
    before = exported.stats()
    np.testing.assert_array_equal(np.asarray(pdbjax.fit_pdb(eigs, 100).lambda_plus), want)
    assert _count(before) == {"loaded": 1, "exported": 0, "bypassed": 0}


def test_key_follows_tuning_constants_and_matmul_precision_set_at_run_time(cache, monkeypatch):
    """A module constant read while tracing (linalg.HOT_ROW) or JAX's matmul precision set at run time makes another
    key: a fresh process that sets them must not run a module stored under the old values (jax.jit's would differ)."""
    from pdbjax import linalg

    W = np.random.default_rng(0).standard_normal((2, 100, 40)).astype(np.float32)
    exported.enable(cache)
    first = np.asarray(pdbjax.linalg.spectrum(W).kurtosis)
    monkeypatch.setattr(linalg, "HOT_ROW", 1.0)  # leaves out more rows of the kurtosis
    jax.clear_caches()  # a fresh process: jax.jit traces again (the stored module must not stand in for it)
    exported.enable(cache)
    second = np.asarray(pdbjax.linalg.spectrum(W).kurtosis)
    assert not np.array_equal(first, second)
    with jax.default_matmul_precision("highest"):
        pdbjax.linalg.spectrum(W)
    assert len(list(cache.glob("*.jaxexport"))) == 3


class _Unregistered(NamedTuple):  # jax.export cannot serialise a NamedTuple it was not told about
    y: jax.Array


def _unexportable(x):
    return _Unregistered(2 * x)


def test_a_function_that_cannot_be_exported_runs_as_jit_and_is_not_exported_again(cache, monkeypatch):
    """A result ``jax.export`` cannot serialise: every call is ``jax.jit``'s and counted as bypassed, and the
    export (a second trace) is tried once per key, not on every call."""
    tries = []
    real = exported._export
    monkeypatch.setattr(exported, "_export", lambda *a, **k: tries.append(1) or real(*a, **k))
    f = exported.jit(_unexportable)
    x = np.arange(3, dtype=np.float32)
    before = exported.stats()
    outs = [f(x) for _ in range(3)]
    assert len(tries) == 1
    assert _count(before) == {"loaded": 0, "exported": 0, "bypassed": 3}
    assert not list(cache.glob("*.jaxexport"))
    for out in outs:
        assert isinstance(out, _Unregistered)
        np.testing.assert_array_equal(np.asarray(out.y), 2 * x)

def _double_sin(x):
    return 2 * jax.numpy.sin(x)


@pytest.mark.parametrize("stored", [False, True], ids=["jit", "stored module"])
def test_compiler_options_reach_xla_and_an_unknown_one_falls_back(cache, monkeypatch, stored):
    """An option the installed XLA does not know reaches its compile (also through a stored module), and the
    process then compiles without options: the result is plain ``jax.jit``'s."""
    monkeypatch.setitem(exported._options, "known", True)
    if not stored:
        exported.disable()
    x = np.linspace(0.0, 1.0, 5, dtype=np.float32)
    want = np.asarray(jax.jit(_double_sin)(x))
    f = exported.jit(_double_sin, cpu_compiler_options={"xla_pdbjax_no_such_option": True})
    np.testing.assert_array_equal(np.asarray(f(x)), want)
    assert exported._options["known"] is False
    assert len(list(cache.glob("*.jaxexport"))) == int(stored)


def test_a_function_wrapped_with_other_options_compiles_with_its_own(cache, monkeypatch):
    """Two wrappers of one function share the stored module, not the compiled call: the second wrapper's
    options reach XLA (a call kept in memory by the first, with an option XLA refuses, would turn the options off)."""
    monkeypatch.setitem(exported._options, "known", True)
    x = np.linspace(0.0, 1.0, 5, dtype=np.float32)
    with monkeypatch.context() as m:
        m.setattr(jax, "default_backend", lambda: "gpu")  # the bad option is kept, never compiled
        exported.jit(_double_sin, cpu_compiler_options={"xla_pdbjax_no_such_option": True})(x)
    before = exported.stats()
    got = exported.jit(_double_sin, cpu_compiler_options=exported.FAST_COMPILE)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(_double_sin)(x)), rtol=1e-6)
    assert exported._options["known"] is True
    assert _count(before) == {"loaded": 1, "exported": 0, "bypassed": 0}  # the module was read, not traced again


def test_cpu_compiler_options_are_not_passed_on_another_backend(monkeypatch):
    monkeypatch.setitem(exported._options, "known", True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = np.linspace(0.0, 1.0, 5, dtype=np.float32)
    f = exported.jit(_double_sin, cpu_compiler_options={"xla_pdbjax_no_such_option": True})
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(jax.jit(_double_sin)(x)))
    assert exported._options["known"] is True  # the option never reached XLA


def test_fast_compile_is_known_to_xla_and_taken_inside_a_callers_jit(monkeypatch):
    """The installed XLA accepts :data:`FAST_COMPILE` (else the fits lose its shorter compile), and a function
    that takes it runs under a caller's ``jit``, traced or with constant arguments (JAX takes compiler options
    only at the top level). Tolerance: another emitter may round ``sin`` differently in float32."""
    monkeypatch.setitem(exported._options, "known", True)
    x = np.linspace(0.0, 1.0, 5, dtype=np.float32)
    want = np.asarray(jax.jit(_double_sin)(x))
    f = exported.jit(_double_sin, cpu_compiler_options=exported.FAST_COMPILE)
    for got in (f(x), jax.jit(f)(x), jax.jit(lambda: f(x))()):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    assert exported._options["known"] is True


_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pdbjax
    from pdbjax import compilation_cache, exported
    compilation_cache.enable()
    if sys.argv[1] == "off":
        exported.disable()
    params = {"dense": {"kernel": np.random.default_rng(0).standard_normal((120, 48)).astype(np.float32)}}
    rows = pdbjax.analyze(params).rows
    print(json.dumps({"stats": exported.stats(), "rows": json.loads(json.dumps(rows, default=str))}))
    """
)


def test_a_second_process_reads_the_programs_and_reports_the_same(tmp_path):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    plain, first, second = run("off"), run("on"), run("on")
    assert first["stats"]["exported"] > 0 and first["stats"]["loaded"] == 0
    assert second["stats"]["loaded"] == first["stats"]["exported"] and second["stats"]["exported"] == 0
    assert plain["rows"] == first["rows"] == second["rows"]
