"""Tests for pdbjax.estimate: eigenvalues, the EDA/EDB spike count and PDBLS (fit_pdb).

The oracle is ``benchmarks/_reference.py``: the reference code's algorithm written plainly in NumPy/SciPy
(``removebike``, ``scipy.optimize.curve_fit`` with trust-region reflective, ``numpy.roots`` edges).

Compile time dominates (each new ``fit_pdb`` shape/mode costs seconds on CPU), so matrices are built once
per module and fitted in few batched calls that share shapes:

* ``batch_a``: 24 matrices 784 x 512: 20 random PDB configurations (the oracle set), then 4 draws of the
  truth configuration. Fitted in mode ``"scaled"`` (also times constants: scale invariance), in mode
  ``"reference"`` (also at eigenvalue scales 1e-3..1e3, two calls of the same shape: the least-squares
  cost against scipy's), and (with 5 degenerate rows swapped in at the end) eagerly and under ``jax.jit``.
* ``example``: the issue's 900 x 600 matrix (``t = 0.7``, ``sigma^2 = 0.02, 0.08``, 3 spikes) times
  ``1e-3, 1, 100, 1e3``, in mode ``"reference"``.
* truth recovery at the other three issue shapes, 3 draws each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdbjax.estimate import _STARTS, POOR_FIT_RESIDUAL, eigenvalues, fit_pdb, spike_count, spike_window, widest_window
from pdbjax.fits import Reason
from pdbjax.simulate import simulate
from pdbjax.spectral import PDB, lambda_plus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _reference as ref  # noqa: E402

N, P = 784, 512  # batch_a
N_RANDOM = 20
TRUTH = PDB(0.7, 1.0, 4.0)
TRUTH_SPIKES = (80.0, 60.0, 40.0)  # sample outliers ~40..80 vs lambda_+ ~9 at 784 x 512
N_TRUTH = 4

N_E, P_E = 900, 600  # the scale example
EXAMPLE = PDB(0.7, 0.02, 0.08)
EXAMPLE_SPIKES = (2.0, 1.5, 1.0)  # fitted lambda_+ ~0.18: well separated
SCALES = (1e-3, 1.0, 100.0, 1e3)  # the scales

RTOL = 1e-3  # agreement with the oracle asked by the issue
COLLAPSE = 1e-2  # oracle "collapsed" to one bulk: |s1 - s2| <= COLLAPSE * max(s1, s2)
BF16_NUMPY = "numpy-bf16"  # a NumPy array of ml_dtypes.bfloat16 (not a jax array)


def _random_configs(rng: np.random.Generator, n: int):
    """Random PDB populations (t in [0.2, 0.8], ratio 1.5..8) with 0..4 spikes 8..40 times sigma2_sq."""
    out = []
    for _ in range(n):
        t = rng.uniform(0.2, 0.8)
        s1 = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
        s2 = s1 * rng.uniform(1.5, 8.0)
        spikes = np.sort(rng.uniform(8.0, 40.0, rng.integers(0, 5)) * s2)[::-1]
        out.append((PDB(t, s1, s2), tuple(spikes)))
    return out


@pytest.fixture(scope="module")
def batch_a():
    keys = jax.random.split(jax.random.PRNGKey(7), N_RANDOM + N_TRUTH)
    configs = _random_configs(np.random.default_rng(20250713), N_RANDOM) + [(TRUTH, TRUTH_SPIKES)] * N_TRUTH
    W = jnp.stack([simulate(k, N, P, pop, spikes) for k, (pop, spikes) in zip(keys, configs)])
    return {"W0": np.asarray(W[0]), "lam": np.asarray(eigenvalues(W)), "configs": configs}


@pytest.fixture(scope="module")
def fit_scaled(batch_a):
    return fit_pdb(batch_a["lam"], N)


@pytest.fixture(scope="module")
def fit_reference(batch_a):
    return fit_pdb(batch_a["lam"], N, mode="reference")


@pytest.fixture(scope="module")
def example():
    W = simulate(jax.random.PRNGKey(900), N_E, P_E, EXAMPLE, EXAMPLE_SPIKES)
    lam = np.asarray(eigenvalues(jnp.stack([W * np.float32(a) for a in SCALES])))
    return {"lam": lam, "reference": fit_pdb(lam, N_E, mode="reference")}


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b) / np.abs(b))


def _compare(fit, i: int, oracle: ref.RefFit) -> str:
    """Category of row ``i`` against the oracle: ok / collapsed_ok / mismatch / collapsed_mismatch / ..."""
    if not oracle.converged:
        return "oracle_not_converged"
    if int(fit.K[i]) != oracle.K:
        return "K_differs"
    got = np.array([fit.t[i], fit.sigma1_sq[i], fit.sigma2_sq[i]], np.float64)
    want = np.array([oracle.t, oracle.sigma1_sq, oracle.sigma2_sq])
    if abs(want[1] - want[2]) <= COLLAPSE * max(want[1], want[2]):
        bulk = lambda x: x[0] * x[1] + (1 - x[0]) * x[2]  # noqa: E731  (t unidentifiable: mean only)
        return "collapsed_ok" if _rel(bulk(got), bulk(want)) <= RTOL else "collapsed_mismatch"
    return "ok" if _rel(got, want) <= RTOL else "mismatch"


def _tally(fit, lam, **oracle_kw):
    cats: dict[str, list[int]] = {}
    for i in range(N_RANDOM):
        cats.setdefault(_compare(fit, i, ref.pdbls(lam[i], N, **oracle_kw)), []).append(i)
    return cats


# --------------------------------------------------------------------------------------------------
# eigenvalues


def _np_eigs(W):
    return np.linalg.svd(np.asarray(W, np.float64), compute_uv=False) ** 2


@pytest.mark.parametrize("shape", [(3, 40, 24), (3, 24, 40), (2, 2, 30, 30)], ids=["tall", "wide", "square-2batch"])
def test_eigenvalues_gram_svd_agree_with_numpy(shape):
    W = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    want = _np_eigs(W)
    for solver in ("gram", "svd"):
        got = eigenvalues(W, solver=solver)
        assert got.shape == shape[:-2] + (min(shape[-2:]),) and got.dtype == jnp.float32
        assert np.all(np.diff(np.asarray(got), axis=-1) <= 0), "not descending"
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * want.max())
    transposed = eigenvalues(np.swapaxes(W, -1, -2), solver="svd")
    np.testing.assert_allclose(eigenvalues(W, solver="gram"), transposed, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, BF16_NUMPY], ids=["bf16", "f16", "numpy-bf16"])
def test_eigenvalues_upcast_half_precision(dtype):
    x = np.random.default_rng(1).normal(size=(2, 30, 20))
    W = x.astype(ml_dtypes.bfloat16) if dtype is BF16_NUMPY else jnp.asarray(x, dtype)
    got = eigenvalues(W)
    assert got.dtype == jnp.float32
    # the upcast is exact: same result as the float32 copy of the half-precision values
    np.testing.assert_allclose(got, eigenvalues(jnp.asarray(W, jnp.float32)), rtol=1e-6)


def test_eigenvalues_float64_resolves_small_eigenvalues():
    rng = np.random.default_rng(2)
    U, _ = np.linalg.qr(rng.normal(size=(30, 12)))
    V, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    s = np.logspace(0, -6, 12)  # lambda from 1 down to 1e-12: below float32 resolution of the Gram
    W = ((U * s) @ V.T).astype(np.float32)
    want = _np_eigs(W)
    for solver in ("gram", "svd"):
        got = eigenvalues(W, precision="float64", solver=solver)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-6 if solver == "svd" else 0, atol=0 if solver == "svd" else 1e-14)
    lam32 = np.asarray(eigenvalues(W, solver="gram"))  # float32 Gram: lambda_12 = 1e-12 is below its rounding noise
    assert lam32.dtype == np.float32 and np.all(lam32 >= 0)  # noise clipped, never negative
    assert not np.isclose(lam32[-1], want[-1], rtol=0.5, atol=0)


def test_eigenvalues_bad_options():
    with pytest.raises(ValueError, match="solver"):
        eigenvalues(np.ones((4, 3)), solver="qr")
    with pytest.raises(ValueError, match="precision"):
        eigenvalues(np.ones((4, 3)), precision="float16")


# --------------------------------------------------------------------------------------------------
# spike count (EDA / EDB)


def test_spike_count_equals_reference_formulas(batch_a):
    """Raw eigenvalues (mode="reference"), float64: equal to ``removebike`` where it is finite, and to
    the same criterion in log space (``removebike_lse``) where ``exp`` overflows (gaps above ~355)."""
    lam = batch_a["lam"].astype(np.float64)
    # more regimes of the criterion: the same spectra rescaled (K moves with the scale in this mode)
    rows = np.concatenate([lam * a for a in (0.05, 1.0, 10.0)])
    with jax.enable_x64(True):
        got = np.asarray(spike_count(jnp.asarray(rows), N, mode="reference"))
    w = ref.window(N)
    finite, overflow = [], []
    for lam_i, k in zip(rows, got):
        k_ref, eda, edb = ref.removebike(lam_i, N)
        if np.all(np.isfinite(eda)) and np.all(np.isfinite(edb)):
            finite.append((k, k_ref))
        else:
            overflow.append((k, ref.removebike_lse(lam_i, N)[0]))
    assert len(finite) >= 20 and len(overflow) >= 5, (len(finite), len(overflow))
    assert len({k for k, _ in finite}) >= 3, "too few distinct counts to test the criterion"
    assert [k for k, _ in finite] == [k for _, k in finite]
    assert all(1 <= k <= w for k, _ in overflow)
    assert [k for k, _ in overflow] == [k for _, k in overflow]


def test_spike_count_scaled_mode_is_reference_on_median_normalised(batch_a):
    lam = batch_a["lam"].astype(np.float64)
    with jax.enable_x64(True):
        got = np.asarray(spike_count(jnp.asarray(lam), N))
    assert got.tolist() == [ref.removebike_lse(x / x[P // 2], N)[0] for x in lam]


# --------------------------------------------------------------------------------------------------
# PDBLS against the SciPy oracle


def test_fit_scaled_matches_multistart_curve_fit(batch_a, fit_scaled):
    """Default mode vs curve_fit from the same 13 starts on the same median-normalised grid, best cost."""
    cats = _tally(fit_scaled, batch_a["lam"], starts=_STARTS, scaled=True, penalty=False)
    # every oracle run converges to a two-bulk optimum (none collapsed), so all 20 are compared in full
    assert cats == {"ok": list(range(N_RANDOM))}, cats


def test_fit_reference_mode_spike_count_matches_oracle(batch_a, fit_reference):
    """K0 is reported for every screened row, whether or not its fit is ok, and equals ``removebike``.

    Exact equality is robust across CPUs: K0 does not depend on the least squares (a row flagged on one
    CPU used to report K = 0, the failure this replaces), and both sides evaluate the same float64
    criterion on the same eigenvalues, whose best and second-best values differ by >= 1e-4 relative on
    every row (asserted: far above float64 rounding, so no tie can flip the argmin)."""
    got = np.asarray(fit_reference.K).tolist()
    want, margins = [], []
    for lam in batch_a["lam"]:
        k, eda, edb = ref.removebike(lam, N)
        want.append(k)
        margins += [np.diff(np.sort(c)[:2])[0] / np.abs(np.sort(c)[0]) for c in (eda, edb)]
    assert min(margins) > 1e-4, min(margins)
    assert got == want


def test_fit_reference_mode_matches_single_start_curve_fit(batch_a, fit_reference):
    """Reference mode vs curve_fit from the same single midpoint start: the same optimum within RTOL.

    Both solvers must leave the single-bulk saddle the midpoint starts them towards (scipy by the
    rounding of its finite differences, pdbjax along negative curvature). Compared on the rows that pdbjax
    reports ok; up to 2 of the 20 may instead be flagged (an allowed outcome of a fit on another CPU,
    whose float32 eigenvalues differ by rounding: measured 0 of 20 on two CPUs), none may differ, except
    where scipy did not leave the saddle: its collapsed ``s1 ~ s2`` then costs more than twice pdbjax's
    optimum (measured on an AMD EPYC with AVX-512: row 13, scipy 0.21 against pdbjax 3.4e-8, where pdbjax recovers the
    simulated population; 0 such rows on the CPU where the test was written)."""
    lam = batch_a["lam"]
    cats = _tally(fit_reference, lam)
    ok = np.asarray(fit_reference.ok)[:N_RANDOM]
    flagged = [i for i in range(N_RANDOM) if not ok[i]]
    assert len(flagged) <= 2, (flagged, np.asarray(fit_reference.reason)[flagged])
    assert all(int(fit_reference.reason[i]) in (Reason.NOT_CONVERGED, Reason.POOR_FIT) for i in flagged)

    def scipy_stayed_at_saddle(i: int) -> bool:
        oracle = ref.pdbls(lam[i], N)
        cost = _reference_cost(lam[i], oracle.K, (fit_reference.t[i], fit_reference.sigma1_sq[i], fit_reference.sigma2_sq[i]))
        return cost < 0.5 * oracle.cost

    stayed = [i for i in cats.get("collapsed_mismatch", []) if ok[i] and scipy_stayed_at_saddle(i)]
    assert len(stayed) <= 2, stayed
    agreeing = ("ok", "collapsed_ok", "oracle_not_converged")
    bad = {k: [i for i in v if ok[i] and i not in stayed] for k, v in cats.items() if k not in agreeing}
    assert not any(bad.values()), cats


def _reference_cost(lam: np.ndarray, K: int, theta) -> float:
    """``0.5 sum (u - z(s; theta))^2`` of the reference's objective (its grid and -200 penalty), via the oracle."""
    bulk = np.asarray(lam, np.float64)[K:]
    u = ref.grid(bulk, N, P)
    s = ref.companion(u, bulk, N, P)
    return 0.5 * float(np.sum((u - ref.func(s, *theta, bulk.size / N)) ** 2))


@pytest.fixture(scope="module")
def reference_scales(batch_a):
    """batch_a's 24 matrices at eigenvalue scales 1e-3..1e3 (the issue's), in two reference-mode calls of
    batch_a's shape and dtype (no recompile): row i at scale 10^((i + shift) mod 7 - 3), shift 0 and 3,
    so each scale meets 6 or 7 different matrices."""
    exponent = np.concatenate([(np.arange(N_RANDOM + N_TRUTH) + shift) % 7 - 3 for shift in (0, 3)])
    lam = (np.concatenate([batch_a["lam"]] * 2) * np.float32(10.0) ** exponent[:, None]).astype(np.float32)
    half = N_RANDOM + N_TRUTH
    fits = [fit_pdb(lam[:half], N, mode="reference"), fit_pdb(lam[half:], N, mode="reference")]
    return lam, exponent, jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *fits)


def test_reference_mode_cost_no_worse_than_scipy_across_scales(reference_scales):
    """Issue: from the same single midpoint start, reference mode reaches a least-squares cost no worse
    than scipy's TRF + 1% at every eigenvalue scale 1e-3..1e3, or flags the row (NOT_CONVERGED, or
    POOR_FIT where the reference algorithm's fixed grid cannot describe the bulk at that scale).

    The 1% is the issue's tolerance (both solvers stop at a 1e-8 tolerance; the costs of the same optimum
    agree to ~1e-6; the reported float32 parameters add ~2e-3). Measured: the old fixed-budget solver
    stopped up to 2e8 times above scipy on 24 of 36 such rows at scale 100, all reported ok."""
    lam, exponent, fit = reference_scales
    compared = {}
    for i, row in enumerate(lam):
        # the same problem: K0 by the reference criterion in log space (raw exp overflows at scales >= 100)
        oracle = ref.pdbls(row, N, K=ref.removebike_lse(row, N)[0])
        assert int(fit.K[i]) == oracle.K, i
        if not fit.ok[i]:
            assert int(fit.reason[i]) in (Reason.NOT_CONVERGED, Reason.POOR_FIT), (i, fit.reason[i])
            continue
        if int(fit.bulks[i]) != 2:  # one-bulk rows report the mean population, not the least-squares optimum
            continue
        cost = _reference_cost(row, oracle.K, (fit.t[i], fit.sigma1_sq[i], fit.sigma2_sq[i]))
        assert cost <= 1.01 * oracle.cost, (i, cost, oracle.cost)
        compared.setdefault(int(exponent[i]), []).append(i)
    assert sum(map(len, compared.values())) >= 30 and len(compared) == 7, compared


def test_step_budget_too_small_flags_not_converged(batch_a):
    """A least squares stopped by its step cap (here 3 steps) is not a fit: every two-bulk row of batch_a
    (none has a spherical bulk) is NOT_CONVERGED, with NaN parameters (with the default cap all of them
    are ok: test_fit_edges_match_numpy_roots)."""
    fit = fit_pdb(batch_a["lam"], N, n_iter=3)
    assert np.all(np.asarray(fit.reason) == Reason.NOT_CONVERGED), np.asarray(fit.reason)
    assert np.all(np.isnan(np.asarray(fit.sigma1_sq)))


def test_fit_edges_match_numpy_roots(fit_scaled):
    """Edges and lambda_+ of each fit equal those of the np.roots quartic at the fitted parameters."""
    assert np.all(np.asarray(fit_scaled.ok))
    f = {k: np.asarray(getattr(fit_scaled, k), np.float64) for k in ("t", "sigma1_sq", "sigma2_sq", "c", "edges", "lambda_plus")}
    params = np.stack([f["t"], f["sigma1_sq"], f["sigma2_sq"], f["c"]], -1)
    for got, theta, lam_plus in zip(f["edges"], params, f["lambda_plus"]):
        want = ref.edges_np(*theta)
        assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-4, atol=1e-6 * np.nanmax(want))
        assert lam_plus == np.nanmax(got)
    np.testing.assert_allclose(fit_scaled.c, (P - np.asarray(fit_scaled.K)) / N, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# scale invariance


@pytest.mark.parametrize("a", (1e-3, 0.0123, 47.0, 1e3))
def test_scaled_mode_is_scale_invariant(batch_a, fit_scaled, a):
    """W -> a W (lambda -> a^2 lambda) on all 24 matrices: K and t unchanged, variances and edges times a^2."""
    fit = fit_pdb((batch_a["lam"] * np.float32(a) ** 2).astype(np.float32), N)  # same shape: no recompile
    np.testing.assert_array_equal(fit.K, fit_scaled.K)
    np.testing.assert_allclose(fit.t, fit_scaled.t, rtol=1e-4)  # measured spread ~1e-6
    for key in ("sigma1_sq", "sigma2_sq", "lambda_plus"):
        np.testing.assert_allclose(np.asarray(getattr(fit, key), np.float64) / a**2, getattr(fit_scaled, key), rtol=1e-4)


def test_fit_lost_in_the_cast_back_to_float32_is_flagged(batch_a, fit_scaled):
    """float32 eigenvalues near 1e-40 (W scaled by 1e-20): the float64 fit is right, but its variances and
    lambda_+ underflow in the cast back to float32. Those rows are OUT_OF_RANGE with a NaN population (they were ok
    rows of zeros); K, still meaningful, is kept."""
    lam = (batch_a["lam"][:4].astype(np.float64) * 1e-40).astype(np.float32)
    fit = fit_pdb(lam, N)
    assert not np.any(fit.ok) and np.all(fit.reason == Reason.OUT_OF_RANGE), fit.reason
    assert np.all(np.isnan(fit.sigma1_sq)) and np.all(np.isnan(fit.lambda_plus)) and np.all(fit.bulks == 0)
    np.testing.assert_array_equal(fit.K, fit_scaled.K[:4])


def test_reference_mode_is_not_scale_invariant(example):
    """The issue's example: raw-eigenvalue EDA/EDB changes K with the scale of W (the default mode does not,
    see above); at scale 1 the 3 spikes are found."""
    K = np.asarray(example["reference"].K)
    assert len(set(K.tolist())) > 1, K  # measured: K = 1, 3, 11, 11 for scales 1e-3, 1, 100, 1e3
    assert K[SCALES.index(1.0)] == len(EXAMPLE_SPIKES)
    # the oracle's criterion (in log space: raw removebike overflows at 1e3) gives the same counts
    assert K.tolist() == [ref.removebike_lse(x, N_E)[0] for x in example["lam"]]


# --------------------------------------------------------------------------------------------------
# truth recovery


@pytest.fixture(scope="module", params=[(784, 512), (512, 512), (2000, 500), (1536, 384)], ids=lambda s: f"{s[0]}x{s[1]}")
def truth_fit(request):
    n, p = request.param
    if (n, p) == (N, P):  # the truth draws of batch_a
        batch = request.getfixturevalue("batch_a")
        fit = request.getfixturevalue("fit_scaled")
        rows = slice(N_RANDOM, None)
        return request.param, batch["lam"][rows], jax.tree_util.tree_map(lambda x: np.asarray(x)[rows], fit)
    keys = jax.random.split(jax.random.PRNGKey(11), 3)
    lam = eigenvalues(jnp.stack([simulate(k, n, p, TRUTH, TRUTH_SPIKES) for k in keys]))
    return request.param, np.asarray(lam), fit_pdb(lam, n)


def test_truth_recovery(truth_fit, request):
    (n, p), lam, fit = truth_fit
    if n == p:
        request.applymarker(pytest.mark.xfail(strict=True, reason="square (c = 1): sigma1_sq biased low by ~3% "
                                              "(mean -3.1%, worst -5.6% over 16 draws; the oracle agrees)"))
    assert np.all(np.asarray(fit.ok))
    np.testing.assert_allclose(fit.t, TRUTH.t, atol=0.03)
    np.testing.assert_allclose(fit.sigma1_sq, TRUTH.sigma1_sq, rtol=0.03)
    np.testing.assert_allclose(fit.sigma2_sq, TRUTH.sigma2_sq, rtol=0.03)


def test_truth_spikes_counted(truth_fit):
    """All 3 spikes are counted (K0 >= 3) and sit far above the fitted lambda_+. K0 (EDA/EDB, as in the
    reference) may also take 1-2 bulk-edge eigenvalues: measured K0 in {3, 4, 5}, exactly 3 in 34/48 draws
    (12 per shape)."""
    _, lam, fit = truth_fit
    K = np.asarray(fit.K)
    assert np.all(K >= len(TRUTH_SPIKES)) and np.all(K <= len(TRUTH_SPIKES) + 2), K
    assert np.all(lam[:, len(TRUTH_SPIKES) - 1] > 2 * np.asarray(fit.lambda_plus))


# --------------------------------------------------------------------------------------------------
# degenerate input


DEGENERATE = ("nan", "inf", "zeros", "rank1", "student_t_1.5")
DEGENERATE_REASON = {"nan": Reason.NON_FINITE, "inf": Reason.NON_FINITE, "zeros": Reason.ALL_ZERO, "rank1": Reason.NO_BULK}
N_GOOD = N_RANDOM + N_TRUTH - len(DEGENERATE)  # rows of batch_a kept in the degenerate batch


@pytest.fixture(scope="module")
def degenerate(batch_a):
    """batch_a with its last five rows replaced by degenerate matrices (same shape: no recompile)."""
    rng = np.random.default_rng(3)
    W = batch_a["W0"]
    nan, inf = W.copy(), W.copy()
    nan[3, 5] = np.nan
    inf[7, 1] = np.inf
    bad = np.stack([
        nan,
        inf,
        np.zeros_like(W),
        np.outer(rng.normal(size=N), rng.normal(size=P)),
        rng.standard_t(1.5, size=(N, P)) / np.sqrt(N),
    ]).astype(np.float32)
    lam = batch_a["lam"].copy()
    lam[N_GOOD:] = np.asarray(eigenvalues(bad))
    return lam


@pytest.fixture(scope="module")
def fit_degenerate(degenerate):
    return fit_pdb(degenerate, N)


def _check_degenerate(fit, clean):
    for i, name in enumerate(DEGENERATE, start=N_GOOD):
        if name in DEGENERATE_REASON:
            assert not bool(fit.ok[i]) and int(fit.reason[i]) == DEGENERATE_REASON[name], (name, fit.reason[i])
            assert np.isnan(fit.t[i]) and np.isnan(fit.lambda_plus[i]) and int(fit.K[i]) == 0
    assert np.all(np.asarray(fit.ok)[:N_GOOD])
    for field in fit._fields:  # the other rows are bit-for-bit what they are in a clean batch
        got, want = np.asarray(getattr(fit, field))[:N_GOOD], np.asarray(getattr(clean, field))[:N_GOOD]
        np.testing.assert_array_equal(got, want, err_msg=field)


def test_degenerate_rows_flagged_eager(fit_degenerate, fit_scaled):
    _check_degenerate(fit_degenerate, fit_scaled)


@pytest.fixture(scope="module")
def jit_fits(batch_a, degenerate):
    fitter = jax.jit(lambda e: fit_pdb(e, N))
    return fitter(jnp.asarray(batch_a["lam"])), fitter(jnp.asarray(degenerate))


def test_degenerate_rows_flagged_under_jit(jit_fits, fit_degenerate):
    clean, fit = jit_fits
    assert np.all(np.asarray(clean.ok))
    _check_degenerate(fit, clean)
    # float32 under jit, float64 eagerly: same verdicts, same optimum. The simulated rows to 1e-3; the
    # Student-t(1.5) row, whose bulk the model describes only roughly (residual 0.015, near POOR_FIT's
    # 0.02), has a shallow optimum: float32 and float64 stop 0.5% apart on an AMD EPYC with AVX-512 (sigma2_sq), so 2e-2.
    np.testing.assert_array_equal(np.asarray(fit.reason), np.asarray(fit_degenerate.reason))
    ok = np.asarray(fit.ok)
    rtol = np.where(np.arange(ok.size) < N_GOOD, 1e-3, 2e-2)[ok]
    for key in ("t", "sigma1_sq", "sigma2_sq"):
        got, want = np.asarray(getattr(fit, key))[ok], np.asarray(getattr(fit_degenerate, key))[ok]
        assert np.all(np.abs(got - want) <= rtol * np.abs(want)), (key, got, want)


@pytest.mark.xfail(strict=True, reason="known limitation: Student-t(1.5) entries give a bulk the PDB law fits with "
                   "residual ~1.5e-2 (below POOR_FIT_RESIDUAL = 2e-2; 4.6e-3 at 2000 x 500) and KS ~0.09, within a "
                   "factor 4 of real layers (FCNN/MiniLM residual <= 3.8e-3, KS up to 0.11), so no threshold flags "
                   "it with a safe margin for real layers")
def test_heavy_tailed_row_flagged(fit_degenerate):
    i = N_GOOD + DEGENERATE.index("student_t_1.5")
    assert not bool(fit_degenerate.ok[i]), (fit_degenerate.K[i], fit_degenerate.lambda_plus[i], fit_degenerate.residual[i])


def test_eigenvalues_rejects_complex():
    with pytest.raises(ValueError, match="real"):
        eigenvalues(np.eye(3, 2) * 1j)


def test_power_law_spectrum_flagged_poor_fit():
    """Singular values s_j = j^-1/2 and j^-3/4 (no bulk at all): flagged, while a PDB matrix in the same
    batch is not. Measured residuals 2.1 and 0.53 against POOR_FIT_RESIDUAL = 2e-2 (the PDB row: ~1e-3)."""
    rng = np.random.default_rng(5)
    U, _, Vt = np.linalg.svd(rng.normal(size=(784, 512)), full_matrices=False)
    power = [(U * np.arange(1, 513) ** -a) @ Vt for a in (0.5, 0.75)]
    pdb = np.asarray(simulate(jax.random.PRNGKey(5), 784, 512, PDB(0.7, 1.0, 4.0), spikes=(40.0,)))
    fit = fit_pdb(eigenvalues(np.stack([*power, pdb]), precision="float64"), 784)
    assert np.asarray(fit.ok).tolist() == [False, False, True]
    assert np.asarray(fit.reason).tolist()[:2] == [Reason.POOR_FIT] * 2 and np.all(np.isnan(np.asarray(fit.lambda_plus)[:2]))
    assert float(fit.residual[2]) < POOR_FIT_RESIDUAL / 5


def test_too_small_p_flagged():
    lam = np.sort(np.random.default_rng(4).uniform(0.5, 2.0, (3, 5)), axis=-1)[:, ::-1].copy()
    lam[1, 0] = np.nan
    fit = fit_pdb(lam, 10)
    assert not np.any(np.asarray(fit.ok))
    assert np.asarray(fit.reason).tolist() == [Reason.TOO_SMALL, Reason.NON_FINITE, Reason.TOO_SMALL]
    assert np.all(np.isnan(np.asarray(fit.sigma1_sq)))


# --------------------------------------------------------------------------------------------------
# argument validation


@settings(max_examples=30, deadline=None)
@given(
    p=st.integers(1, 64),
    batch_shape=st.lists(st.integers(1, 3), max_size=2),
    n=st.one_of(st.integers(-10, 0), st.integers(1, 63), st.floats(1.0, 1e3), st.none(), st.text(max_size=3)),
    fn=st.sampled_from([fit_pdb, spike_count]),
)
def test_bad_n_raises(p, batch_shape, n, fn):
    if isinstance(n, int) and n >= p:
        n = p - 1 - (n % 7)  # always below p
    eigs = np.ones((*batch_shape, p), np.float32)
    with pytest.raises(ValueError, match=r"N must be an int >= p"):
        fn(eigs, n)


@settings(max_examples=20, deadline=None)
@given(mode=st.text(max_size=10).filter(lambda m: m not in ("scaled", "reference")))
def test_bad_mode_raises(mode):
    with pytest.raises(ValueError, match="mode"):
        fit_pdb(np.ones(10), 20, mode=mode)


def test_scaled_mode_widens_the_spike_window_where_k0_reaches_it():
    """More spikes than the reference window w = spike_window(1024, 512) = 12: the reference's K0 stops at 12 and
    its lambda_+ is several times the model's (the bulk holds the rest); scaled mode widens the window and finds
    every spike, lambda_+ within 5% of the population's (measured: -1.4% to -4.3%, the finite-N bias of 1024 x 512
    below the limit edge, also in the 8-spike fit that needs no widening). 50 spikes need the window 96."""
    counts = (8, 16, 30, 50)
    mats = jnp.stack([simulate(jax.random.PRNGKey(n), 1024, 512, PDB(0.7, 1.0, 4.0), spikes=[100.0] * n) for n in counts])
    lam = eigenvalues(mats)
    scaled, reference = fit_pdb(lam, 1024), fit_pdb(lam, 1024, mode="reference")
    assert spike_window(1024, 512) == 12 and widest_window(12, 512) == 256
    assert np.asarray(scaled.K).tolist() == list(counts)
    assert np.asarray(reference.K).tolist() == [8, 12, 12, 12]
    with jax.enable_x64(True):
        truth = np.array([float(lambda_plus(PDB(0.7, 1.0, 4.0), (512 - n) / 1024)) for n in counts])
    assert np.all(np.asarray(scaled.ok))
    np.testing.assert_allclose(np.asarray(scaled.lambda_plus), truth, rtol=0.05)
    assert np.all(np.asarray(reference.lambda_plus)[1:3] > 3 * truth[1:3])  # 16 and 30 spikes: 4.2x and 12x


def test_a_widened_fit_that_is_not_ok_leaves_the_last_ok_one():
    """1024 x 512 noise whose top 250 eigenvalues are lifted onto a slowly decaying tail (a bug hunt's spectrum): the
    reference window gives an ok fit (K = 12; its residual 0.0186 is 7% under POOR_FIT_RESIDUAL, far beyond the
    rounding of a float64 fit); the widened window (K = 24) finds no PDB population (a NaN residual). The ok fit
    stands (it was replaced by the failed one, and compress left the matrix unchanged)."""
    e = np.array(eigenvalues(simulate(jax.random.PRNGKey(0), 1024, 512, PDB(1.0, 1.0, 1.0)), precision="float64"), np.float64)
    e[:250] = np.maximum(e[0] * (1 + 29 * np.arange(1, 251) ** -0.5), e[:250])
    e = np.sort(e)[::-1]
    fit = fit_pdb(e, 1024)
    assert bool(fit.ok) and int(fit.K) == spike_window(1024, 512) and np.isfinite(float(fit.lambda_plus))


def test_scaled_mode_does_not_widen_the_window_on_tall_noise():
    """Gaussian noise 12800 x 64: K0 fills its window w = 15 in some draws, but fewer than K0 eigenvalues lie above
    the fitted edge, so the fit keeps the reference window: K equals spike_count's K0 in every draw (widening
    them reached K = 26 and 28 with 15 and 17 eigenvalues above the edge)."""
    rng = np.random.default_rng(0)
    lam = eigenvalues(jnp.asarray(rng.standard_normal((8, 12800, 64)), jnp.float32))
    fit, k0 = fit_pdb(lam, 12800), np.asarray(spike_count(lam, 12800))
    assert spike_window(12800, 64) == 15 and np.any(k0 == 15)  # the draws reach the window's edge
    assert np.asarray(fit.K).tolist() == k0.tolist()


def test_spike_count_bad_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        spike_count(np.ones(10), 20, mode="Scaled")


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 4), max_size=1))
def test_eigenvalues_bad_shape_raises(shape):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., a, b\)"):
        eigenvalues(np.ones(shape, np.float32))


@pytest.mark.parametrize("fn", [fit_pdb, spike_count])
def test_scalar_eigs_raises(fn):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., p\)"):
        fn(np.float32(1.0), 10)


@pytest.mark.parametrize("fn", [fit_pdb, spike_count])
def test_empty_spectrum_raises_value_error(fn):
    with pytest.raises(ValueError, match=r"\bp\b|empty|eigenvalue"):
        fn(np.ones((2, 0), np.float32), 5)


def test_a_few_exact_zero_eigenvalues_are_left_out_of_the_fit():
    """One all-zero column (one exact zero eigenvalue, under the screen's 5% rank-deficiency limit): the fit
    describes the other p - 1 eigenvalues, as of the N x (p - 1) matrix left. It used to put a point of its
    grid (0, l_min / 2) on the transform's pole: a two-bulk matrix NOT_CONVERGED, noise an ok row with a NaN
    residual. Tolerances: 0.02 on t and 2% on the variances, the spread of this one draw's fit without the zero."""
    W = np.asarray(simulate(jax.random.PRNGKey(5), 1024, 256, PDB(0.7, 1.0, 4.0), spikes=[80.0, 60.0, 40.0]), np.float64)
    noise = np.random.default_rng(0).standard_normal((1024, 256))
    for A, bulks in ((W, 2), (noise, 1)):
        A = A.copy()
        A[:, 0] = 0.0
        lam = np.maximum(np.linalg.svd(A, compute_uv=False) ** 2, 0.0)
        fit = fit_pdb(lam, 1024)
        assert bool(fit.ok) and int(fit.bulks) == bulks and np.isfinite(float(fit.residual))
        assert float(fit.c) == pytest.approx((255 - int(fit.K)) / 1024)  # p - 1 eigenvalues described
        if bulks == 2:
            assert abs(float(fit.t) - 0.7) < 0.02
            np.testing.assert_allclose([float(fit.sigma1_sq), float(fit.sigma2_sq)], [1.0, 4.0], rtol=0.02)
        else:
            assert float(fit.sigma1_sq) == pytest.approx(1024, rel=0.02)


def test_zeros_are_judged_by_how_the_eigenvalues_were_computed():
    """fit_pdb / fit_pub screen zeros as the eigenvalues' source says. Squared singular values (eigenvalues(W), the
    default "svd") carry errors of eps s_1 s_j, so a noise matrix with a constant offset (lambda_1 / lambda_2 about
    4e4) is fitted, as analyze fits it (a Gram tolerance of 100 eps lambda_1 called its bulk zeros: NO_BULK); a
    rank-deficient matrix is NO_BULK from either source, its Gram eigenvalues with source="gram"."""
    import pdbjax

    rng = np.random.default_rng(0)
    W = (rng.standard_normal((784, 256)) + 20.0).astype(np.float32)
    lam = eigenvalues(W)
    assert float(lam[0] / lam[1]) > 1e4
    row = pdbjax.analyze({"w": W}, baselines=False).rows[0]
    fit = fit_pdb(lam, 784)
    assert pdbjax.reason_text(fit.reason) == row["status"] == "ok" and int(fit.K) == row["K"]
    assert bool(pdbjax.fit_pub(lam, 784).ok)
    low = (rng.standard_normal((300, 60)) @ rng.standard_normal((60, 100))).astype(np.float32)  # rank 60 of 100
    assert int(fit_pdb(eigenvalues(low), 300).reason) == Reason.NO_BULK
    assert int(fit_pdb(eigenvalues(low, solver="gram"), 300, source="gram").reason) == Reason.NO_BULK
    with pytest.raises(ValueError, match="source must be 'svd'"):
        fit_pdb(lam, 784, source="eigh")


def test_float64_numpy_eigenvalues_give_a_fit_jax_holds():
    """NumPy's float64 eigenvalues with JAX's 64-bit mode off: the fit is float32, as every JAX array then is
    (its fields were float64 arrays made inside the local float64 context); under enable_x64 it is float64."""
    lam = np.linalg.svd(np.random.default_rng(1).standard_normal((400, 100)), compute_uv=False) ** 2
    assert fit_pdb(lam, 400).t.dtype == jnp.float32
    with jax.enable_x64(True):
        assert fit_pdb(lam, 400).t.dtype == jnp.float64


def test_fit_pdb_refuses_complex_eigenvalues_and_bad_options():
    """Complex eigenvalues were fitted after NumPy dropped their imaginary part (with a ComplexWarning only); an
    unknown precision ran the 'input' path; a kurtosis of the wrong shape failed with JAX's broadcasting message."""
    lam = np.linspace(3.0, 1.0, 40)
    with pytest.raises(ValueError, match="eigs must be real"):
        fit_pdb(lam.astype(np.complex64), 100)
    with pytest.raises(ValueError, match="precision must be 'float64' or 'input'"):
        fit_pdb(lam, 100, precision="float16")
    with pytest.raises(ValueError, match=r"kurtosis of shape \(3,\) does not broadcast to the batch shape \(2,\)"):
        fit_pdb(np.stack([lam, lam]), 100, kurtosis=np.zeros(3))
    for bad in (np.nan, [0.0, np.inf]):  # a NaN statistic read as "one bulk": an ok fit of the wrong population
        with pytest.raises(ValueError, match="kurtosis must be finite"):
            fit_pdb(np.stack([lam, lam]), 100, kurtosis=bad)


@pytest.mark.parametrize("N, p", [(105, 100), (202, 200), (210, 200), (410, 400)])
def test_near_square_noise_is_not_poor_fit(N, p):
    """Pure float32 Gaussian noise with p just below N is one ok bulk: the (0, l_min / 2) grid segment, which there
    measures the smallest eigenvalues' fluctuation, is left out (it made 7 of 8 draws POOR_FIT at 105 x 100, all 8
    at 202 x 200; benchmarks/results/near_square.md), as it always was at p = N."""
    W = jnp.stack([simulate(jax.random.PRNGKey(s), N, p, PDB(1.0, 1.0, 1.0)) for s in range(6)])
    fit = fit_pdb(eigenvalues(W), N)
    assert np.asarray(fit.ok).all(), [Reason(int(r)).name for r in fit.reason]
    assert (np.asarray(fit.bulks) == 1).all()
    # the MP edge (1 + sqrt(p/N))^2, up to its finite-size fluctuation (~p^(-2/3)): measured at most 5.0% (105 x 100)
    np.testing.assert_allclose(np.asarray(fit.lambda_plus), (1 + np.sqrt(p / N)) ** 2, rtol=0.06)
