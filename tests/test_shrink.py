"""Tests of pdbjax.shrink (spec section 11) and of filter_matrix's ``shrink`` option.

Oracles: Gavish & Donoho's closed-form shrinker and the BBP/BGN outlier location for white noise, the
empirical D-transform of a large simulated noise matrix, central finite differences, Monte-Carlo
signal-plus-noise matrices (outlier location ``D(sigma) = 1/theta^2`` and the error of the oracle
shrinker ``w_i = u_i^T S v_i``, the best any shrinker of the observed singular vectors can do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdbjax.filter import filter_matrix, keep_count, shrink_spikes
from pdbjax.fits import PDBFit, PUBFit, Reason
from pdbjax.shrink import d_transform, d_transform_derivative, optimal_shrinker, shrink_optimal
from pdbjax.simulate import simulate
from pdbjax.spectral import PDB, critical_points, edges, lambda_plus

NOISE = PDB(0.5, 1.0, 6.0)  # two-atom noise population of the Monte-Carlo tests (one merged bulk at c = 1/2)
SEPARATED = PDB(0.6, 1.0, 10.0)  # two separated bulks at c = 0.25
N, P = 800, 400  # Monte-Carlo shape, c = 1/2
SEEDS = (0, 1, 2, 3)
THETA_FACTORS = np.array([5.0, 3.0, 2.0, 1.5])  # signal strengths in units of the detection threshold


def gavish_donoho(y: np.ndarray, beta: float) -> np.ndarray:
    """Frobenius-optimal shrinker for white noise with bulk edge ``1 + sqrt(beta)`` (GD 2017), 0 below it."""
    above = y > 1 + np.sqrt(beta)
    return np.where(above, np.sqrt(np.where(above, (y**2 - beta - 1) ** 2 - 4 * beta, 0.0)) / y, 0.0)


@jax.jit
def _support(pop: PDB, c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return edges(pop, c), critical_points(pop, c), lambda_plus(pop, c)


def true_fit(pop: PDB, c: float, dtype=jnp.float32) -> PDBFit:
    """An ok PDBFit of a known population (the fields an exact estimator would return)."""
    pop = PDB(*(jnp.asarray(v, dtype) for v in pop))
    c = jnp.asarray(c, dtype)
    beta, alpha, lam_plus = _support(pop, c)
    return PDBFit(
        K=jnp.int32(0), t=pop.t, sigma1_sq=pop.sigma1_sq, sigma2_sq=pop.sigma2_sq, c=c,
        edges=beta, critical=alpha, lambda_plus=lam_plus,
        residual=jnp.asarray(0.0, dtype), bulks=jnp.int32(2), sphericity=jnp.asarray(jnp.nan, dtype),
        ok=jnp.bool_(True), reason=jnp.int32(Reason.OK),
    )


def bad_fit() -> PDBFit:
    """A failed fit as the estimators return it: NaN fields, ok False, a reason code."""
    nan = jnp.float32(jnp.nan)
    return PDBFit(K=jnp.int32(0), t=nan, sigma1_sq=nan, sigma2_sq=nan, c=nan, edges=jnp.full(4, nan),
                  critical=jnp.full(4, nan), lambda_plus=nan, residual=nan, bulks=jnp.int32(0),
                  sphericity=nan, ok=jnp.bool_(False), reason=jnp.int32(Reason.NOT_CONVERGED))


def stack(fits):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *fits)


# --------------------------------------------------------------------------------------------------
# Closed forms (white noise)


@pytest.mark.parametrize("beta", [0.05, 0.25, 0.5, 1.0])
def test_white_noise_equals_gavish_donoho(beta: float) -> None:
    # Both sides are closed forms of the same function; the only errors are the bisection's (96 steps:
    # machine precision) and rounding amplified near the edge (~ eps / (y - edge)): measured <= 6e-14
    # relative in float64 on this grid, 7e-5 in float32.
    edge = 1 + np.sqrt(beta)
    y = np.concatenate([edge * (1 + np.geomspace(1e-3, 1.0, 30)), [3.0, 10.0, 100.0]])
    with jax.enable_x64(True):
        w = np.asarray(optimal_shrinker(y, PDB.pub(1.0), beta))
        assert w.dtype == np.float64
        np.testing.assert_allclose(w, gavish_donoho(y, beta), rtol=1e-11)
        # Homogeneity: noise variance 4 (edge 2 (1 + sqrt beta)) is the same shrinker at twice the scale.
        np.testing.assert_allclose(np.asarray(optimal_shrinker(2 * y, PDB.pub(4.0), beta)), 2 * w, rtol=1e-11)
    w32 = np.asarray(optimal_shrinker(y.astype(np.float32), PDB.pub(1.0), np.float32(beta)))
    assert w32.dtype == np.float32
    np.testing.assert_allclose(w32, gavish_donoho(y, beta), rtol=3e-4)


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_white_noise_outlier_location(beta: float) -> None:
    # BBP / Benaych-Georges & Nadakuditi: a rank-one signal theta > beta^(1/4) in white noise gives an
    # outlier at sigma^2 = (1 + theta^2)(beta + theta^2) / theta^2, and D(sigma) = 1 / theta^2 there.
    theta = beta**0.25 * np.array([1.1, 1.5, 3.0, 10.0])
    sigma = np.sqrt((1 + theta**2) * (beta + theta**2) / theta**2)
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(d_transform(sigma, PDB.pub(1.0), beta)), theta**-2.0, rtol=1e-11)
        # Gavish & Donoho: the optimal value is theta * cos(u) * cos(v) with the closed-form cosines.
        cos2 = (theta**4 - beta) / (theta**4 + beta * theta**2) * (theta**4 - beta) / (theta**4 + theta**2)
        w = np.asarray(optimal_shrinker(sigma, PDB.pub(1.0), beta))
        np.testing.assert_allclose(w, theta * np.sqrt(cos2), rtol=1e-11)


# --------------------------------------------------------------------------------------------------
# D and D' for two-atom noise


def test_d_transform_matches_empirical_noise() -> None:
    # Independent oracle: the D-transform of the p singular values s_j of one simulated noise matrix,
    # D_n = phi_n (c phi_n + (1 - c) / sigma), phi_n = (1/p) sum sigma / (sigma^2 - s_j^2). Away from
    # the edge its error is O(1/p) (smooth linear statistic of the spectrum): measured <= 0.3% over
    # three seeds per population at N = 1200, p = 600 for sigma >= 1.2 sqrt(lambda_+); tolerance 1%.
    n, p = 1200, 600
    for pop in (NOISE, SEPARATED):
        c = p / n
        with jax.enable_x64(True):
            Z = np.asarray(simulate(jax.random.PRNGKey(5), n, p, pop))
            sigma = np.sqrt(float(lambda_plus(pop, c))) * np.array([1.2, 1.5, 2.0, 4.0])
            d = np.asarray(d_transform(sigma, pop, c))
        s2 = np.linalg.svd(Z, compute_uv=False) ** 2
        phi = np.mean(sigma[:, None] / (sigma[:, None] ** 2 - s2), axis=-1)
        np.testing.assert_allclose(d, phi * (c * phi + (1 - c) / sigma), rtol=1e-2)


@pytest.mark.parametrize("pop, c", [(NOISE, 0.5), (SEPARATED, 0.25), (PDB(0.9, 1.0, 20.0), 0.1), (PDB.pub(2.0), 1.0)])
def test_d_derivative_matches_finite_differences(pop: PDB, c: float) -> None:
    # Central differences in float64 with h = 1e-5 sigma: truncation O(h^2 D''') plus rounding
    # O(eps / h) gives ~1e-10 relative away from the edge (it grows like (sigma - edge)^(-3/2) next to
    # it; 1.01 x edge is the closest point here); tolerance 1e-6.
    with jax.enable_x64(True):
        sigma = np.sqrt(float(lambda_plus(pop, c))) * np.array([1.01, 1.1, 1.5, 3.0, 10.0])
        h = 1e-5 * sigma
        fd = (np.asarray(d_transform(sigma + h, pop, c)) - np.asarray(d_transform(sigma - h, pop, c))) / (2 * h)
        dd = np.asarray(d_transform_derivative(sigma, pop, c))
        np.testing.assert_allclose(dd, fd, rtol=1e-6)
        assert np.all(dd < 0)
        # Reverse mode through the same implicit derivative, under jit.
        grad = jax.jit(jax.vmap(jax.grad(lambda x: d_transform(x, pop, c))))(jnp.asarray(sigma))
        np.testing.assert_allclose(np.asarray(grad), dd, rtol=1e-12)


def test_below_edge_invalid_and_batched() -> None:
    c = 0.25
    with jax.enable_x64(True):
        edge = np.sqrt(float(lambda_plus(SEPARATED, c)))
        sigma = np.array([0.0, 0.5 * edge, edge, edge * (1 + 1e-12), 1.5 * edge, np.nan])
        w = np.asarray(optimal_shrinker(sigma, SEPARATED, c))
        # At and below the edge: 0 (the limit of w at the edge), also within rounding of the edge.
        np.testing.assert_array_equal(w[:3], 0.0)
        assert 0.0 <= w[3] < 1e-4 * edge and w[4] > 0 and np.isnan(w[5])
        assert np.all(np.isnan(np.asarray(d_transform(sigma[:3], SEPARATED, c))))
        assert np.all(np.isnan(np.asarray(d_transform_derivative(sigma[:3], SEPARATED, c))))
        # Shrinking: 0 < w(sigma) < sigma above the edge, increasing, w(sigma) / sigma -> 1.
        grid = edge * np.linspace(1.001, 20, 400)
        wg = np.asarray(optimal_shrinker(grid, SEPARATED, c))
        assert np.all((wg > 0) & (wg < grid)) and np.all(np.diff(wg) > 0) and wg[-1] / grid[-1] > 0.99
        # Concrete invalid populations raise, as in pdbjax.spectral; under jit they give NaN.
        with pytest.raises(ValueError, match="sigma1_sq"):
            optimal_shrinker(sigma, PDB(0.5, -1.0, 2.0), c)
        out = jax.jit(optimal_shrinker)(jnp.asarray(grid[:3]), PDB(0.5, jnp.nan, 2.0), c)
        assert np.all(np.isnan(np.asarray(out)))
        # Populations broadcast against sigma and vmap gives the same numbers.
        pops = PDB(jnp.array([[0.5], [0.6]]), jnp.array([[1.0], [1.0]]), jnp.array([[6.0], [10.0]]))
        both = np.asarray(optimal_shrinker(grid[:5], pops, c))
        mapped = jax.vmap(lambda t, a, b: optimal_shrinker(grid[:5], PDB(t, a, b), c))(*(v[:, 0] for v in pops))
        np.testing.assert_allclose(both, np.asarray(mapped), rtol=1e-13)
        np.testing.assert_allclose(both[1], wg[:5], rtol=1e-13)


def test_shrink_optimal_fits_and_not_ok_rows() -> None:
    beta = 0.5
    edge = 2 * (1 + np.sqrt(beta))  # PUB fit with sigma_sq = 4
    s = (edge * np.array([3.0, 1.5, 1.01, 0.9, 0.5, 0.1])).astype(np.float32)
    pub = PUBFit(K=jnp.int32(3), sigma_sq=jnp.float32(4.0), c=jnp.float32(beta),
                 lambda_plus=jnp.float32(edge**2), threshold=jnp.float32(edge**2),
                 ok=jnp.bool_(True), reason=jnp.int32(Reason.OK))
    # float32: GD closed form at 3e-4 (see test_white_noise_equals_gavish_donoho).
    np.testing.assert_allclose(np.asarray(shrink_optimal(s, pub)), 2 * gavish_donoho(s / 2, beta), rtol=3e-4, atol=1e-6)
    # A batch with a failed fit: that row is returned unchanged (as shrink_spikes leaves it).
    fits = stack([true_fit(SEPARATED, 0.25), bad_fit()])
    edge2 = float(np.sqrt(fits.lambda_plus[0]))
    rows = np.stack([s, s]) * np.float32(edge2 / edge)
    out = np.asarray(shrink_optimal(rows, fits))
    np.testing.assert_array_equal(out[1], rows[1])
    np.testing.assert_allclose(out[0], np.asarray(optimal_shrinker(rows[0], SEPARATED, np.float32(0.25))), rtol=1e-6)
    assert out.dtype == np.float32
    assert np.sum(out[0] > 0) == int(keep_count(rows[0] ** 2, true_fit(SEPARATED, 0.25), "spikes")) == 3


# --------------------------------------------------------------------------------------------------
# Signal plus two-bulk noise (Monte Carlo)


@pytest.fixture(scope="module")
def signal_plus_noise() -> list[dict]:
    """``W = S + Z`` for four seeds: ``Z`` PDB noise (``NOISE``, c = 1/2), ``S`` rank 4 with Haar vectors."""
    c = P / N
    with jax.enable_x64(True):
        edge = np.sqrt(float(lambda_plus(NOISE, c)))
        theta_c = float(d_transform(edge * (1 + 1e-9), NOISE, c)) ** -0.5  # detection threshold
    thetas = theta_c * THETA_FACTORS
    cases = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        with jax.enable_x64(True):
            Z = np.asarray(simulate(jax.random.PRNGKey(seed), N, P, NOISE))
        U = np.linalg.qr(rng.standard_normal((N, 4)))[0]
        V = np.linalg.qr(rng.standard_normal((P, 4)))[0]
        S = (U * thetas) @ V.T
        u, s, vt = np.linalg.svd(S + Z, full_matrices=False)
        cases.append(dict(S=S, W=S + Z, u=u, s=s, vt=vt, thetas=thetas))
    return cases


def test_outliers_satisfy_d_equals_inverse_theta_squared(signal_plus_noise) -> None:
    # D(sigma_i) theta_i^2 -> 1 (Benaych-Georges & Nadakuditi 2012, Theorem 2.8). Its per-seed standard
    # deviation at N = 800, p = 400, measured over 12 seeds, is (0.016, 0.027, 0.031, 0.050) for
    # theta = (5, 3, 2, 1.5) theta_c (the mean over those seeds was within 0.5% of 1); the tolerance
    # is 4 standard errors of the mean over the 4 seeds here.
    sd = np.array([0.016, 0.027, 0.031, 0.050])
    with jax.enable_x64(True):
        ratio = [np.asarray(d_transform(case["s"][:4], NOISE, P / N)) * case["thetas"] ** 2
                 for case in signal_plus_noise]
    np.testing.assert_array_less(np.abs(np.mean(ratio, axis=0) - 1), 4 * sd / np.sqrt(len(SEEDS)))


def relative_error(case: dict, values: np.ndarray) -> float:
    return float(np.linalg.norm((case["u"] * values) @ case["vt"] - case["S"]) / np.linalg.norm(case["S"]))


def test_optimal_beats_truncation_and_spike_shrinkage(signal_plus_noise) -> None:
    # Measured means over 12 seeds: truncation 0.418, Algorithm 2's sqrt(alpha) 0.401, optimal 0.361,
    # oracle 0.361 (optimal within 0.2% of the oracle in every seed). The oracle w_i = u_i^T S v_i on
    # the kept components is the least error of any shrinker supported there, so it bounds from below.
    errors = []
    with jax.enable_x64(True):
        fit = true_fit(NOISE, P / N, jnp.float64)
        for case in signal_plus_noise:
            s, u, vt, S = case["s"], case["u"], case["vt"], case["S"]
            keep = s**2 > float(fit.lambda_plus)
            assert keep.sum() == 4  # every signal is detectable, no noise value crosses the edge
            spikes = np.where(keep, np.sqrt(np.asarray(shrink_spikes(s**2, fit))), 0.0)
            optimal = np.asarray(shrink_optimal(s, fit))
            oracle = np.where(keep, np.einsum("ij,ik,kj->j", u, S, vt.T), 0.0)
            errors.append([relative_error(case, v) for v in (np.where(keep, s, 0.0), spikes, optimal, oracle)])
    trunc, spikes, optimal, oracle = np.mean(errors, axis=0)
    assert optimal < spikes - 0.02 and spikes < trunc
    assert oracle <= optimal <= 1.01 * oracle


# --------------------------------------------------------------------------------------------------
# filter_matrix(shrink=...)


def test_filter_optimal_lowers_error(signal_plus_noise) -> None:
    # float32 filter with the true noise population (c = p / N): the same ordering as above, and the
    # kept singular values are shrink_optimal's (relative 1e-4: float32 SVD of the rebuilt matrix).
    fit = true_fit(NOISE, P / N)
    for case in signal_plus_noise[:2]:
        W = case["W"].astype(np.float32)
        W_opt, info = filter_matrix(W, "pdb", "spikes", fit=fit, shrink="optimal")
        W_spk, info_spk = filter_matrix(W, "pdb", "spikes", fit=fit)
        W_svd, _ = filter_matrix(W, "svd", "spikes", fit=fit)
        err = [np.linalg.norm(np.asarray(x, np.float64) - case["S"]) for x in (W_opt, W_spk, W_svd)]
        assert err[0] < 0.95 * err[1] < err[2]
        assert int(info.keep) == int(info_spk.keep) == int(info.n_outliers) == 4
        s_new = np.linalg.svd(np.asarray(W_opt, np.float64), compute_uv=False)
        want = np.asarray(shrink_optimal(case["s"].astype(np.float32), fit))
        np.testing.assert_allclose(s_new[:4], want[:4], rtol=1e-4)
        assert s_new[4] < 1e-5 * s_new[0]


def test_filter_shrink_options_agree(signal_plus_noise) -> None:
    W = signal_plus_noise[0]["W"].astype(np.float32)
    fit = true_fit(NOISE, P / N)
    # None is each method's current default, bitwise.
    default, _ = filter_matrix(W, "pdb", "upper-bulk", fit=fit)
    spikes, _ = filter_matrix(W, "pdb", "upper-bulk", fit=fit, shrink="spikes")
    np.testing.assert_array_equal(np.asarray(default), np.asarray(spikes))
    # "none" for pdb is the svd baseline at the same keep count; "optimal" for svd with the rule's fit
    # is pdb's "optimal"; an int rank on top of the optimal shrinker keeps the same matrix (the
    # shrinker already zeroes everything below the edge).
    none, info_none = filter_matrix(W, "pdb", "upper-bulk", fit=fit, shrink="none")
    svd, _ = filter_matrix(W, "svd", "upper-bulk", fit=fit)
    np.testing.assert_array_equal(np.asarray(none), np.asarray(svd))
    assert int(info_none.n_outliers) == 0
    opt_pdb, _ = filter_matrix(W, "pdb", "spikes", fit=fit, shrink="optimal")
    opt_svd, _ = filter_matrix(W, "svd", "spikes", fit=fit, shrink="optimal")
    opt_int, _ = filter_matrix(W, "svd", 50, fit=fit, shrink="optimal")
    np.testing.assert_array_equal(np.asarray(opt_pdb), np.asarray(opt_svd))
    np.testing.assert_allclose(np.asarray(opt_int), np.asarray(opt_pdb), atol=1e-6 * np.abs(W).max())
    # Scale invariance of the normalised path: 2^10 W is filtered identically.
    scaled, _ = filter_matrix(W * 1024, "pdb", "spikes", fit=fit.rescale(1024.0**2), shrink="optimal")
    np.testing.assert_array_equal(np.asarray(scaled), np.asarray(opt_pdb) * 1024)


def test_optimal_shrinkage_keeps_only_the_nonzero_components(signal_plus_noise) -> None:
    """Under "optimal" everything at or below the edge becomes 0: keep (and the factors' width) is the count above
    lambda_+, not the rule's 0.3 p columns of zeros; the product is the dense output."""
    W = signal_plus_noise[0]["W"].astype(np.float32)
    fit = true_fit(NOISE, P / N)
    dense, info = filter_matrix(W, "pdb", "upper-bulk", fit=fit, shrink="optimal")
    (A, B), finfo = filter_matrix(W, "pdb", "upper-bulk", fit=fit, shrink="optimal", factored=True)
    above = int(keep_count(np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2, fit, "spikes"))
    assert int(info.keep) == int(finfo.keep) == int(info.n_outliers) == above < int(keep_count(
        np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2, fit, "upper-bulk"))
    assert int(finfo.params_after) == above * sum(W.shape)
    k = int(finfo.keep)
    np.testing.assert_allclose(np.asarray(A)[:, :k] @ np.asarray(B)[:k], np.asarray(dense), atol=1e-5 * np.abs(W).max())
    np.testing.assert_array_equal(np.asarray(A)[:, k:], 0.0)


def test_filter_shrink_argument_checks(signal_plus_noise) -> None:
    W = signal_plus_noise[0]["W"].astype(np.float32)
    with pytest.raises(ValueError, match="shrink must be one of"):
        filter_matrix(W, "pdb", "spikes", fit=true_fit(NOISE, P / N), shrink="optimum")
    for method, rank in (("svd", 10), ("slr", 0.5)):
        with pytest.raises(ValueError, match="needs a fit"):
            filter_matrix(W, method, rank, shrink="optimal")
    W_new, info = filter_matrix(W, "svd", 10, fit=true_fit(NOISE, P / N), shrink="optimal")
    assert bool(info.ok) and int(info.keep) == int(info.n_outliers) == 4  # rank 10: 4 above the edge are non-zero


def test_filter_optimal_not_ok_fit_leaves_weight_unchanged(signal_plus_noise) -> None:
    W = np.stack([case["W"] for case in signal_plus_noise[:2]]).astype(np.float32)
    fits = stack([true_fit(NOISE, P / N), bad_fit()])
    out, info = filter_matrix(W, "pdb", "spikes", fit=fits, shrink="optimal")
    np.testing.assert_array_equal(np.asarray(out[1]), W[1])
    assert np.asarray(info.ok).tolist() == [True, False]
    assert np.asarray(info.n_outliers).tolist() == [4, 0] and int(info.keep[1]) == P
    assert int(info.reason[1]) == Reason.NOT_CONVERGED and float(info.rel_change[1]) == 0.0
    one, _ = filter_matrix(W[0], "pdb", "spikes", fit=true_fit(NOISE, P / N), shrink="optimal")
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(one), atol=1e-6 * np.abs(W[0]).max())
    (A, B), finfo = filter_matrix(W, "pdb", "spikes", fit=fits, shrink="optimal", factored=True)
    np.testing.assert_allclose(np.asarray(A[1] @ B[1]), W[1], atol=1e-5 * np.abs(W[1]).max())
    np.testing.assert_allclose(np.asarray(A[0] @ B[0]), np.asarray(one), atol=1e-5 * np.abs(W[0]).max())
    # A non-finite matrix is left as it is, for every shrink option.
    bad = W[0].copy()
    bad[0, 0] = np.nan
    kept, binfo = filter_matrix(bad, "pdb", "spikes", fit=true_fit(NOISE, P / N), shrink="optimal")
    np.testing.assert_array_equal(np.asarray(kept), bad)
    assert int(binfo.reason) == Reason.NON_FINITE


def test_filter_optimal_with_estimated_fits(signal_plus_noise) -> None:
    # End to end with PDBLS (fit_pdb) estimating the noise from W itself, float32. Measured over 5
    # seeds at N = 1000, p = 500 (README): truncation 0.423, Algorithm 2 0.406, optimal 0.364.
    case = signal_plus_noise[0]
    W = case["W"].astype(np.float32)
    errors = {}
    for shrink in ("none", "spikes", "optimal"):
        out, info = filter_matrix(W, "pdb", "spikes", shrink=shrink)
        assert bool(info.ok) and int(info.keep) >= 4  # the four signals (a noise value may cross the fitted edge)
        errors[shrink] = np.linalg.norm(np.asarray(out, np.float64) - case["S"]) / np.linalg.norm(case["S"])
    assert errors["optimal"] < errors["spikes"] - 0.02 and errors["spikes"] < errors["none"]


def test_half_precision_and_far_above_the_edge() -> None:
    """float16 singular values and population are computed in float32 and returned in float16 (in float16 the
    squares of the D-transform overflowed from sigma = 20 and w came out 0); far above the edge, where D' cancels
    below rounding, w = sigma (float32 gave 0 from sigma ~ 3e9 edges), and w(inf) = inf."""
    beta = 0.5
    y = np.array([1.8, 3.0, 16.0, 20.0, 50.0, 100.0])
    half = PDB(np.float16(1.0), np.float16(1.0), np.float16(1.0))
    w16 = optimal_shrinker(y.astype(np.float16), half, np.float16(beta))
    assert w16.dtype == np.float16
    # float16 rounds y and then w (eps 9.8e-4 each); y is exact here, so one rounding of w, with margin
    np.testing.assert_allclose(np.asarray(w16, np.float64), gavish_donoho(y, beta), rtol=2e-3)
    assert d_transform_derivative(y.astype(np.float16), half, np.float16(beta)).dtype == np.float16
    far = (1 + np.sqrt(beta)) * np.array([1e4, 1e8, 3e9, 1e10, 1e30])
    w32 = np.asarray(optimal_shrinker(far.astype(np.float32), PDB.pub(1.0), np.float32(beta)))
    # gavish_donoho(y) = y (1 - O(1/y^2)); errors: float32's rounding of y (<= 3.6e-8) and, where -2 D / D' is still
    # used, the cancellation in D' (measured <= 3.2e-7, at 1e8 edges): 1e-6 leaves a margin of 3
    np.testing.assert_allclose(w32, gavish_donoho(far, beta), rtol=1e-6)
    assert np.asarray(optimal_shrinker(np.float32(np.inf), PDB.pub(1.0), np.float32(beta))) == np.inf
