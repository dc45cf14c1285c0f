"""Tests of pdbjax.linalg's factors from the Gram matrix (``factors(W, via="gram")``), the vectors of every rebuild.

The oracle is NumPy's float64 SVD. What the Gram path promises (linalg's docstring, step 3): a rebuild
from the first ``k`` components is a rank-``k`` projection of ``W`` whose approximation error is the
optimum ``sum_{j>k} s_j^2`` up to rounding, at every ``k`` and conditioning; where the components at the
cut are well separated it is the SVD truncation itself.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import pdbjax
from pdbjax.linalg import factors
from pdbjax.simulate import population_diagonal

# Relative to ||W||_F^2: float32 rounding of W's entries and of the rebuilt matrix is ~1e-7 of it; a
# wrong subspace (wrong order, orientation or scaling) costs at least one kept s_k^2, far above.
EXCESS_TOL = 1e-5


def _spiked(n: int, p: int, seed: int) -> np.ndarray:
    """A PDB matrix with two bulks and two spikes (well separated from the bulk), ``n x p``."""
    W = pdbjax.simulate(jax.random.PRNGKey(seed), max(n, p), min(n, p), pdbjax.PDB(0.7, 1.0, 4.0), spikes=[80.0, 40.0])
    W = np.asarray(W)
    return W if n >= p else W.T


def _graded(n: int, p: int, seed: int) -> np.ndarray:
    """Singular values 1 .. 1e-6 geometrically: the lower half of the eigenvalues of the float32 Gram matrix
    lie below its rounding (eps lambda_1), so its eigenvectors there are arbitrary."""
    rng = np.random.default_rng(seed)
    r = min(n, p)
    U = np.linalg.qr(rng.standard_normal((n, r)))[0]
    V = np.linalg.qr(rng.standard_normal((p, r)))[0]
    return ((U * np.logspace(0, -6, r)) @ V.T).astype(np.float32)


def _rebuild(f, k: int) -> np.ndarray:
    U, s, Vh = (np.asarray(x, np.float64) for x in (f.U, f.s, f.Vh))
    scale = np.asarray(f.scale, np.float64)[..., None, None]
    return (U[..., :k] * s[..., None, :k]) @ Vh[..., :k, :] * scale


@pytest.mark.parametrize("shape", [(96, 48), (48, 96), (64, 64)])
@pytest.mark.parametrize("kind", ["spiked", "graded"])
def test_gram_rebuild_is_an_optimal_rank_k_projection(shape, kind):
    make = _spiked if kind == "spiked" else _graded
    W = np.stack([make(*shape, seed) for seed in range(3)])
    W64 = W.astype(np.float64)
    s64 = np.linalg.svd(W64, compute_uv=False)
    f = factors(W, via="gram")
    p = min(shape)
    assert f.U.shape == (3, shape[0], p) and f.s.shape == (3, p) and f.Vh.shape == (3, p, shape[1])
    energy = np.sum(W64**2, axis=(-2, -1))
    for k in (1, 2, p // 4, p // 2, p - 1, p):
        R = _rebuild(f, k)
        excess = (np.sum((W64 - R) ** 2, axis=(-2, -1)) - np.sum(s64[:, k:] ** 2, axis=-1)) / energy
        assert np.all(np.abs(excess) < EXCESS_TOL), (k, excess)
        tail = np.linalg.svd(R, compute_uv=False)[:, k:] if k < p else np.zeros((3, 0))
        assert np.all(tail <= 1e-5 * s64[:, :1]), k  # rank k: float32 rounding of the rebuilt entries
    np.testing.assert_allclose(_rebuild(f, p), W64, atol=1e-5 * np.abs(W64).max())


@pytest.mark.parametrize("shape", [(96, 48), (48, 96)])
def test_gram_factors_of_separated_spikes_are_the_svds(shape):
    """The two spikes stand far apart (eigenvalue gaps ~1e2 times eps lambda_1 of the bulk's top), so their
    vectors, values and truncation match the float64 SVD to float32 rounding."""
    W = np.stack([_spiked(*shape, seed) for seed in range(3)])
    U64, s64, Vh64 = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    f = factors(W, via="gram")
    scale = np.asarray(f.scale, np.float64)[:, None]
    np.testing.assert_allclose(np.asarray(f.s[:, :2], np.float64) * scale, s64[:, :2], rtol=1e-5)
    for j in range(2):  # each vector up to its sign
        for got, ref in ((np.asarray(f.U)[:, :, j], U64[:, :, j]), (np.asarray(f.Vh)[:, j], Vh64[:, j])):
            np.testing.assert_allclose(np.abs(np.sum(got * ref, axis=-1)), 1.0, atol=1e-5)
    truncation = (U64[..., :2] * s64[:, None, :2]) @ Vh64[:, :2]
    np.testing.assert_allclose(_rebuild(f, 2), truncation, atol=1e-5 * np.abs(W).max())


def test_gram_factors_of_zero_and_non_finite_matrices_are_zero():
    W = np.stack([np.zeros((12, 8), np.float32), np.full((12, 8), np.nan, np.float32), _spiked(12, 8, 0)])
    f = factors(W, via="gram")
    for x in (f.U, f.s, f.Vh):
        assert np.all(np.isfinite(np.asarray(x)))
    assert not np.asarray(f.s[:2]).any() and not np.asarray(f.U[:2]).any()
    np.testing.assert_array_equal(np.asarray(f.finite), [True, False, True])
    np.testing.assert_array_equal(np.asarray(f.scale[:2]), [1.0, 1.0])


def test_factors_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="via must be one of"):
        factors(np.ones((4, 3), np.float32), via="qr")


@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (2, 0, 5)])
def test_empty_matrices_are_a_clear_error_on_every_entry_point(shape):
    """An empty matrix is a ValueError naming its shape, not XLA's 'zero-size array to reduction' (and not an empty
    result from the Gram solver)."""
    W = np.zeros(shape, np.float32)
    calls = [lambda: pdbjax.eigenvalues(W), lambda: pdbjax.eigenvalues(W, solver="gram"),
             lambda: pdbjax.linalg.spectrum(W), lambda: pdbjax.filter_matrix(W, "svd", 1)]
    for call in calls:
        with pytest.raises(ValueError, match=r"a, b >= 1; got shape"):
            call()


def test_simulate_validates_its_population():
    key = jax.random.PRNGKey(0)
    for pop, spikes, message in [(pdbjax.PDB(1.6, 1.0, 2.0), (), r"t must lie in \[0, 1\]"),
                                 (pdbjax.PDB(0.5, -1.0, 2.0), (), "sigma1_sq must be a finite positive"),
                                 (pdbjax.PDB(0.5, 1.0, 2.0), (5.0, -3.0), "spikes must be finite and > 0"),
                                 (pdbjax.PDB(0.5, 1.0, 2.0), (np.inf,), "spikes must be finite and > 0")]:
        with pytest.raises(ValueError, match=message):
            pdbjax.simulate(key, 10, 5, pop, spikes)


def test_population_diagonal_is_float_for_integer_variances():
    """Integer variances do not make the diagonal integer (60.7 was truncated to 60 and a spike of 0.5 to 0)."""
    diag = population_diagonal(6, pdbjax.PDB(1, 1, 4), [60.7, 0.5])
    assert jax.numpy.issubdtype(diag.dtype, jax.numpy.floating)
    np.testing.assert_allclose(np.asarray(diag), [60.7, 0.5, 1, 1, 1, 1], rtol=1e-6)  # float32 rounding of 60.7


def test_int64_entries_beyond_int32_give_the_float64_spectrum():
    """64-bit mode off, ``jnp.asarray`` wraps int64 entries beyond 2^31 to int32: the spectrum was silently wrong
    (lambda_1 4e-6 of the right one); integers are converted to float on the host first."""
    W = np.round(np.random.default_rng(0).standard_normal((2, 60, 30)) * 2.0**40).astype(np.int64)
    want = np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2
    got = np.asarray(pdbjax.eigenvalues(W), np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-5)  # float32 SVD of the normalised matrix: ~1e-6 relative
    for via in ("svd", "gram"):
        f = factors(W, via=via)
        np.testing.assert_allclose(np.asarray(f.s, np.float64) * np.asarray(f.scale, np.float64)[:, None], np.sqrt(want), rtol=2e-5)
