"""Tests of pdbjax.filter: Algorithm 2 (outliers, spike shrinkage, truncation) and the SVD baselines.

Fits are built by hand from known populations with pdbjax.spectral, so these tests do not depend on
the estimators; the integration tests at the end check that filter_matrix calls them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pdbjax
import pdbjax.filter as filter_module
from pdbjax.filter import FilterInfo, filter_matrix, fit_spectrum, keep_count, outlier_mask, shrink_spikes, svd
from pdbjax.fits import PDBFit, PUBFit, Reason
from pdbjax.linalg import spectrum
from pdbjax.pub import fit_pub
from pdbjax.simulate import simulate
from pdbjax.spectral import PDB, critical_points, edges, lambda_plus

SEPARATED = PDB(0.6, 1.0, 10.0)  # two separated bulks at c = 0.25 (four finite edges)
MERGED = PDB(0.5, 1.0, 2.0)  # one merged bulk at c = 0.5 (two finite edges)


@jax.jit
def _support(pop: PDB, c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return edges(pop, c), critical_points(pop, c), lambda_plus(pop, c)


def pdb_fit(pop: PDB, c: float, K: int = 0) -> PDBFit:
    """An ok PDBFit of a known population (the fields an exact estimator would return)."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    pop = PDB(*(f32(v) for v in pop))
    beta, alpha, lam_plus = _support(pop, f32(c))
    return PDBFit(
        K=jnp.int32(K), t=pop.t, sigma1_sq=pop.sigma1_sq, sigma2_sq=pop.sigma2_sq, c=f32(c),
        edges=beta, critical=alpha, lambda_plus=lam_plus,
        residual=f32(0.0), bulks=jnp.int32(1 if float(pop.t) == 1.0 else 2), sphericity=f32(jnp.nan),
        ok=jnp.bool_(True), reason=jnp.int32(Reason.OK),
    )


def bad_pdb_fit(reason: int = Reason.NOT_CONVERGED) -> PDBFit:
    """A failed fit as the estimators return it: NaN fields, ok False, a reason code."""
    nan = jnp.float32(jnp.nan)
    return PDBFit(K=jnp.int32(0), t=nan, sigma1_sq=nan, sigma2_sq=nan, c=nan, edges=jnp.full(4, nan),
                  critical=jnp.full(4, nan), lambda_plus=nan, residual=nan, bulks=jnp.int32(0),
                  sphericity=nan, ok=jnp.bool_(False), reason=jnp.int32(reason))


def pub_fit(sigma_sq: float, c: float, lam_plus: float | None = None) -> PUBFit:
    lp = sigma_sq * (1 + np.sqrt(c)) ** 2 if lam_plus is None else lam_plus
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return PUBFit(K=jnp.int32(0), sigma_sq=f32(sigma_sq), c=f32(c), lambda_plus=f32(lp), threshold=f32(lp),
                  ok=jnp.bool_(True), reason=jnp.int32(Reason.OK))


def stack(fits):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *fits)


def sample_eigs(W) -> np.ndarray:
    """Descending eigenvalues of W^T W, computed independently of pdbjax (NumPy, float64)."""
    W = np.asarray(W, np.float64)
    return np.linalg.eigvalsh(W.T @ W)[::-1]


def synthetic_spectrum(pop: PDB, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues placed relative to the four edges of separated bulks, and which are outliers.

    2 above lambda_+, 6 in the upper bulk, 3 in the gap (the lowest one just above beta_2), 9 in the
    lower bulk or below it: p = 20.
    """
    b1, b2, b3, b4 = np.asarray(pdb_fit(pop, c).edges, np.float64)
    above = [1.5 * b4, 1.01 * b4]
    upper = list(np.linspace(0.999 * b4, 1.001 * b3, 6))
    gap = [0.99 * b3, 0.5 * (b2 + b3), 1.01 * b2]
    lower = list(np.linspace(0.99 * b2, 1.01 * b1, 8)) + [0.5 * b1]  # the last one is below the bulk
    lam = np.array(above + upper + gap + lower, np.float32)
    expected = np.array([True] * 2 + [False] * 6 + [True] * 3 + [False] * 9)
    return lam, expected


# --------------------------------------------------------------------------------------------------
# SVD convention


def test_svd_convention_any_orientation_and_dtype() -> None:
    W = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    U, s, Vh = svd(W)
    assert (U.shape, s.shape, Vh.shape) == ((7, 5), (5,), (5, 5))
    np.testing.assert_allclose(np.asarray(U * s @ Vh), W, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s) ** 2, sample_eigs(W), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(svd(W.T)[1]), np.asarray(s), rtol=1e-6)
    assert svd(jnp.asarray(W, jnp.bfloat16))[1].dtype == jnp.float32
    with jax.enable_x64(True):
        assert svd(W)[1].dtype == jnp.float64


# --------------------------------------------------------------------------------------------------
# Step 1: outliers


def test_outlier_mask_edges_gap_and_off_by_one() -> None:
    lam, expected = synthetic_spectrum(SEPARATED, 0.25)
    np.testing.assert_array_equal(np.asarray(outlier_mask(lam, pdb_fit(SEPARATED, 0.25))), expected)
    # A single bulk (PUB, or a merged PDB) has no gap: only lambda > lambda_+ counts.
    lp = float(pdb_fit(SEPARATED, 0.25).lambda_plus)
    pub = pub_fit(lp / (1 + 0.5) ** 2, 0.25)  # same lambda_+
    np.testing.assert_array_equal(np.asarray(outlier_mask(lam, pub)), lam > lp)
    merged = pdb_fit(MERGED, 0.5)
    lam_m = np.float32(merged.lambda_plus) * np.array([1.2, 1.001, 0.999, 0.5, 0.1], np.float32)
    np.testing.assert_array_equal(np.asarray(outlier_mask(lam_m, merged)), [True, True, False, False, False])
    assert not np.asarray(outlier_mask(lam, bad_pdb_fit())).any()


@pytest.fixture(scope="module")
def spiked() -> dict:
    """One PDB matrix, N = 8000, p = 600, with a spike above lambda_+ and one in the gap."""
    pop, N, p, spikes = PDB(0.5, 1.0, 10.0), 8000, 600, np.array([14.0, 6.0])
    W = simulate(jax.random.PRNGKey(0), N, p, pop, spikes)
    c = (p - len(spikes)) / N
    fit = pdb_fit(pop, c, K=len(spikes))
    assert np.isfinite(np.asarray(fit.edges)).all(), "fixture must have two separated bulks"
    # Sorted sample eigenvalues: the spike above, the 299 eigenvalues of the sigma^2 = 10 bulk
    # (p - K - round(t (p - K)) = 598 - 299), the gap spike, the sigma^2 = 1 bulk.
    gap_index = 1 + (p - len(spikes)) - round(0.5 * (p - len(spikes)))
    return dict(lam=sample_eigs(W).astype(np.float32), fit=fit, spikes=spikes, index=np.array([0, gap_index]))


def test_outlier_mask_finds_simulated_spikes(spiked) -> None:
    # The bulk eigenvalue next to the gap on either side can fluctuate across its edge on the
    # Tracy-Widom scale (7 of seeds 0-19, all within 1.2% of the edge) and is then, correctly, in the
    # gap: allow exactly those.
    lam, fit, (top, gap) = spiked["lam"], spiked["fit"], spiked["index"]
    flagged = set(np.flatnonzero(np.asarray(outlier_mask(lam, fit))).tolist())
    assert {top, gap} <= flagged <= {top, gap - 1, gap, gap + 1}
    beta = np.asarray(fit.edges)
    for i in flagged - {top, gap}:
        assert np.min(np.abs(lam[i] / beta - 1)) < 0.02, (i, lam[i], beta)


def test_shrink_spikes_recovers_population_spikes(spiked) -> None:
    # Over seeds 0-19 the shrunk spikes were within 4.1% (raw sample outliers: 6.4% to 12.9% off).
    lam, fit, spikes, index = spiked["lam"], spiked["fit"], spiked["spikes"], spiked["index"]
    mask = np.asarray(outlier_mask(lam, fit))
    shrunk = np.asarray(shrink_spikes(lam, fit))
    assert shrunk.dtype == lam.dtype
    raw_error = np.abs(lam[index] / spikes - 1)
    error = np.abs(shrunk[index] / spikes - 1)
    assert (raw_error > 0.05).all(), raw_error  # the sample outliers are biased: the test can fail
    assert (error < 0.05).all(), error
    np.testing.assert_array_equal(shrunk[~mask], lam[~mask])  # bulk untouched


def test_shrink_pub_matches_closed_form() -> None:
    sigma_sq, c = 2.0, 0.3
    lam = np.array([30.0, 6.0, 4.0, 1.0], np.float32)  # lambda_+ = 2 (1 + sqrt 0.3)^2 = 4.79
    out = lam[:2].astype(np.float64)  # the two outliers
    shifted = out + sigma_sq * (1 - c)
    expected_alpha = (shifted + np.sqrt(shifted**2 - 4 * out * sigma_sq)) / 2
    shrunk = np.asarray(shrink_spikes(lam, pub_fit(sigma_sq, c)))
    np.testing.assert_allclose(shrunk[:2], expected_alpha, rtol=1e-5)
    np.testing.assert_array_equal(shrunk[2:], lam[2:])


def test_shrink_outlier_at_rounding_distance_from_edge() -> None:
    # A fit whose boundaries sit a hair inside the population's support: an eigenvalue in between is
    # an outlier for the mask but inside the support for the spike map; it gets the edge limit.
    sigma_sq, c = 1.0, 0.25
    edge = sigma_sq * (1 + np.sqrt(c)) ** 2
    fit = pub_fit(sigma_sq, c, lam_plus=edge * (1 - 1e-4))
    shrunk = np.asarray(shrink_spikes(np.array([edge * (1 - 5e-5), 0.5], np.float32), fit))
    np.testing.assert_allclose(shrunk, [sigma_sq * (1 + np.sqrt(c)), 0.5], rtol=1e-3)
    exact = pdb_fit(SEPARATED, 0.25)
    b1, b2, b3, b4 = np.asarray(exact.edges)
    a1, a2, a3, a4 = np.asarray(exact.critical)
    nudged = exact._replace(edges=jnp.asarray([b1, b2 * (1 - 1e-4), b3 * (1 + 1e-4), b4 * (1 - 1e-4)]),
                            lambda_plus=jnp.float32(b4 * (1 - 1e-4)))
    lam = np.array([b4 * (1 - 5e-5), b3 * (1 + 5e-5), b2 * (1 - 5e-5), 0.5 * (b2 + b3)], np.float32)
    assert np.asarray(outlier_mask(lam, nudged)).all()
    shrunk = np.asarray(shrink_spikes(lam, nudged))
    np.testing.assert_allclose(shrunk[:3], [a4, a3, a2], rtol=1e-3)
    assert a2 < shrunk[3] < a3


# --------------------------------------------------------------------------------------------------
# Keep counts


def test_keep_count_rules() -> None:
    lam, outliers = synthetic_spectrum(SEPARATED, 0.25)  # p = 20, 2 above lambda_+, 3 in the gap
    fit = pdb_fit(SEPARATED, 0.25)
    count = lambda rule, f=fit: int(keep_count(lam, f, rule))  # noqa: E731
    assert keep_count(lam, fit, 3).dtype == jnp.int32
    assert count(3) == 3 and count(50) == 20 and count(0) == 0
    assert count(0.2) == 16 and count(0.33) == 13 and count(1.0) == 0 and count(0.0) == 20
    assert count("spikes") == 2
    # K = 5 outliers; the sigma^2 = 10 component owns 1 - t = 0.4 of the bulk: 5 + 0.4 * 15.
    assert outliers.sum() == 5 and count("upper-bulk") == 5 + 6
    relabelled = pdb_fit(PDB(0.4, 10.0, 1.0), 0.25)  # same population, larger variance first
    assert count("upper-bulk", relabelled) == 11
    pub = pub_fit(1.0, 0.25, lam_plus=float(fit.lambda_plus))
    assert count("upper-bulk", pub) == count("spikes", pub) == 2
    one_bulk = pdb_fit(PDB(0.7, 2.0, 2.0), 0.25)
    assert count("upper-bulk", one_bulk) == count("spikes", one_bulk)
    assert count("spikes", bad_pdb_fit()) == count("upper-bulk", bad_pdb_fit()) == 20
    # One fit broadcasts over a batch of spectra.
    two = np.stack([lam, lam * np.float32(1.5)])
    expected = [11, int(keep_count(two[1], fit, "upper-bulk"))]
    np.testing.assert_array_equal(np.asarray(keep_count(two, fit, "upper-bulk")), expected)
    np.testing.assert_array_equal(np.asarray(outlier_mask(two, fit))[0], outliers)


@pytest.mark.parametrize("bad", [-1, 1.5, -0.1, "noise", True, None])
def test_keep_count_rejects_bad_rules(bad) -> None:
    with pytest.raises((ValueError, TypeError)):
        keep_count(np.ones(4, np.float32), None, bad)


def test_rule_without_fit_raises() -> None:
    with pytest.raises(ValueError, match="needs a fit"):
        keep_count(np.ones(4, np.float32), None, "spikes")


# --------------------------------------------------------------------------------------------------
# filter_matrix: baselines


@pytest.fixture(scope="module")
def dense() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(40, 30)).astype(np.float32)


def numpy_truncation(W: np.ndarray, k: int) -> np.ndarray:
    U, s, Vh = np.linalg.svd(np.asarray(W, np.float64), full_matrices=False)
    return (U[:, :k] * s[:k]) @ Vh[:k]


def test_svd_method_equals_numpy_truncation(dense) -> None:
    expected = numpy_truncation(dense, 7)
    W_new, info = filter_matrix(dense, "svd", 7)
    assert W_new.dtype == jnp.float32 and W_new.shape == dense.shape
    np.testing.assert_allclose(np.asarray(W_new), expected, atol=2e-5)
    rel = np.linalg.norm(expected - dense) / np.linalg.norm(dense)
    np.testing.assert_allclose(float(info.rel_change), rel, rtol=1e-4)
    counts = (info.keep, info.n_outliers, info.params_before, info.params_after)
    assert tuple(int(x) for x in counts) == (7, 0, 1200, 1200)
    assert bool(info.ok) and int(info.reason) == Reason.OK
    (A, B), finfo = filter_matrix(dense, "svd", 7, factored=True)
    assert A.shape == (40, 30) and B.shape == (30, 30)
    assert not np.asarray(A[:, 7:]).any() and not np.asarray(B[7:]).any()
    np.testing.assert_allclose(np.asarray(A[:, :7] @ B[:7]), expected, atol=2e-5)
    assert int(finfo.params_after) == 7 * (40 + 30)
    # A removed fraction: keep round((1 - 0.6) * 30) = 12.
    with jax.enable_x64(True):  # float64 computation, float32 result
        W64, _ = filter_matrix(dense, "svd", 7)
        assert W64.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(W64), expected, atol=1e-6)
    W_frac, info_frac = filter_matrix(dense, "svd", 0.6)
    assert int(info_frac.keep) == 12
    np.testing.assert_allclose(np.asarray(W_frac), numpy_truncation(dense, 12), atol=2e-5)


@pytest.mark.parametrize("rank", [30, 0.0])
def test_keeping_everything_rebuilds_the_matrix(dense, rank) -> None:
    W_new, info = filter_matrix(dense, "svd", rank)
    assert int(info.keep) == 30
    assert float(info.rel_change) < 1e-5
    np.testing.assert_allclose(np.asarray(W_new), dense, atol=1e-5)


def test_slr_sparsity_pattern_and_parameter_count(dense) -> None:
    a, b, k = 40, 30, 10
    (A, B), info = filter_matrix(dense, "slr", k, factored=True, slr_sr=0.5, slr_rr=0.5)
    A, B = np.asarray(A), np.asarray(B)
    U, _, Vh = np.linalg.svd(np.asarray(dense, np.float64), full_matrices=False)
    weak_rows = set(np.argsort(np.linalg.norm(U[:, :k], axis=1))[: a // 2])
    weak_cols = set(np.argsort(np.linalg.norm(Vh[:k], axis=0))[: b // 2])
    assert not A[:, k:].any() and not B[k:].any()
    for i in range(a):
        live = k // 2 if i in weak_rows else k
        assert (A[i, :live] != 0).all() and not A[i, live:].any(), i
    for j in range(b):
        live = k // 2 if j in weak_cols else k
        assert (B[:live, j] != 0).all() and not B[live:, j].any(), j
    nnz_u = (a - a // 2) * k + (a // 2) * (k // 2)
    nnz_v = (b - b // 2) * k + (b // 2) * (k // 2)
    assert int(info.params_after) == nnz_u + k + nnz_v == np.count_nonzero(A) + k + np.count_nonzero(B)
    W_new, dinfo = filter_matrix(dense, "slr", k, slr_sr=0.5, slr_rr=0.5)
    np.testing.assert_allclose(np.asarray(W_new), A @ B, atol=1e-5)
    assert int(dinfo.params_after) == a * b
    # Nothing sparsified: SLR is the truncated SVD.
    W_plain, _ = filter_matrix(dense, "slr", k, slr_sr=0.0)
    np.testing.assert_allclose(np.asarray(W_plain), numpy_truncation(dense, k), atol=2e-5)


# --------------------------------------------------------------------------------------------------
# filter_matrix: Algorithm 2


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, PDBFit]:
    """Three 120 x 60 PDB matrices with spikes, their exact fits, the last one failed."""
    N, p = 120, 60
    pops = [SEPARATED, MERGED, MERGED]
    spikes = [[60.0, 30.0], [30.0], [30.0]]
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    W = np.stack([np.asarray(simulate(k, N, p, pop, s)) for k, pop, s in zip(keys, pops, spikes)])
    fits = [pdb_fit(pop, (p - len(s)) / N, K=len(s)) for pop, s in zip(pops, spikes)]
    return W, stack(fits[:2] + [bad_pdb_fit()])


def single(fits, i: int):
    return jax.tree_util.tree_map(lambda x: x[i], fits)


def test_pdb_filter_shrinks_spikes_and_truncates(batch) -> None:
    W, fits = batch
    fit = single(fits, 0)
    W_new, info = filter_matrix(W[0], "pdb", "upper-bulk", fit=fit)
    lam = sample_eigs(W[0]).astype(np.float32)
    keep = int(keep_count(lam, fit, "upper-bulk"))
    assert int(info.keep) == keep and 2 < keep < 60
    assert int(info.n_outliers) == int(np.sum(np.asarray(outlier_mask(lam, fit)))) >= 2
    s_new = np.linalg.svd(np.asarray(W_new, np.float64), compute_uv=False)
    np.testing.assert_allclose(s_new[:keep] ** 2, np.asarray(shrink_spikes(lam, fit))[:keep], rtol=1e-4)
    assert s_new[keep] < 1e-5 * s_new[0]
    assert int(info.params_after) == int(info.params_before) == 120 * 60


def test_batched_equals_loop(batch) -> None:
    W, fits = batch
    out, info = filter_matrix(W, "pdb", "upper-bulk", fit=fits)
    assert np.asarray(info.ok).tolist() == [True, True, False]
    for i in range(W.shape[0]):
        out_i, info_i = filter_matrix(W[i], "pdb", "upper-bulk", fit=single(fits, i))
        np.testing.assert_allclose(np.asarray(out[i]), np.asarray(out_i), atol=2e-5)
        for got, want in zip(info, info_i):
            np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-5)
    (A, B), finfo = filter_matrix(W, "pdb", "upper-bulk", fit=fits, factored=True)
    np.testing.assert_allclose(np.asarray(A @ B), np.asarray(out), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(finfo.keep), np.asarray(info.keep))
    np.testing.assert_array_equal(np.asarray(finfo.params_after), np.asarray(info.keep) * (120 + 60))
    for i, k in enumerate(np.asarray(info.keep)):
        assert not np.asarray(A[i, :, k:]).any() and not np.asarray(B[i, k:]).any()


def test_failed_fit_returns_weight_unchanged(batch) -> None:
    W, _ = batch
    fit = bad_pdb_fit(Reason.NO_BULK)
    for method in ("pdb", "svd"):
        W_new, info = filter_matrix(W[2], method, "upper-bulk", fit=fit)
        np.testing.assert_array_equal(np.asarray(W_new), W[2])
        assert not bool(info.ok) and int(info.reason) == Reason.NO_BULK
        assert (int(info.keep), int(info.n_outliers), float(info.rel_change)) == (60, 0, 0.0)
        assert int(info.params_after) == int(info.params_before) == 120 * 60
    (A, B), info = filter_matrix(W[2], "slr", "upper-bulk", fit=fit, factored=True)
    np.testing.assert_allclose(np.asarray(A @ B), W[2], atol=1e-5)
    assert not bool(info.ok) and int(info.keep) == 60


def test_bf16_in_bf16_out(batch) -> None:
    W, fits = batch
    fit = single(fits, 0)
    W16 = jnp.asarray(W[0], jnp.bfloat16)
    W_new, info = filter_matrix(W16, "pdb", "upper-bulk", fit=fit)
    assert W_new.dtype == jnp.bfloat16 and info.rel_change.dtype == jnp.float32
    ref, ref_info = filter_matrix(W16.astype(jnp.float32), "pdb", "upper-bulk", fit=fit)
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(np.asarray(W_new, np.float32), np.asarray(ref), atol=2**-7 * scale)
    assert int(info.keep) == int(ref_info.keep)
    (A, B), _ = filter_matrix(W16, "svd", 5, factored=True)
    assert A.dtype == B.dtype == jnp.bfloat16
    expected = numpy_truncation(np.asarray(W16, np.float32), 5)
    product = np.asarray(A, np.float32) @ np.asarray(B, np.float32)
    np.testing.assert_allclose(product, expected, atol=0.02 * np.abs(expected).max())


def test_wide_matrix_is_the_transposed_problem(batch) -> None:
    W, fits = batch
    tall, info = filter_matrix(W, "pdb", "upper-bulk", fit=fits)
    wide, info_w = filter_matrix(np.swapaxes(W, -1, -2), "pdb", "upper-bulk", fit=fits)
    assert wide.shape == (3, 60, 120)
    np.testing.assert_allclose(np.asarray(wide), np.swapaxes(np.asarray(tall), -1, -2), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(info_w.keep), np.asarray(info.keep))
    np.testing.assert_allclose(np.asarray(info_w.rel_change), np.asarray(info.rel_change), rtol=1e-4)


def test_jit_matches_eager(batch) -> None:
    W, fits = batch
    jitted = jax.jit(filter_matrix, static_argnames=("method", "rank", "factored", "slr_sr", "slr_rr"))
    out, info = jitted(W, "pdb", "upper-bulk", fit=fits)
    ref, ref_info = filter_matrix(W, "pdb", "upper-bulk", fit=fits)
    assert isinstance(info, FilterInfo)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(info.keep), np.asarray(ref_info.keep))


def test_numpy_input_is_not_modified(dense) -> None:
    W = dense.copy()
    filter_matrix(W, "slr", 10)
    np.testing.assert_array_equal(W, dense)
    assert W.flags.writeable


def test_argument_checks(dense) -> None:
    with pytest.raises(ValueError, match="method"):
        filter_matrix(dense, "pca", 3)
    with pytest.raises(TypeError, match="PDBFit"):
        filter_matrix(dense, "pdb", 3, fit=pub_fit(1.0, 0.75))
    with pytest.raises(TypeError, match="PUBFit"):
        filter_matrix(dense, "pub-bema", 3, fit=pdb_fit(MERGED, 0.5))
    with pytest.raises(ValueError, match="batch shape"):
        filter_matrix(dense, "pdb", 3, fit=stack([pdb_fit(MERGED, 0.5)] * 2))
    with pytest.raises(ValueError, match="slr_sr"):
        filter_matrix(dense, "slr", 3, slr_sr=1.5)
    with pytest.raises(TypeError, match="floating"):
        filter_matrix(np.ones((4, 3), np.int32), "svd", 1)
    with pytest.raises(ValueError, match="matrices"):
        filter_matrix(np.ones(4, np.float32), "svd", 1)


# --------------------------------------------------------------------------------------------------
# Integration with the estimators (filter_matrix calls them when no fit is given)


def test_pdb_filter_with_estimated_fit(batch) -> None:
    W = batch[0]
    lam = np.asarray(svd(W)[1]) ** 2
    fit = fit_spectrum(spectrum(W), 120, "pdb")  # the fit filter_matrix estimates: float32, normalised spectrum
    assert np.asarray(fit.ok).all()
    out, info = filter_matrix(W, "pdb", "upper-bulk")
    ref, ref_info = filter_matrix(W, "pdb", "upper-bulk", fit=fit)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(info.keep), np.asarray(ref_info.keep))
    _, svd_info = filter_matrix(W, "svd", "upper-bulk")
    np.testing.assert_array_equal(np.asarray(svd_info.keep), np.asarray(keep_count(lam, fit, "upper-bulk")))


@pytest.mark.parametrize("method", ["pub-bema", "pub-kernel"])
def test_pub_filter_with_estimated_fit(method) -> None:
    N, p, spikes = 120, 60, [20.0, 12.0]
    W = simulate(jax.random.PRNGKey(3), N, p, PDB.pub(1.0), spikes)
    lam = np.asarray(svd(W)[1]) ** 2
    fit = fit_pub(lam, N, method.removeprefix("pub-"))
    assert bool(fit.ok)
    assert np.asarray(outlier_mask(lam, fit))[:2].all()
    out, info = filter_matrix(W, method, "spikes")
    ref, _ = filter_matrix(W, method, "spikes", fit=fit)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)
    assert int(info.n_outliers) >= 2 and bool(info.ok)


def test_filter_with_a_precomputed_spectrum(batch, monkeypatch) -> None:
    """``spec=`` gives the result of the spectrum filter_matrix would compute; a wrong shape is refused; and
    compress passes its first pass's spectra, so it never decomposes values-only twice."""
    W = batch[0]
    ref, ref_info = filter_matrix(W, "pdb", "upper-bulk")
    out, info = filter_matrix(W, "pdb", "upper-bulk", spec=spectrum(W))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(info.keep), np.asarray(ref_info.keep))
    with pytest.raises(ValueError, match="spec holds singular values of shape"):
        filter_matrix(W, "pdb", "upper-bulk", spec=spectrum(W[:1]))
    def refuse(*args, **kwargs):
        raise AssertionError("filter_matrix decomposed again")

    monkeypatch.setattr(filter_module, "spectrum", refuse)
    new, report = pdbjax.compress({"d": {"kernel": np.asarray(W[0])}}, rank="upper-bulk")
    assert report.rows[0]["status"] == "ok"


@pytest.mark.parametrize("method", ["svd", "slr"])
def test_fixed_rank_without_shrinkage_decomposes_once(dense, method, monkeypatch) -> None:
    """A fixed keep count without shrinkage needs no values-only spectrum: filter_matrix takes the rebuild's
    decomposition alone, and gives what the decided path gives (an explicit spectrum takes that path), also
    for an array of keeps and a non-finite matrix of the batch (kept whole, NON_FINITE)."""
    W = np.stack([dense, dense * 2.0, np.where(np.arange(30) == 3, np.nan, dense)]).astype(np.float32)
    keeps = np.array([7, 12, 5], np.int32)
    decided = [filter_matrix(W, method, rank, spec=spectrum(W)) for rank in (7, 0.6, keeps)]

    def refuse(*args, **kwargs):
        raise AssertionError("filter_matrix took a values-only spectrum for a fixed rank")

    monkeypatch.setattr(filter_module, "spectrum", refuse)
    for rank, (ref, ref_info) in zip((7, 0.6, keeps), decided):
        out, info = filter_matrix(W, method, rank)
        # The same factors and decision, rebuilt by two compiled programs: equal up to float32 rounding.
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-6 * np.nanmax(np.abs(W)))
        for field in ("keep", "ok", "reason", "n_outliers", "params_after"):
            np.testing.assert_array_equal(np.asarray(getattr(info, field)), np.asarray(getattr(ref_info, field)))
        assert list(np.asarray(info.reason)) == [Reason.OK, Reason.OK, Reason.NON_FINITE]
        assert int(info.keep[2]) == 30
    np.testing.assert_array_equal(np.asarray(filter_matrix(W, method, keeps)[1].keep), [7, 12, 30])
    with pytest.raises(ValueError, match="do not broadcast"):
        filter_matrix(W, method, np.array([1, 2], np.int32))


@pytest.mark.parametrize("method", ["pdb", "slr"])
def test_both_orientations_share_the_rebuild_program(batch, method) -> None:
    """A wide stack is rebuilt as its transpose: it compiles no rebuild of its own, and its dense and factored
    outputs are the tall stack's transposed (A, B of W^T give B^T, A^T), with the same report fields."""
    W, fits = batch
    rank = "upper-bulk" if method == "pdb" else 20
    jax.clear_caches()
    tall, info = filter_matrix(W, method, rank, fit=fits)
    (A, B), finfo = filter_matrix(W, method, rank, fit=fits, factored=True)
    wide, info_w = filter_matrix(np.swapaxes(W, -1, -2), method, rank, fit=fits)
    (Aw, Bw), finfo_w = filter_matrix(np.swapaxes(W, -1, -2), method, rank, fit=fits, factored=True)
    rebuild = filter_module._rebuild if method == "pdb" else filter_module._rebuild_fixed
    assert rebuild._cache_size() == 2  # dense and factored, each once for both orientations
    assert Aw.shape == (3, 60, 60) and Bw.shape == (3, 60, 120)
    # The same factors and products in both orientations: equal up to float32 rounding of the products.
    atol = 1e-6 * np.abs(W).max()
    np.testing.assert_allclose(np.asarray(wide), np.swapaxes(np.asarray(tall), -1, -2), rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(Aw @ Bw), np.swapaxes(np.asarray(A @ B), -1, -2), rtol=0, atol=atol)
    for field in ("keep", "ok", "reason", "params_before", "params_after"):
        np.testing.assert_array_equal(np.asarray(getattr(info_w, field)), np.asarray(getattr(info, field)))
    np.testing.assert_array_equal(np.asarray(finfo_w.params_after), np.asarray(finfo.params_after))


@pytest.mark.parametrize("factored", [False, True])
def test_a_rebuild_outside_the_dtype_is_out_of_range_and_left_as_it_is(factored):
    """float16 weights clipped at 65504 whose rank-2 rebuild reaches about 66,500: not representable, so the
    row is OUT_OF_RANGE and the weight is returned as it is (factored: its full balanced factors, whose
    product is W up to float16 rounding of the factors: 1% of the largest entry), never inf reported ok.
    The factors themselves would fit (balanced, each entry at most sqrt(s_1)): the product is what is checked."""
    rng = np.random.default_rng(0)
    top = np.outer(rng.uniform(0.5, 1, 256), rng.uniform(0.5, 1, 128))
    W = (np.clip(top * 75000 / top.max(), None, 65504) + rng.normal(size=top.shape) * 5000).clip(-65504, 65504).astype(np.float16)
    out, info = filter_matrix(jnp.asarray(W), "svd", 2, factored=factored)
    assert not bool(info.ok) and int(info.reason) == Reason.OUT_OF_RANGE and int(info.keep) == 128
    if factored:
        A, B = (np.asarray(x, np.float32) for x in out)
        assert np.isfinite(A).all() and np.isfinite(B).all()
        np.testing.assert_allclose(A @ B, W.astype(np.float32), atol=0.01 * 65504)
    else:
        np.testing.assert_array_equal(np.asarray(out), W)
    # the same matrix in float32 fits: compressed
    _, info32 = filter_matrix(jnp.asarray(W, jnp.float32), "svd", 2, factored=factored)
    assert bool(info32.ok) and int(info32.keep) == 2
