"""A corpus of bad and edge inputs, run through the public API and the command line.

Each case is one row of a table: an input builder, an entry point and the expected outcome, one of

* ``Raises(type, regex)``: a clear error whose message names the offending leaf, matrix, argument or
  file (and, with ``absent=``, does not say something misleading);
* ``Rows({name: status regex})``: a report row per matrix; for ``compress`` every row that is not
  ``ok`` keeps its weight bitwise, and every leaf keeps its dtype;
* ``Fit`` / ``Filtered``: a batch of fits or filtered matrices with the expected ``ok`` flags, the
  reasons of the flagged ones, and (``Filtered``) the flagged matrices returned unchanged;
* ``Check(fn)``: anything else, spelled out in ``fn``.

Every API call must also leave its input unmodified. CLI cases run ``pdbjax.cli.main`` in-process
(once each, the result is shared by two tests): whatever the outcome, stderr never holds a traceback
and a failing run ends with one ``pdbjax: error:`` line.

Cost. Compilation dominates, so the matrices are 64 x 32 and every tree that reaches the estimators
holds two of them (the reference matrix ``REF`` beside the case's leaf ``X``, or two layers): the
batched estimators compile once per entry point for the whole module, and the CLI runs reuse them.
Odd shapes (p = 1, p = 5, 10 x 100000) come alone in their tree. The 10 x 100000 cases run under an
address-space limit a few GiB above the current size, so a dense ``N x N`` (80 GB) fails at once
instead of swapping the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import json
import os
import re
import resource
import zipfile
from functools import partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import pdbjax
from pdbjax import eigenvalues, filter_matrix, fit_pdb, fit_pub, reason_text
from pdbjax import io as pdbio
from pdbjax.cli import main
from pdbjax.tree import path_name

# --------------------------------------------------------------------------------------------------
# Inputs

M, P = 64, 32  # the shape of every ordinary matrix in the corpus
R, X = "ref/kernel", "x/kernel"  # report names of the two leaves of `tree(...)`


def _pdb_matrix(seed: int, t: float, s1: float, s2: float, spike: float) -> np.ndarray:
    """``W = Z Sigma^{1/2}``, ``Z`` i.i.d. N(0, 1/M): a PDB bulk (t, s1, s2) and one spike (as pdbjax.simulate)."""
    bulk = P - 1
    diag = np.array([spike] + [s1] * round(t * bulk) + [s2] * (bulk - round(t * bulk)))
    z = np.random.default_rng(seed).standard_normal((M, P)) / np.sqrt(M)
    return (z * np.sqrt(diag)).astype(np.float32)


REF = _pdb_matrix(0, 0.7, 1.0, 4.0, 30.0)
W2 = _pdb_matrix(1, 0.6, 0.5, 3.0, 20.0)
GAUSS = np.random.default_rng(2).standard_normal((1, 512)).astype(np.float32)


def _with(value: np.ndarray, index: tuple, x: float) -> np.ndarray:
    out = np.array(value, copy=True)
    out[index] = x
    return out


def tree(x: Any, **more: Any) -> Callable[[], dict]:
    """Builder of ``{"ref": {"kernel": REF}, "x": {"kernel": x, **more}}`` (``x`` may be a thunk)."""
    return lambda: {"ref": {"kernel": REF}, "x": {"kernel": x() if callable(x) else x, **more}}


def alone(x: Any) -> Callable[[], dict]:
    """Builder of ``{"x": {"kernel": x}}``, for leaves of a shape no other case uses."""
    return lambda: {"x": {"kernel": x() if callable(x) else x}}


def value(v: Any) -> Callable[[], Any]:
    """Builder of ``v`` itself (``v`` may be a thunk)."""
    return lambda: v() if callable(v) else v


class _TwoDense(nnx.Module):
    """An NNX module with two 64 -> 32 Linear layers holding REF and W2."""

    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.a = nnx.Linear(M, P, rngs=rngs)
        self.b = nnx.Linear(M, P, rngs=rngs)
        self.a.kernel = nnx.Param(jnp.asarray(REF))
        self.b.kernel = nnx.Param(jnp.asarray(W2))


# --------------------------------------------------------------------------------------------------
# Entry points (analyze without the PUB baselines, which would double the compilation time; fit_pub has its own cases)


def analyze(params, **kw):
    return pdbjax.analyze(params, **{"baselines": False, **kw})


def compress(params, **kw):
    """``compress`` under ``upper-bulk``: at 64 x 32 the sphericity test calls REF's bulk one bulk (T = 1.6), which the
    default rule ``auto`` would leave as it is (tests/test_bulks.py); the corpus is about input handling."""
    return pdbjax.compress(params, **{"rank": "upper-bulk", **kw})


def lam_pair(second: Callable[[np.ndarray], np.ndarray]) -> Callable[[], np.ndarray]:
    """Eigenvalues ``(2, 32)`` in float64: REF's and ``second(REF's)``."""

    def build() -> np.ndarray:
        lam = np.linalg.svd(REF.astype(np.float64), compute_uv=False) ** 2
        return np.stack([lam, second(lam)])

    return build


# --------------------------------------------------------------------------------------------------
# Expected outcomes


@dataclasses.dataclass(frozen=True)
class Raises:
    type: type[BaseException] | tuple[type[BaseException], ...]
    match: str
    absent: str | None = None

    def check(self, params: Any, result: Any, error: BaseException | None) -> None:
        assert error is not None, f"expected {self.type} matching {self.match!r}; got a result: {result!r:.300}"
        assert isinstance(error, self.type), f"expected {self.type}, got {type(error).__name__}: {error}"
        assert re.search(self.match, str(error)), f"{str(error)!r} does not match {self.match!r}"
        if self.absent:
            assert not re.search(self.absent, str(error), re.IGNORECASE), str(error)


def _returned(error: BaseException | None) -> None:
    if error is not None:
        raise AssertionError(f"expected a result; got {type(error).__name__}: {error}") from error


def _leaves(params: Any) -> dict[str, np.ndarray]:
    if isinstance(params, nnx.Module):
        params = nnx.state(params)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_var)[0]
    return {path_name(p): np.asarray(v.get_value() if is_var(v) else v) for p, v in flat}


def _same(a: Any, b: Any) -> bool:
    """Same dtype, shape and values (NaN equal to NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind in "fV":  # V: bfloat16 and the other ml_dtypes
        a, b = a.astype(np.float64), b.astype(np.float64)
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


@dataclasses.dataclass(frozen=True)
class Rows:
    """Report rows ``{name: status regex}`` (all of them, in order); for compress, rows that are not ok
    keep their weight (stacked leaves: layer axis 0) and every leaf keeps its dtype."""

    status: dict[str, str]

    def check(self, params: Any, result: Any, error: BaseException | None) -> None:
        _returned(error)
        new, report = result if isinstance(result, tuple) else (None, result)
        got = {row["name"]: row["status"] for row in report.rows}
        assert list(got) == list(self.status), got
        for name, pattern in self.status.items():
            assert re.search(pattern, got[name]), f"{name}: status {got[name]!r} does not match {pattern!r}"
        if new is None:
            return
        before, after = _leaves(params), _leaves(new)
        assert list(before) == list(after)
        for name in before:
            assert after[name].dtype == before[name].dtype and after[name].shape == before[name].shape, name
        for row in report.rows:
            if row["status"] != "ok":
                old, now = before[row["leaf"]], after[row["leaf"]]
                if row["layer"] is not None:
                    old, now = old[row["layer"]], now[row["layer"]]
                assert _same(old, now), f"{row['name']} ({row['status']}) was modified"


@dataclasses.dataclass(frozen=True)
class Fit:
    """A batch of fits: ``ok`` per row; the flagged rows' reason texts match ``reason``."""

    ok: tuple[bool, ...]
    reason: str = ""

    def check(self, params: Any, result: Any, error: BaseException | None) -> None:
        _returned(error)
        assert tuple(np.asarray(result.ok).tolist()) == self.ok, (result.ok, [reason_text(r) for r in np.ravel(result.reason)])
        for ok, code in zip(self.ok, np.ravel(result.reason)):
            if not ok:
                assert re.search(self.reason, reason_text(code)), f"{reason_text(code)!r} does not match {self.reason!r}"


@dataclasses.dataclass(frozen=True)
class Filtered:
    """``filter_matrix`` on a stack: ``ok`` per matrix, reasons of the flagged ones, which come back bitwise."""

    ok: tuple[bool, ...]
    reason: str = ""

    def check(self, params: Any, result: Any, error: BaseException | None) -> None:
        _returned(error)
        out, info = result
        Fit(self.ok, self.reason).check(params, info, None)
        out = np.asarray(out)
        for i, ok in enumerate(self.ok):
            if ok:
                assert np.isfinite(out[i]).all()
            else:
                assert _same(out[i], params[i]), f"flagged matrix {i} was modified"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """Either outcome is correct (e.g. a ValueError or a flagged row for negative eigenvalues)."""

    options: tuple[Any, ...]

    def check(self, params: Any, result: Any, error: BaseException | None) -> None:
        failures = []
        for option in self.options:
            try:
                option.check(params, result, error)
                return
            except AssertionError as fail:
                failures.append(str(fail))
        raise AssertionError(" / ".join(failures))


@dataclasses.dataclass(frozen=True)
class Check:
    fn: Callable[[Any, Any], None]

    def check(self, params: Any, result: Any, error: BaseException | None) -> None:
        _returned(error)
        self.fn(params, result)


def _same_fit_as_ref(params, report) -> None:
    """The scaled copy of REF gets REF's spike count and t, and variances scaled by the square of the factor."""
    ref, x = report.rows
    assert x["status"] == ref["status"] == "ok"
    scale = float(np.asarray(params["x"]["kernel"], np.float64)[0, 0] / np.float64(REF[0, 0])) ** 2
    assert x["K"] == ref["K"] and x["t"] == pytest.approx(ref["t"], rel=1e-4)
    assert x["sigma2_sq"] / scale == pytest.approx(ref["sigma2_sq"], rel=1e-4)


def _compressed_like_ref(params, result) -> None:
    """compress commutes with scaling: the scaled copy keeps REF's rank and becomes the scaled result."""
    new, report = result
    ref, x = report.rows
    assert x["status"] == ref["status"] == "ok" and x["keep"] == ref["keep"]
    scale = np.float64(params["x"]["kernel"][0, 0]) / np.float64(REF[0, 0])
    got = np.asarray(new["x"]["kernel"], np.float64) / scale
    want = np.asarray(new["ref"]["kernel"], np.float64)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def _conv_is_ref(params, report) -> None:
    ref, x = report.rows
    assert x["shape"] == [2, P, P] and x["matrix_shape"] == [M, P]
    assert x["status"] == "ok" and x["K"] == ref["K"] and x["t"] == pytest.approx(ref["t"], rel=1e-6)


_FIGURES = ("name", "status", "K", "t", "sigma1_sq", "sigma2_sq", "keep")


def _figures(report) -> list[tuple]:
    return [tuple(row.get(k) for k in _FIGURES) for row in report.rows]


def _like_plain_dict(fn: Callable, plain: dict) -> Callable[[Any, Any], None]:
    """The result equals ``fn`` on the plain dict of the same matrices (whatever the fits say: this
    case is about the tree, not about the estimators)."""

    def check(params, result) -> None:
        report = result[1] if isinstance(result, tuple) else result
        assert _figures(report) == _figures(fn(plain)[1] if fn is compress else fn(plain))

    return check


_PLAIN_TWO_DENSE = {"a": {"kernel": REF}, "b": {"kernel": W2}}


def _nnx_compressed(model, result) -> None:
    state, report = result
    assert isinstance(state, nnx.State)
    _like_plain_dict(compress, _PLAIN_TWO_DENSE)(model, result)
    new = nnx.merge(nnx.graphdef(model), state)
    if report.rows[0]["status"] == "ok":
        assert not np.array_equal(np.asarray(new.a.kernel.get_value()), REF)
    np.testing.assert_array_equal(np.asarray(model.a.kernel.get_value()), REF)  # the model is unchanged


def _bf16_kept(params, result) -> None:
    new, report = result
    assert [r["status"] for r in report.rows] == ["ok", "ok"]
    assert new["x"]["kernel"].dtype == params["x"]["kernel"].dtype
    assert report.rows[1]["keep"] == report.rows[0]["keep"]


def _int_eigenvalues(W, lam) -> None:
    assert lam.dtype == jnp.float32 and lam.shape == (P,)
    np.testing.assert_allclose(lam, np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# The 10 x 100000 cases: bounded address space


@contextlib.contextmanager
def _bounded_memory(headroom: int = 4 << 30):
    """Limit the address space to its current size plus ``headroom`` for the duration of the block."""
    try:
        size = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pytest.skip("needs /proc/self/statm to bound the memory of this case")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + headroom if hard == resource.RLIM_INFINITY else min(size + headroom, hard)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 2 << 20, f"peak resident memory grew by {grown_kib / 2**20:.1f} GiB"


def _wide() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((10, 100_000)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The API corpus: (id, input builder, entry point, expected outcome[, marks])

OK, ZERO, NO_BULK, SMALL, NONFINITE = r"^ok$", "all zeros", "no bulk", r"p < 8", "NaN or Inf"


def unchanged(reason: str) -> str:
    """Status of a compress row left unchanged for ``reason``."""
    return "^unchanged: .*" + reason

ZEROS = np.zeros((M, P), np.float32)

API_CASES = [
    # -- shapes
    ("p1-1x512", alone(GAUSS), analyze, Rows({X: SMALL})),
    ("p1-512x1", alone(GAUSS.T), compress, Rows({X: unchanged(SMALL)})),
    ("p1-filter-pdb", value(GAUSS[None]), partial(filter_matrix, method="pdb"), Filtered((False,), SMALL)),
    ("p<8-5x300", alone(np.random.default_rng(4).standard_normal((5, 300)).astype(np.float32)), compress,
     Rows({X: unchanged(SMALL)})),
    ("10x100000-analyze", alone(_wide), analyze, Rows({X: ".+"})),
    ("10x100000-compress", alone(_wide), compress, Rows({X: unchanged(NO_BULK)})),
    ("3d-conv-kernel", tree(REF.reshape(2, P, P)), analyze, Check(_conv_is_ref)),
    ("1d-leaf", tree(np.ones(P, np.float32)), partial(analyze, where="x"),
     Raises(ValueError, re.escape(X) + r": shape \(32,\) is not a matrix")),
    ("0-size-leaf", tree(np.zeros((0, P), np.float32)), analyze, Raises(ValueError, re.escape(X) + ": .*no entries")),
    ("layer-axis-out-of-range", tree(REF), partial(analyze, layer_axis=5),
     Raises(ValueError, re.escape(R) + ": layer_axis=5 is out of range")),
    # -- values
    ("zeros", tree(ZEROS), analyze, Rows({R: OK, X: ZERO})),
    ("zeros-compress", tree(ZEROS), compress, Rows({R: OK, X: unchanged(ZERO)})),
    ("one-nan", tree(_with(W2, (3, 4), np.nan)), analyze, Raises(ValueError, re.escape(X) + ": contains NaN or Inf")),
    ("one-nan-skip", tree(_with(W2, (3, 4), np.nan)), partial(compress, on_error="skip"), Rows({R: OK, X: "skipped: contains NaN"})),
    ("all-inf", tree(np.full((M, P), np.inf, np.float32)), compress, Raises(ValueError, re.escape(X) + ": contains NaN or Inf")),
    ("stacked-one-nan-layer", alone(np.stack([REF, _with(W2, (0, 0), np.nan)])), partial(analyze, layer_axis=0),
     Raises(ValueError, re.escape(X) + r": contains NaN or Inf values in layer \[1\] of axis 0")),
    ("stacked-one-zero-layer", alone(np.stack([REF, ZEROS])), partial(compress, layer_axis=0),
     Rows({X + "[0]": OK, X + "[1]": unchanged(ZERO)})),
    ("rank-1", tree(np.outer(np.arange(1, M + 1), np.arange(1, P + 1)).astype(np.float32)), analyze, Rows({R: OK, X: NO_BULK})),
    ("duplicated-columns", tree(np.concatenate([REF[:, :16]] * 2, axis=1)), compress, Rows({R: OK, X: unchanged(NO_BULK)})),
    ("constant", tree(np.full((M, P), 0.5, np.float32)), analyze, Rows({R: OK, X: NO_BULK})),
    ("huge-scale-analyze", tree(REF * np.float32(1e30)), analyze, Check(_same_fit_as_ref)),
    ("tiny-scale-analyze", tree(REF * np.float32(1e-30)), analyze, Check(_same_fit_as_ref)),
    ("huge-scale-compress", tree(REF * np.float32(1e30)), compress, Check(_compressed_like_ref)),
    ("tiny-scale-compress", tree(REF * np.float32(1e-30)), compress, Check(_compressed_like_ref)),
    # max |W| >= 2^126: the working scale 2^127 had a flushed reciprocal (all zeros) and 2^128 is inf (NaN)
    ("float32-max-analyze", tree(REF * np.float32(3e38 / np.abs(REF).max())), analyze, Check(_same_fit_as_ref)),
    ("above-2p126-analyze", tree(REF * np.float32(1e38 / np.abs(REF).max())), analyze, Check(_same_fit_as_ref)),
    ("above-2p126-compress", tree(REF * np.float32(1e38 / np.abs(REF).max())), compress, Check(_compressed_like_ref)),
    # -- dtypes
    ("bf16-leaf", tree(REF.astype(ml_dtypes.bfloat16)), compress, Check(_bf16_kept)),
    ("f16-leaf", tree(REF.astype(np.float16)), compress, Check(_bf16_kept)),
    ("int-leaf-selected", tree(np.ones((M, P), np.int32)), partial(analyze, where="x"),
     Raises(ValueError, re.escape(X) + ": dtype int32 is not floating")),
    ("int-leaf-only", alone(np.ones((M, P), np.int32)), analyze,
     Raises(ValueError, r"no weight matrix selected .*x/kernel int32 \(64, 32\)")),
    ("complex-leaf", tree(REF.astype(np.complex64)), partial(compress, where="x"),
     Raises(ValueError, re.escape(X) + ": dtype complex64 is not floating")),
    # -- trees
    ("bare-array-analyze", value(REF), analyze, Raises(ValueError, r"bare float32 array of shape \(64, 32\)")),
    ("bare-array-compress", value(REF), compress, Raises(ValueError, r"bare float32 array of shape \(64, 32\)")),
    ("nested-empty-dicts", value({"a": {}, "b": {"c": {}}}), analyze, Raises(ValueError, "no weight matrix selected .*holds no leaves")),
    ("empty-selection-regex", tree(W2), partial(analyze, where="nothing-matches"),
     Raises(ValueError, r"where='nothing-matches'.*holds 2 leaves: ref/kernel float32 \(64, 32\)")),
    ("empty-selection-predicate", tree(W2), partial(compress, where=lambda name, x: False), Raises(ValueError, "where predicate <lambda>")),
    ("none-leaves", tree(W2, bias=None), analyze, Check(_like_plain_dict(analyze, tree(W2)()))),
    ("strings-in-tree", tree(W2, name="dense", act="relu"), compress, Check(_like_plain_dict(compress, tree(W2)()))),
    ("nnx-module", _TwoDense, analyze, Check(_like_plain_dict(analyze, _PLAIN_TWO_DENSE))),
    ("nnx-module-compress", _TwoDense, compress, Check(_nnx_compressed)),
    ("nnx-module-factored", _TwoDense, partial(compress, factored=True), Raises(ValueError, "factored=True needs a plain pytree")),
    # NNX boxes inside a plain container: factored=True returned them unchanged with an ok report
    ("nnx-state-in-dict-factored", lambda: {"model": nnx.state(_TwoDense())}, partial(compress, factored=True),
     Raises(ValueError, "params holds NNX Modules, States or Variables")),
    ("nnx-param-in-dict-factored", lambda: {"k": nnx.Param(jnp.asarray(REF))}, partial(compress, where="k", factored=True),
     Raises(ValueError, "params holds NNX Modules, States or Variables")),
    ("abstract-leaf", lambda: {"a": {"kernel": jax.ShapeDtypeStruct((M, P), jnp.float32)}}, analyze,
     Raises(ValueError, r"a/kernel: an abstract array \(jax.ShapeDtypeStruct\) has no values")),
    # -- arguments
    ("unknown-method", tree(W2), partial(compress, method="pca"), Raises(ValueError, "method must be one of .*'pca'")),
    ("unknown-rank-rule", tree(W2), partial(compress, rank="most"), Raises(ValueError, "rank rule must be one of .*'most'")),
    ("rank-fraction-above-1", tree(W2), partial(compress, method="svd", rank=1.5),
     Raises(ValueError, r"removed fraction, in \[0, 1\]; got 1.5")),
    ("rank-fraction-negative", tree(W2), partial(compress, method="svd", rank=-0.1), Raises(ValueError, r"in \[0, 1\]; got -0.1")),
    ("rank-negative-int", tree(W2), partial(compress, method="svd", rank=-3), Raises(ValueError, ">= 0; got -3")),
    ("rank-bool", tree(W2), partial(compress, method="svd", rank=True), Raises(TypeError, "bool")),
    ("unknown-mode", tree(W2), partial(analyze, mode="fast"), Raises(ValueError, "mode must be .*'fast'")),
    ("unknown-conv-reshape", tree(W2), partial(analyze, conv_reshape="hw"), Raises(ValueError, "conv_reshape .*'hw'")),
    ("unknown-on-error", tree(W2), partial(analyze, on_error="ignore"), Raises(ValueError, "on_error .*'ignore'")),
    # -- estimators and filter_matrix on arrays
    ("fit_pdb-negative-eigenvalues", lam_pair(lambda lam: -lam), partial(fit_pdb, N=M),
     OneOf((Raises(ValueError, "negative"), Fit((True, False), "negative")))),
    ("fit_pub-negative-eigenvalues", lam_pair(lambda lam: -lam), partial(fit_pub, N=M, estimator="bema"),
     OneOf((Raises(ValueError, "negative"), Fit((True, False), "negative")))),
    ("fit_pdb-zero-spectrum", lam_pair(np.zeros_like), partial(fit_pdb, N=M), Fit((True, False), ZERO)),
    ("fit_pdb-N<p", lam_pair(lambda lam: lam), partial(fit_pdb, N=16), Raises(ValueError, r"N must be an int >= p = .*32; got N=16")),
    ("fit_pdb-N-float", lam_pair(lambda lam: lam), partial(fit_pdb, N=64.0), Raises(ValueError, "N must be an int")),
    ("fit_pdb-scalar", value(np.float64(3.0)), partial(fit_pdb, N=M), Raises(ValueError, "scalar")),
    ("fit_pdb-unknown-mode", lam_pair(lambda lam: lam), partial(fit_pdb, N=M, mode="fast"), Raises(ValueError, "mode must be")),
    ("fit_pub-unknown-estimator", lam_pair(lambda lam: lam), partial(fit_pub, N=M, estimator="mp"),
     Raises(ValueError, "'bema' or 'kernel'; got 'mp'")),
    ("fit_pub-N<p", lam_pair(lambda lam: lam), partial(fit_pub, N=16), Raises(ValueError, "N must be an int >= p")),
    ("eigenvalues-complex", value(REF.astype(np.complex64)), eigenvalues, Raises(ValueError, "real matrices; got dtype complex64")),
    ("eigenvalues-1d", value(REF[0]), eigenvalues, Raises(ValueError, r"\(\.\.\., a, b\) with a, b >= 1; got shape \(32,\)")),
    ("eigenvalues-int", value(np.round(REF * 10).astype(np.int32)), eigenvalues, Check(_int_eigenvalues)),
    ("filter-nan-svd", value(lambda: np.stack([REF, _with(W2, (3, 4), np.nan)])), partial(filter_matrix, method="svd", rank=10),
     Filtered((True, False), NONFINITE)),
    ("filter-nan-pdb", value(lambda: np.stack([REF, _with(W2, (3, 4), np.nan)])), filter_matrix, Filtered((True, False), NONFINITE)),
    ("filter-zeros-pdb", value(lambda: np.stack([REF, ZEROS])), filter_matrix, Filtered((True, False), ZERO)),
    ("filter-int", value(np.ones((M, P), np.int32)), filter_matrix, Raises(TypeError, "floating-point weight; got dtype int32")),
    ("filter-complex", value(REF.astype(np.complex64)), filter_matrix, Raises(TypeError, "got dtype complex64")),
    ("filter-1d", value(REF[0]), filter_matrix, Raises(ValueError, r"got shape \(32,\)")),
    ("filter-unknown-method", value(REF), partial(filter_matrix, method="pca"), Raises(ValueError, "'pca'")),
    ("filter-rank-above-1", value(REF), partial(filter_matrix, method="svd", rank=1.5), Raises(ValueError, "got 1.5")),
    ("filter-slr-rate", value(REF), partial(filter_matrix, method="slr", rank=4, slr_sr=2.0),
     Raises(ValueError, r"slr_sr must lie in \[0, 1\]")),
]


def _params(rows) -> list:
    return [pytest.param(build, fn, expected, id=case_id, marks=marks) for case_id, build, fn, expected, *marks in rows]


@pytest.mark.parametrize("build, fn, expected", _params(API_CASES))
def test_api(build, fn, expected, request):
    params = build()
    big = "100000" in request.node.callspec.id  # the 10 x 100000 cases
    memory = _bounded_memory() if big else contextlib.nullcontext()
    result, error = None, None
    with memory:
        try:
            result = fn(params)
        except Exception as err:  # noqa: BLE001 - the expected outcome decides
            error = err
    expected.check(params, result, error)
    # the caller's input is never modified
    for name, leaf in _leaves(build()).items():
        assert _same(_leaves(params)[name], leaf), f"input leaf {name} was modified"


# --------------------------------------------------------------------------------------------------
# Files: pdbjax.io.load


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    pdbio.save(d / "good.npz", {"params/a/kernel": REF, "params/b/kernel": W2})
    pdbio.save(d / "nan.npz", {"params/a/kernel": REF, "params/b/kernel": W2, "params/x/kernel": _with(W2, (1, 1), np.nan)})
    pdbio.save(d / "ints.npz", {"params/x/kernel": np.ones((4, 4), np.int32), "step": np.array(3)})
    pdbio.save(d / "p1.npz", {"params/x/kernel": GAUSS})
    pdbio.save(d / "wide.npz", {"params/x/kernel": _wide()})
    np.savez(d / "unnamed.npz", REF)  # one array called arr_0
    (d / "text.npz").write_text("this is a text file, not an archive\n")
    (d / "empty.npz").write_bytes(b"")
    with open(d / "npy.npz", "wb") as f:
        np.save(f, REF)
    with zipfile.ZipFile(d / "notes.npz", "w") as z:
        z.writestr("readme.txt", "not an array")
    st = pdbio.save(d / "whole.safetensors", {"a.weight": REF})
    (d / "truncated.safetensors").write_bytes(st.read_bytes()[:-100])
    (d / "text.safetensors").write_text("hello")
    (d / "weights").write_text("no suffix")
    (d / "weights.pt").write_bytes(b"\x80\x02")
    (d / "empty_dir").mkdir()
    (d / "exists.json").write_text("keep me\n")
    (d / "exists.csv").write_text("keep me\n")
    (d / "exists2.json").write_text("replace me\n")
    os.symlink(d / "good.npz", d / "link.npz")
    return d


def _orbax_or_skip():
    pytest.importorskip("orbax.checkpoint")


IO_CASES = [
    # (id, file name, expected outcome)
    ("text-file-named-npz", "text.npz", Raises(ValueError, r"text\.npz: not a valid \.npz file \(not a zip archive", absent="pickle")),
    ("empty-npz", "empty.npz", Raises(ValueError, r"empty\.npz: .*the file is empty")),
    ("npy-named-npz", "npy.npz", Raises(ValueError, r"npy\.npz: .*single \.npy array")),
    ("zip-without-arrays", "notes.npz", Raises(ValueError, r"notes\.npz: .*'readme\.txt' is not a \.npy array")),
    ("truncated-safetensors", "truncated.safetensors", Raises(ValueError, r"truncated\.safetensors")),
    ("text-named-safetensors", "text.safetensors", Raises(ValueError, r"text\.safetensors: not a valid safetensors file")),
    ("missing-file", "missing.npz", Raises(FileNotFoundError, r"missing\.npz")),
    ("file-without-suffix", "weights", Raises(ValueError, r"weights: unknown file type")),
    ("unknown-suffix", "weights.pt", Raises(ValueError, r"weights\.pt: unknown suffix '\.pt'")),
    ("directory-without-checkpoint", "empty_dir", Raises(ValueError, r"empty_dir: holds no \.safetensors files and is not an Orbax")),
]


@pytest.mark.parametrize("name, expected", [pytest.param(n, e, id=i) for i, n, e in IO_CASES])
def test_io_load(files, name, expected):
    if name == "empty_dir":
        _orbax_or_skip()
    result, error = None, None
    try:
        result = pdbio.load(files / name)
    except Exception as err:  # noqa: BLE001
        error = err
    expected.check(None, result, error)


# --------------------------------------------------------------------------------------------------
# The CLI corpus: (id, argv, exit status, regex on stderr's last line (or stdout for 0), extra check)


def _json_rows(path: str) -> Callable[[Path], None]:
    def check(d: Path) -> None:
        rows = json.loads((d / path).read_text())
        assert isinstance(rows, list) and rows, rows

    return check


def _kept_text(*names: str) -> Callable[[Path], None]:
    def check(d: Path) -> None:
        for name in names:
            assert (d / name).read_text() == "keep me\n", name

    return check


def _all(*checks: Callable[[Path], None]) -> Callable[[Path], None]:
    def check(d: Path) -> None:
        for one in checks:
            one(d)

    return check


def _absent(*names: str) -> Callable[[Path], None]:
    def check(d: Path) -> None:
        for name in names:
            assert not (d / name).exists(), f"{name} was written"

    return check


def _nan_leaf_kept(d: Path) -> None:
    before, after = pdbio.load(d / "nan.npz"), pdbio.load(d / "out-skip.npz")
    assert _same(before["params/x/kernel"], after["params/x/kernel"])
    assert not _same(before["params/a/kernel"], after["params/a/kernel"])


def _p1_row(d: Path) -> None:
    assert re.search(SMALL, json.loads((d / "p1.json").read_text())[0]["status"])


def _p1_kept(d: Path) -> None:
    assert _same(pdbio.load(d / "p1.npz")["params/x/kernel"], pdbio.load(d / "p1-out.npz")["params/x/kernel"])


CLI_CASES = [
    ("json-exists", "analyze good.npz --no-baselines --json exists.json", 2,
     r"--json .*exists\.json already exists; pass --overwrite", _kept_text("exists.json")),
    ("csv-exists", "compress good.npz -o new.npz --csv exists.csv", 2,
     r"--csv .*exists\.csv already exists; pass --overwrite", _all(_kept_text("exists.csv"), _absent("new.npz"))),
    ("json-overwrite", "analyze good.npz --no-baselines --json exists2.json --overwrite", 0,
     r"params/b/kernel", _json_rows("exists2.json")),
    ("output-is-input", "compress good.npz -o good.npz --overwrite", 2, r"-o .*good\.npz is the input", None),
    ("output-links-to-input", "compress good.npz -o link.npz --overwrite", 2, r"-o .*link\.npz is the input", None),
    ("json-is-input", "analyze good.npz --json good.npz --overwrite", 2, r"--json .*good\.npz is the input", None),
    ("json-is-output", "compress good.npz -o out.npz --json out.npz", 2, r"--json .*out\.npz is the same file as -o", _absent("out.npz")),
    ("json-is-directory", "analyze good.npz --json empty_dir", 2, r"empty_dir is a directory", None),
    ("output-dir-missing", "compress good.npz -o no/such/out.npz", 2, r"does not exist", None),
    ("output-is-a-plain-directory", "compress good.npz -o empty_dir --overwrite", 2,
     r"empty_dir is a directory that is not an Orbax checkpoint", None),
    ("text-file-named-npz", "analyze text.npz", 2, r"text\.npz: not a valid \.npz file \(not a zip archive", None),
    ("truncated-safetensors", "analyze truncated.safetensors", 2, r"truncated\.safetensors: ", None),
    ("missing-file", "analyze missing.npz", 2, r"missing\.npz: no such file", None),
    ("directory-without-checkpoint", "analyze empty_dir", 2, r"empty_dir: holds no \.safetensors files and is not an Orbax", None),
    ("unknown-suffix", "analyze weights.pt", 2, r"weights\.pt: unknown suffix", None),
    ("where-matches-nothing", "analyze good.npz --where nothing", 2,
     r"good\.npz: no weight matrix selected by where='nothing'.*params/a/kernel float32 \(64, 32\)", None),
    ("only-int-leaves", "analyze ints.npz", 2, r"ints\.npz: no weight matrix selected .*int32 \(4, 4\)", None),
    ("unnamed-npz-array", "compress unnamed.npz -o out2.npz", 2,
     r"no weight matrix selected .*arr_0 float32 \(64, 32\)", _absent("out2.npz")),
    ("nan-leaf", "analyze nan.npz --no-baselines", 2, r"nan\.npz: params/x/kernel: contains NaN or Inf", None),
    ("nan-leaf-skipped", "compress nan.npz -o out-skip.npz --on-error skip --rank upper-bulk", 0, r"skipped: contains NaN", _nan_leaf_kept),
    ("rank-out-of-range", "compress good.npz -o out3.npz --rank 2.5", 2, r"invalid rank '2\.5'", None),
    ("coordinator-without-port", "analyze good.npz --coordinator 127.0.0.1 --num-processes 2 --process-id 0", 2,
     r"--coordinator must be HOST:PORT", None),
    ("p1-analyze", "analyze p1.npz --no-baselines --json p1.json", 0, r"p < 8", _p1_row),
    ("p1-compress", "compress p1.npz -o p1-out.npz", 0, r"unchanged", _p1_kept),
    ("10x100000-analyze", "analyze wide.npz --no-baselines", 0, r"params/x/kernel", None),
]
_cli_results: dict[str, tuple[int, str, str]] = {}


def _cli(case_id: str, argv: str, d: Path) -> tuple[int, str, str]:
    """Run ``pdbjax ARGV`` once per case in ``d`` (relative paths), capturing stdout and stderr."""
    if case_id not in _cli_results:
        if "empty_dir" in argv and "analyze empty_dir" in argv:
            _orbax_or_skip()
        out, err = _io.StringIO(), _io.StringIO()
        cwd = os.getcwd()
        memory = _bounded_memory() if "wide" in argv else contextlib.nullcontext()
        try:
            os.chdir(d)
            with memory, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv.split())
        finally:
            os.chdir(cwd)
        _cli_results[case_id] = (rc, out.getvalue(), err.getvalue())
    return _cli_results[case_id]


def _cli_params() -> list:
    return [pytest.param(case_id, argv, status, message, extra, id=case_id, marks=marks)
            for case_id, argv, status, message, extra, *marks in CLI_CASES]


@pytest.mark.parametrize("case_id, argv, status, message, extra", _cli_params())
def test_cli(files, case_id, argv, status, message, extra):
    rc, out, err = _cli(case_id, argv, files)
    assert rc == status, err
    text = out if status == 0 else err.splitlines()[-1]
    assert re.search(message, text), text
    if extra is not None:
        extra(files)


@pytest.mark.parametrize("case_id, argv", [pytest.param(c[0], c[1], id=c[0]) for c in CLI_CASES])
def test_cli_never_prints_a_traceback(files, case_id, argv):
    """Whatever the input: no traceback; a failure is one ``pdbjax: error:`` line (status 2 for the
    user's errors, 1 with a --debug hint for anything else)."""
    rc, out, err = _cli(case_id, argv, files)
    assert "Traceback" not in err and "Traceback" not in out
    assert not [line for line in err.splitlines() if line.startswith("WARNING:")], err  # no library log lines either
    assert rc in (0, 1, 2)
    if rc:
        last = err.splitlines()[-1]
        assert last.startswith("pdbjax: error: ") and "\n" not in last
        assert rc == 2 or "rerun with --debug" in last
