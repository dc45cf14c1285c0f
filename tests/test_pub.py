"""Tests for pdbjax.pub: the PUB-BEMA and PUB-Kernel baselines."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate

from pdbjax.fits import Reason
from pdbjax.pub import TW1_QUANTILES, _mp_cdf, _mp_nodes, _mp_quantile, fit_pub
from pdbjax.spectral import PDB, cdf, density

METHODS = ("bema", "kernel")
SIGMA_SQ = 2.5
SPIKES = (40.0, 20.0, 10.0)  # population spikes, supercritical for every shape used here


@functools.lru_cache(maxsize=None)
def _eigs(N: int, p: int, seeds: tuple[int, ...], spikes: tuple[float, ...] = ()) -> np.ndarray:
    """Descending eigenvalues (float64, read-only) of ``W = X Sigma^{1/2}``, one row per seed.

    ``X`` is ``N x p`` i.i.d. ``N(0, 1/N)`` and ``Sigma = diag(spikes, SIGMA_SQ, ...)``: the law of
    :func:`pdbjax.simulate.simulate`, drawn with NumPy to keep JAX compilations for the code under test.
    """
    diag = np.concatenate([spikes, np.full(p - len(spikes), SIGMA_SQ)])
    mats = [np.random.default_rng(s).standard_normal((N, p)) * np.sqrt(diag / N) for s in seeds]
    eigs = np.stack([np.linalg.eigvalsh(w.T @ w)[::-1] for w in mats])
    eigs.flags.writeable = False
    return eigs


def _fit64(eigs: np.ndarray, N: int, method: str, **kw):
    with jax.enable_x64(True):
        fit = fit_pub(jnp.asarray(eigs, jnp.float64), N, method, **kw)
        return jax.tree_util.tree_map(np.asarray, fit)


# --------------------------------------------------------------------------- quantiles


def _mp_cdf_quad(x: float, c: float) -> float:
    """Independent reference: integrate the closed-form Marchenko-Pastur density (sigma^2 = 1)."""
    a, b = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    return integrate.quad(lambda t: math.sqrt(max((b - t) * (t - a), 0.0)) / (2 * math.pi * c * t), a, x, limit=200)[0]


@pytest.mark.parametrize("c", [0.05, 0.25, 0.65, 1.0])
def test_mp_cdf_closed_form_matches_quadrature_and_the_stieltjes_solver(c):
    # quad of the density: ~1e-10 (its default tolerances); spectral.cdf: quadrature of the solved
    # density, O(1/num^2) inside, O(1/num) at the x^{-1/2} edge of c = 1 (~6e-4).
    a, b = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    x = np.linspace(a, b, 41)[1:-1]
    F = _mp_cdf(x, c)
    np.testing.assert_allclose(F, [_mp_cdf_quad(v, c) for v in x], atol=1e-8)
    with jax.enable_x64(True):
        solver = np.asarray(cdf(jnp.asarray(x), PDB.pub(1.0), c))
    np.testing.assert_allclose(F, solver, atol=1e-3 if c == 1.0 else 1e-5)
    assert _mp_cdf(np.array([a - 1e-3, b + 1e-3]), c).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("c", [0.25, 0.65, 1.0])
def test_mp_quantiles_invert_the_marchenko_pastur_cdf(c):
    # The quadrature oracle's own error (~1e-10) bounds the agreement.
    levels = np.array([0.01, 0.2, 0.5, 0.8, 0.99])
    q = _mp_quantile(levels, c)
    np.testing.assert_allclose([_mp_cdf_quad(v, c) for v in q], levels, atol=1e-8)


@pytest.mark.parametrize("c", [0.05, 0.25, 0.65, 1.0])
def test_kernel_model_nodes_are_the_marchenko_pastur_law(c):
    """PUB-Kernel's closed-form weights against the Stieltjes solver's density times ``dy/du`` (normalised),
    and the weighted nodes' cumulative mass against the closed-form distribution function: the mid-point
    rule in ``u`` puts at each node the mass of its cell to ``O(1/n^2)`` (``n = 256``), ~1e-5 here."""
    with jax.enable_x64(True):
        node, mass = (np.asarray(v) for v in _mp_nodes(jnp.asarray(c)))
        u = (np.arange(node.size) + 0.5) * np.pi / node.size
        solver = np.asarray(density(jnp.asarray(node), PDB.pub(1.0), c)) * np.sin(u)
    # the solver's density is smoothed over eta = 1e-8, which moves it next to the edges (relatively, most
    # where the lower edge a is near 0): up to 6e-6 relative at the first nodes, 1e-7 in the middle
    np.testing.assert_allclose(mass, solver / solver.sum(), rtol=1e-5)
    cell_ends = 1 + c - 2 * math.sqrt(c) * np.cos(np.arange(1, node.size + 1) * np.pi / node.size)
    np.testing.assert_allclose(np.cumsum(mass), _mp_cdf(cell_ends, c), atol=3e-5)


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("N, p", [(784, 512), (512, 512), (2000, 500), (1536, 384)])
def test_recovers_sigma_on_pure_marchenko_pastur(N, p):
    eigs = _eigs(N, p, seeds=(0, 1))
    for method in METHODS:
        fit = _fit64(eigs, N, method)
        assert fit.ok.all() and (fit.reason == Reason.OK).all(), method
        np.testing.assert_allclose(fit.sigma_sq, SIGMA_SQ, rtol=0.02, err_msg=method)
        np.testing.assert_allclose(fit.lambda_plus, fit.sigma_sq * (1 + np.sqrt(fit.c)) ** 2, rtol=1e-12)
        # BEMA uses c = p / N; the kernel method the ratio of the bulk below BEMA's threshold, (p - K0) / N.
        removed = p - fit.c * N
        np.testing.assert_allclose(removed, np.round(removed), atol=1e-9)
        assert np.isin(np.round(removed), [0] if method == "bema" else [0, 1, 2]).all(), removed
        # The largest eigenvalue of pure noise sits at the edge, within Tracy-Widom fluctuations.
        np.testing.assert_allclose(eigs[:, 0], fit.lambda_plus, rtol=0.05, err_msg=method)
        assert (fit.K <= 2).all(), (method, fit.K)


def test_recovers_sigma_in_float32():
    eigs = _eigs(784, 512, seeds=(0, 1))
    for method in METHODS:
        fit = fit_pub(jnp.asarray(eigs, jnp.float32), 784, method)
        assert fit.sigma_sq.dtype == jnp.float32
        assert bool(fit.ok.all())
        np.testing.assert_allclose(np.asarray(fit.sigma_sq), SIGMA_SQ, rtol=0.02, err_msg=method)


def test_counts_strong_spikes():
    eigs = _eigs(784, 512, seeds=(0, 1), spikes=SPIKES)
    bema, kernel = _fit64(eigs, 784, "bema"), _fit64(eigs, 784, "kernel")
    np.testing.assert_array_equal(bema.K, len(SPIKES))
    # The kernel threshold is lambda_+ itself (no Tracy-Widom margin): all spikes, at most a bulk edge value more.
    assert ((kernel.K >= len(SPIKES)) & (kernel.K <= len(SPIKES) + 2)).all(), kernel.K
    for fit in (bema, kernel):
        np.testing.assert_allclose(fit.sigma_sq, SIGMA_SQ, rtol=0.02)
    assert (bema.threshold > bema.lambda_plus).all()
    np.testing.assert_array_equal(kernel.threshold, kernel.lambda_plus)


def test_tracy_widom_margin_follows_the_tabulated_quantiles():
    eigs = _eigs(784, 512, seeds=(0, 1))
    fits = {beta: _fit64(eigs, 784, "bema", beta=beta) for beta in TW1_QUANTILES}
    margin = {beta: (f.threshold - f.lambda_plus) / f.sigma_sq for beta, f in fits.items()}
    assert (margin[0.1] > 0).all()
    for beta, q in TW1_QUANTILES.items():
        np.testing.assert_allclose(margin[beta] / margin[0.1], q / TW1_QUANTILES[0.1], rtol=1e-10)
        np.testing.assert_array_equal(fits[beta].sigma_sq, fits[0.1].sigma_sq)


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("method", METHODS)
def test_scale_equivariance(method):
    eigs = _eigs(200, 64, seeds=(3,), spikes=SPIKES[:2])[0]
    factors = np.array([[1e-3, 1e-1, 1.0], [3.0, 1e2, 1e3]])  # W -> a W, eigenvalues -> a^2 lambda
    fit = _fit64(eigs * factors[..., None] ** 2, 200, method)
    assert fit.ok.all()
    np.testing.assert_array_equal(fit.K, fit.K[0, 2])
    assert fit.K[0, 2] >= 2
    for field in ("sigma_sq", "lambda_plus", "threshold"):
        value = getattr(fit, field)
        np.testing.assert_allclose(value / factors**2, value[0, 2], rtol=1e-9, err_msg=field)


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_loop_and_isolates_bad_rows(method):
    eigs = _eigs(200, 64, seeds=tuple(range(6)), spikes=SPIKES[:1]).reshape(2, 3, 64).copy()
    eigs[1, 1, 5] = np.nan
    batched = _fit64(eigs, 200, method)
    assert batched.K.shape == (2, 3) and batched.sigma_sq.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            single = _fit64(eigs[i, j], 200, method)
            for field, value in single._asdict().items():
                got = getattr(batched, field)[i, j]
                np.testing.assert_allclose(got, value, rtol=1e-12, err_msg=f"{field} [{i},{j}]")
    assert batched.reason[1, 1] == Reason.NON_FINITE
    assert batched.ok.sum() == 5


def test_unsorted_input_is_sorted():
    eigs = _eigs(200, 64, seeds=(0,))[0]
    shuffled = np.random.default_rng(0).permutation(eigs)
    for method in METHODS:
        a, b = _fit64(eigs, 200, method), _fit64(shuffled, 200, method)
        for field, value in a._asdict().items():
            np.testing.assert_allclose(getattr(b, field), value, rtol=1e-12, err_msg=field)


# --------------------------------------------------------------------------- degenerate input


_P, _N = 16, 24
_jitted = jax.jit(fit_pub, static_argnames=("N", "estimator"))


def _degenerate_rows() -> tuple[np.ndarray, list[int]]:
    good = _eigs(_N, _P, seeds=(0,))[0]
    index = np.arange(_P)
    rows = [
        (good, Reason.OK),
        (np.where(index == 3, np.nan, good), Reason.NON_FINITE),
        (np.where(index == 0, np.inf, good), Reason.NON_FINITE),
        (np.zeros(_P), Reason.ALL_ZERO),
        (np.where(index < _P // 2, good, 0.0), Reason.NO_BULK),  # rank p / 2: mostly zero
        (np.full(_P, 3.0), Reason.NO_BULK),  # orthogonal matrix: one atom, no bulk
        (np.linspace(3.3e38, 1.5e38, _P), Reason.NOT_CONVERGED),  # threshold overflows float32
    ]
    return np.stack([r for r, _ in rows]).astype(np.float32), [code for _, code in rows]


def _check_consistent(eigs: np.ndarray, fit) -> None:
    """Invariants of any fit: ok rows are finite and count above their threshold, bad rows are NaN."""
    fit = jax.tree_util.tree_map(np.asarray, fit)
    assert fit.K.dtype == np.int32 and fit.reason.dtype == np.int32
    np.testing.assert_array_equal(fit.ok, fit.reason == Reason.OK)
    np.testing.assert_array_equal(fit.reason[~np.isfinite(eigs).all(-1)], Reason.NON_FINITE)
    good, bad = fit.ok, ~fit.ok
    for field in ("sigma_sq", "c", "lambda_plus", "threshold"):
        assert np.isnan(getattr(fit, field)[bad]).all(), field
        assert np.isfinite(getattr(fit, field)[good]).all(), field
    assert (fit.sigma_sq[good] > 0).all() and (fit.threshold[good] >= fit.lambda_plus[good]).all()
    np.testing.assert_array_equal(fit.K[good], np.sum(eigs[good] > fit.threshold[good, None], axis=-1))
    assert (fit.K[bad] == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_rows_eager_and_jit(method):
    eigs, codes = _degenerate_rows()
    for fit in (fit_pub(eigs, _N, method), _jitted(eigs, N=_N, estimator=method)):
        np.testing.assert_array_equal(fit.reason, codes)
        _check_consistent(eigs, fit)


def test_too_small():
    for method in METHODS:
        fit = fit_pub(np.linspace(2.0, 1.0, 5)[None].repeat(2, 0), 20, method)
        np.testing.assert_array_equal(fit.reason, Reason.TOO_SMALL)
        assert not fit.ok.any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(estimator="mean"), "estimator"),
        (dict(beta=0.2), "beta"),
        (dict(alpha=0.5), "alpha"),
        (dict(alpha=0.49), "alpha"),  # p = 9 leaves no rank in (4.41, 4.59)
        (dict(N=8), "N must be"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    args = dict(N=20, estimator="bema") | kwargs
    with pytest.raises(ValueError, match=match):
        fit_pub(np.linspace(2.0, 1.0, 9), **args)


_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1.0, 1e-30, 1e30, 3e38, -1.0]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_values, min_size=_P, max_size=_P), min_size=7, max_size=7), st.sampled_from(METHODS))
def test_arbitrary_input_gives_a_consistent_fit(rows, method):
    eigs = np.array(rows, np.float32)
    _check_consistent(eigs, _jitted(eigs, N=_N, estimator=method))


@pytest.mark.parametrize("N, p", [(1000, 8), (4000, 16), (20000, 16), (20000, 64)])
def test_kernel_on_tall_noise_finds_sigma_sq(N, p):
    """Pure N(0, 1) noise, N / p from 125 to 1250: PUB-Kernel's sigma^2 (of W^T W, so N) within 5% of the
    truth and K at most 1. Its solver used to stop at a bound of its search box, [mean / 4, 4 mean], where
    the model's Gaussians underflow: sigma^2 4x or 1/4 of the truth (K = p), reported ok. 5%: the kernel
    density's bandwidth bias at p = 8-16 (measured at most 2.1% over these draws; BEMA's spread is alike)."""
    W = np.random.default_rng(0).standard_normal((N, p))
    fit = fit_pub(np.linalg.svd(W, compute_uv=False) ** 2, N, "kernel")
    assert bool(fit.ok) and int(fit.K) <= 1
    assert abs(float(fit.sigma_sq) / N - 1) < 0.05


@pytest.mark.parametrize("estimator", ["bema", "kernel"])
def test_empty_batch(estimator):
    """An empty batch gives empty fits, as fit_pdb does (it raised 'not enough values to unpack')."""
    fit = fit_pub(np.zeros((0, 100)), 200, estimator)
    assert fit.K.shape == (0,) and fit.sigma_sq.shape == (0,)
