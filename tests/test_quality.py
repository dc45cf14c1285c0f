"""Tests for pdbjax.quality: moments, KS and L2 distances between a spectrum's bulk and a fitted model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pdbjax.fits import PDBFit, PUBFit, Reason
from pdbjax.pub import fit_pub
from pdbjax.quality import HEAVY_TAIL_KS, HEAVY_TAIL_SLOPE, fit_quality, heavy_tailed, tail_slope
from pdbjax.spectral import PDB

N, P = 400, 256
SIGMA_SQ = 2.5
PUB = PDB(1.0, SIGMA_SQ, SIGMA_SQ)
TWO_BULK = PDB(0.6, 1.0, 6.0)  # separated bulks at c = P / N
SEEDS = (0, 1, 2)  # every call uses a batch of 3: one compilation for the whole file


@functools.lru_cache(maxsize=None)
def _eigs(pop: PDB, spikes: tuple[float, ...] = ()) -> np.ndarray:
    """Descending eigenvalues (float64, read-only) of ``W = X Sigma^{1/2}``, ``X`` i.i.d. ``N(0, 1/N)``."""
    p1 = round(pop.t * (P - len(spikes)))
    diag = np.concatenate([spikes, np.full(p1, pop.sigma1_sq), np.full(P - len(spikes) - p1, pop.sigma2_sq)])
    mats = [np.random.default_rng(s).standard_normal((N, P)) * np.sqrt(diag / N) for s in SEEDS]
    eigs = np.stack([np.linalg.eigvalsh(w.T @ w)[::-1] for w in mats])
    eigs.flags.writeable = False
    return eigs


def _pub_fit(sigma_sq, K=0, ok=True) -> PUBFit:
    shape = (len(SEEDS),)
    sigma_sq = np.broadcast_to(np.asarray(sigma_sq, np.float64), shape)
    return PUBFit(
        K=np.broadcast_to(np.asarray(K, np.int32), shape),
        sigma_sq=sigma_sq,
        c=np.full(shape, P / N),
        lambda_plus=sigma_sq * (1 + np.sqrt(P / N)) ** 2,
        threshold=sigma_sq * (1 + np.sqrt(P / N)) ** 2,
        ok=np.broadcast_to(np.asarray(ok), shape),
        reason=np.where(np.broadcast_to(np.asarray(ok), shape), Reason.OK, Reason.NOT_CONVERGED).astype(np.int32),
    )


def _pdb_fit(pop: PDB, K: int = 0) -> PDBFit:
    """An exact PDB fit with ``K`` spikes; fit_quality reads only K, the population and ok (every other
    field, whatever PDBFit holds, is NaN)."""
    shape = (len(SEEDS),)
    fields = dict(
        K=np.full(shape, K, np.int32),
        t=np.full(shape, pop.t),
        sigma1_sq=np.full(shape, pop.sigma1_sq),
        sigma2_sq=np.full(shape, pop.sigma2_sq),
        c=np.full(shape, (P - K) / N),
        edges=np.full(shape + (4,), np.nan),
        critical=np.full(shape + (4,), np.nan),
        ok=np.ones(shape, bool),
        reason=np.zeros(shape, np.int32),
    )
    return PDBFit(**{name: fields.get(name, np.full(shape, np.nan)) for name in PDBFit._fields})


def _quality(eigs, fit):
    with jax.enable_x64(True):
        return jax.tree_util.tree_map(np.asarray, fit_quality(jnp.asarray(eigs), N, fit))


# --------------------------------------------------------------------------- model vs truth


def test_exact_pub_model_fits_and_a_wrong_sigma_does_not():
    eigs = _eigs(PUB)
    exact, wrong = _quality(eigs, _pub_fit(SIGMA_SQ)), _quality(eigs, _pub_fit(1.5 * SIGMA_SQ))
    assert exact.ok.all()
    assert (exact.ks < 0.03).all(), exact.ks
    assert (np.abs(exact.moment_error) < 0.03).all(), exact.moment_error
    assert (exact.l2 < 0.1).all(), exact.l2
    assert (wrong.ks > 0.1).all(), wrong.ks
    assert (wrong.l2 > 3 * exact.l2).all()
    # A 50% larger sigma^2 is a 50% larger first moment.
    np.testing.assert_allclose(wrong.moment_error[:, 0], 0.5, atol=0.02)


def test_exact_two_bulk_model_fits_and_pub_does_not():
    eigs = _eigs(TWO_BULK)
    exact = _quality(eigs, _pdb_fit(TWO_BULK))
    assert (exact.ks < 0.03).all(), exact.ks
    # The upper bulk holds only 102 of the 256 eigenvalues: its third moment fluctuates by a few percent.
    assert (np.abs(exact.moment_error) < 0.06).all(), exact.moment_error
    assert (exact.l2 < 0.1).all(), exact.l2
    with jax.enable_x64(True):
        bema = fit_pub(jnp.asarray(eigs), N, "bema")
    pub = _quality(eigs, bema)
    assert bool(bema.ok.all())
    assert (pub.ks > 0.1).all(), pub.ks
    assert (pub.l2 > 3 * exact.l2).all()
    assert (np.abs(pub.moment_error[:, 0]) > 0.1).all(), pub.moment_error


# --------------------------------------------------------------------------- definitions


def test_bulk_is_masked_per_row():
    eigs = _eigs(PUB, spikes=(40.0, 20.0, 10.0))
    K = np.array([0, 3, 10])
    q = _quality(eigs, _pub_fit(SIGMA_SQ, K=K))
    c_k = (P - K) / N
    for row, k in enumerate(K):
        bulk = eigs[row, k:]
        np.testing.assert_allclose(q.moments[row], [np.mean(bulk), np.mean(bulk**2), np.mean(bulk**3)], rtol=1e-12)
    # Closed-form PUB moments at the row's own ratio c_K = (p - K) / N (spec section 5).
    pub_moments = np.stack([SIGMA_SQ * np.ones(3), SIGMA_SQ**2 * (1 + c_k), SIGMA_SQ**3 * (1 + 3 * c_k + c_k**2)], -1)
    np.testing.assert_allclose(q.model_moments, pub_moments, rtol=1e-10)
    np.testing.assert_allclose(q.moment_error, q.model_moments / q.moments - 1, rtol=1e-12)
    # Keeping the three outliers in the bulk (K = 0) ruins the higher moments; removing them leaves the
    # small finite-K deflation of the bulk (about 3 K / N for gamma_3) and noise.
    assert q.moment_error[0, 2] < -0.2 and abs(q.moment_error[1, 2]) < 0.06


def _mp_cdf(x: np.ndarray, sigma_sq: float, c: float) -> np.ndarray:
    """Independent Marchenko-Pastur CDF: the closed-form density integrated by the trapezoid rule in
    ``u``, ``x = mid - half cos u``, where the integrand is smooth."""
    a, b = sigma_sq * (1 - np.sqrt(c)) ** 2, sigma_sq * (1 + np.sqrt(c)) ** 2
    u = np.linspace(0.0, np.pi, 200001)
    lam = (a + b) / 2 - (b - a) / 2 * np.cos(u)
    density = np.sqrt(np.clip((b - lam) * (lam - a), 0, None)) / (2 * np.pi * c * sigma_sq * lam)
    integrand = density * (b - a) / 2 * np.sin(u)
    F = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(u))])
    return np.interp(x, lam, F / F[-1])


def test_ks_matches_scipy_on_the_masked_bulk():
    eigs = _eigs(PUB, spikes=(40.0, 20.0, 10.0))
    K = np.array([3, 3, 5])
    q = _quality(eigs, _pub_fit(SIGMA_SQ, K=K))
    for row, k in enumerate(K):
        expected = stats.kstest(eigs[row, k:], lambda x: _mp_cdf(x, SIGMA_SQ, (P - k) / N)).statistic
        np.testing.assert_allclose(q.ks[row], expected, rtol=1e-4, atol=1e-6)


def test_scale_invariance():
    eigs = _eigs(PUB, spikes=(40.0,))[0]
    factors = np.array([1e-3, 1.0, 1e3])  # W -> a W
    q = _quality(eigs * factors[:, None] ** 2, _pub_fit(SIGMA_SQ * factors**2, K=1))
    for field in ("moment_error", "ks", "l2"):
        value = getattr(q, field)
        np.testing.assert_allclose(value, np.broadcast_to(value[1], value.shape), rtol=1e-9, atol=1e-12, err_msg=field)
    np.testing.assert_allclose(q.moments / q.moments[1], factors[:, None] ** (2 * np.arange(1, 4)), rtol=1e-11)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("fit_kind", ["pub", "pdb"])
def test_not_ok_rows_are_nan(fit_kind):
    eigs = np.array(_eigs(PUB))
    eigs[2, 7] = np.nan
    if fit_kind == "pub":
        fit = _pub_fit(np.array([SIGMA_SQ, np.nan, SIGMA_SQ]), ok=np.array([True, False, True]))
    else:
        fit = _pdb_fit(PUB)
        fit = fit._replace(sigma1_sq=np.array([SIGMA_SQ, np.nan, SIGMA_SQ]), ok=np.array([True, False, True]))
    q = _quality(eigs, fit)
    np.testing.assert_array_equal(q.ok, [True, False, False])  # row 2: the spectrum itself has a NaN
    for field in ("moments", "model_moments", "moment_error", "ks", "l2"):
        value = getattr(q, field)
        assert np.isnan(value[1:]).all() and np.isfinite(value[0]).all(), field


def test_shape_and_argument_errors():
    eigs = _eigs(PUB)
    q = _quality(eigs, _pub_fit(SIGMA_SQ))
    assert q.moments.shape == (3, 3) and q.ks.shape == (3,) and q.ok.dtype == bool
    with pytest.raises(ValueError, match="N must be"):
        fit_quality(eigs, P - 1, _pub_fit(SIGMA_SQ))



# --------------------------------------------------------------------------- heavy tails

# p = 512 for the Monte-Carlo checks. Student-t(1.5) entries (zeta ~ 1.33, relative spread ~13% at p = 512)
# clear the threshold 1.2 in 16 of 20 draws of benchmarks/results/heavy_tails.md (misses at 1.06-1.20,
# mostly at p = 256); the seeds here are the file's SEEDS, not chosen.
HEAVY_SHAPES = ((512, 512), (1024, 512))
HEAVY_SPIKES = (40.0, 20.0, 10.0)


@functools.lru_cache(maxsize=None)
def _iid_eigs(kind: str, n: int, p: int) -> np.ndarray:
    """Descending float64 eigenvalues of ``W^T W`` for three seeds of an ``n x p`` matrix of ``kind``."""
    out = []
    for seed in SEEDS:
        rng = np.random.default_rng([seed, n, p])
        if kind == "pdb":  # two bulks (variances 1 and 6) plus three spikes
            k = len(HEAVY_SPIKES)
            p1 = round(0.6 * (p - k))
            diag = np.concatenate([HEAVY_SPIKES, np.ones(p1), np.full(p - k - p1, 6.0)])
            W = rng.standard_normal((n, p)) * np.sqrt(diag / n)
        else:
            df = {"cauchy": 1.0, "t1.5": 1.5, "t5": 5.0}.get(kind)
            W = rng.standard_normal((n, p)) if kind == "gaussian" else rng.standard_t(df, (n, p))
        out.append(np.linalg.eigvalsh(W.T @ W)[::-1])
    eigs = np.stack(out)
    eigs.flags.writeable = False
    return eigs


def _zeta(eigs) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(tail_slope(jnp.asarray(eigs)))


@pytest.mark.parametrize("shape", HEAVY_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tail_slope_flags_infinite_variance_and_not_pdb(shape):
    zeta = {kind: _zeta(_iid_eigs(kind, *shape)) for kind in ("cauchy", "t1.5", "gaussian", "t5", "pdb")}
    # i.i.d. entries with tail index alpha: zeta ~ 2 / alpha (Cauchy 2, Student-t(1.5) 1.33).
    assert (zeta["cauchy"] > 1.5).all() and (zeta["cauchy"] < 3.0).all(), zeta
    assert (zeta["t1.5"] > HEAVY_TAIL_SLOPE).all() and (zeta["t1.5"] < 1.8).all(), zeta
    # Finite variance (Marchenko-Pastur / PDB in the limit): far below the threshold.
    for kind in ("gaussian", "t5", "pdb"):
        assert (zeta[kind] < 0.75 * HEAVY_TAIL_SLOPE).all(), (kind, zeta[kind])


@pytest.mark.parametrize("a", [0.5, 1.0])
def test_tail_slope_of_an_exact_power_law(a):
    # s_j = j^-a: lambda_j = j^-2a and every j log(lambda_j / lambda_{j+1}) is 2a (1 - 1/(2j) + ...);
    # there is no Poisson spread, so zeta log 2 is the rank slope 2a itself.
    lam = np.arange(1, 513, dtype=np.float64) ** (-2 * a)
    np.testing.assert_allclose(_zeta(lam) * np.log(2), 2 * a, rtol=0.01)


def test_tail_slope_definitions():
    eigs = _iid_eigs("t1.5", 512, 512)[0]
    base = _zeta(eigs)
    # Scale-invariant, order-free, batched over leading axes, float32 close to float64.
    np.testing.assert_allclose(_zeta(eigs[None, :] * np.array([[1e-6], [1.0], [1e6]])), base, rtol=1e-12)
    np.testing.assert_allclose(_zeta(np.random.default_rng(0).permutation(eigs)), base, rtol=1e-12)
    assert _zeta(np.broadcast_to(eigs, (2, 3, 512))).shape == (2, 3)
    np.testing.assert_allclose(np.asarray(tail_slope(eigs.astype(np.float32))), base, rtol=1e-3)
    # Unusable: p < 8, non-finite, rank below p / 4 (the window would divide by zero).
    assert np.isnan(_zeta(np.ones(7))).all()
    bad = np.array(eigs)
    bad[5] = np.inf
    assert np.isnan(_zeta(bad))
    low_rank = np.array(eigs)
    low_rank[100:] = 0.0
    assert np.isnan(_zeta(low_rank)) and np.isfinite(_zeta(np.sort(eigs)))
    with pytest.raises(ValueError, match="scalar"):
        tail_slope(1.0)


def _heavy(eigs, fit) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(heavy_tailed(jnp.asarray(eigs), N, fit))


def test_heavy_tailed_needs_a_steep_top_and_a_poor_fit():
    # Cauchy entries, with a Marchenko-Pastur law at the median's scale: steep top, bulk not described.
    cauchy = np.stack([np.linalg.eigvalsh(w.T @ w)[::-1] for w in
                       (np.random.default_rng(s).standard_cauchy((N, P)) for s in SEEDS)])
    median = cauchy[:, P // 2]
    assert (_zeta(cauchy) > HEAVY_TAIL_SLOPE).all()
    assert (_quality(cauchy, _pub_fit(median)).ks > HEAVY_TAIL_KS).all()
    np.testing.assert_array_equal(_heavy(cauchy, _pub_fit(median)), True)
    # A fit that is not ok is never flagged: its reason already says why.
    np.testing.assert_array_equal(_heavy(cauchy, _pub_fit(median, ok=False)), False)
    # Gaussian noise under its exact law: neither.
    np.testing.assert_array_equal(_heavy(_eigs(PUB), _pub_fit(SIGMA_SQ)), False)
    # A PDB matrix whose top quarter is as steep as Student-t(1.5): a minority bulk 20x the majority
    # merging into it, plus 10 spikes. Its exact law describes the bulk (KS 0.020-0.024 here: a minority
    # of 37 eigenvalues), so the KS gate spares it.
    spikes = tuple(np.geomspace(60_000.0, 60.0, 10))
    steep = PDB(0.85, 1.0, 20.0)
    eigs = _eigs(steep, spikes)
    assert (_zeta(eigs) > HEAVY_TAIL_SLOPE).all(), _zeta(eigs)
    assert (_quality(eigs, _pdb_fit(steep, K=10)).ks < HEAVY_TAIL_KS).all()
    np.testing.assert_array_equal(_heavy(eigs, _pdb_fit(steep, K=10)), False)
    # A precomputed quality is used as given.
    quality = _quality(cauchy, _pub_fit(median))
    with jax.enable_x64(True):
        flagged = heavy_tailed(jnp.asarray(cauchy), N, _pub_fit(median), quality._replace(ks=np.zeros(3)))
    np.testing.assert_array_equal(np.asarray(flagged), False)
