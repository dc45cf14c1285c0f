"""Tests for pdbjax.spectral (and pdbjax.simulate) against independent oracles.

Nothing here re-derives a result the way the library does. The oracles are:

* Marchenko-Pastur closed forms (``t = 1``, spec section 4);
* the Herglotz root of the cubic of spec section 3, from numpy companion-matrix eigenvalues
  (the library uses a fixed point + continuation + Newton instead);
* the discriminant of that cubic, which changes sign exactly at the support edges, and numpy roots of
  the critical-point quartic (the library bisects ``g'``);
* Gauss-Jacobi quadrature of the density (mass, moments, cdf; the library's cdf uses a cumulative
  trapezoid rule in the Chebyshev angle);
* the closed-form moments of spec section 5;
* Monte Carlo: eigenvalues of matrices drawn with :func:`pdbjax.simulate.simulate`;
* central (and, at a bound, one-sided) finite differences of the public functions for their
  derivatives (the library uses implicit-function rules instead of differentiating its iterations).

float64 is enabled locally (``with x64():``) wherever it is needed. To keep the file fast, the numerical
tests evaluate the ``jax.jit`` versions of the public functions through :func:`pointwise`,
:func:`per_population` and :func:`cdf_rows`, which flatten and pad the inputs to a few fixed shapes so
that each function compiles only a couple of times; the broadcasting of the public signatures, the eager
path, ``vmap`` and float32 have their own tests below.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import roots_jacobi

from pdbjax import spectral
from pdbjax.simulate import simulate
from pdbjax.spectral import PDB

x64 = functools.partial(jax.enable_x64, True)

NAMES = (
    "stieltjes", "density", "cdf", "critical_points", "edges", "lambda_plus", "spike_map", "spike_inverse", "moments",
)
JITTED = {
    name: jax.jit(getattr(spectral, name), static_argnames={"cdf": ("num",), "moments": ("k",)}.get(name, ()))
    for name in NAMES
}

_POINT_BUCKETS = (4096,)
_POP_BUCKET = 128
_CDF_ROWS, _CDF_POINTS = 8, 1024


def _bucket(n: int, buckets) -> int:
    for size in buckets:
        if n <= size:
            return size
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


def _padded(a: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    """Pad ``a`` to ``size`` along ``axis`` by repeating its last entry (so padding stays valid input)."""
    extra = np.repeat(np.take(a, [-1], axis), size - a.shape[axis], axis)
    return np.concatenate([a, extra], axis)


def pointwise(name: str, points, t, s1, s2, c, *extra) -> np.ndarray:
    """``spectral.<name>(points, PDB(t, s1, s2), c, *extra)`` element by element on the broadcast arrays."""
    arrays = np.broadcast_arrays(*(np.asarray(v) for v in (points, t, s1, s2, c, *extra)))
    shape, n = arrays[0].shape, arrays[0].size
    chunk = _bucket(min(n, _POINT_BUCKETS[-1]), _POINT_BUCKETS)
    outs = []
    for start in range(0, n, chunk):
        flat = [_padded(a.reshape(-1)[start : start + chunk], chunk) for a in arrays]
        outs.append(np.asarray(JITTED[name](flat[0], PDB(*flat[1:4]), flat[4], *flat[5:])))
    return np.concatenate(outs)[:n].reshape(shape)


def per_population(name: str, t, s1, s2, c, **kwargs) -> np.ndarray:
    """``spectral.<name>(PDB(t, s1, s2), c)`` for broadcast population arrays; trailing output axes kept."""
    arrays = np.broadcast_arrays(*(np.asarray(v) for v in (t, s1, s2, c)))
    shape, n = arrays[0].shape, arrays[0].size
    flat = [_padded(a.reshape(-1), _bucket(n, (_POP_BUCKET,))) for a in arrays]
    out = np.asarray(JITTED[name](PDB(*flat[:3]), flat[3], **kwargs))
    return out[:n].reshape(shape + out.shape[1:])


def cdf_rows(x, t, s1, s2, c) -> np.ndarray:
    """``spectral.cdf`` with one population per row of ``x`` (shape ``(P, n)``, n <= 1024), 8 rows a call."""
    x = np.asarray(x)
    rows, n = x.shape
    fields = [np.broadcast_to(np.asarray(v), (rows,)) for v in (t, s1, s2, c)]
    outs = []
    for start in range(0, rows, _CDF_ROWS):
        xs = _padded(_padded(x[start : start + _CDF_ROWS], _CDF_POINTS, axis=1), _CDF_ROWS, axis=0)
        fs = [_padded(f[start : start + _CDF_ROWS], _CDF_ROWS) for f in fields]
        outs.append(np.asarray(JITTED["cdf"](xs, PDB(*fs[:3]), fs[3])))
    return np.concatenate(outs)[:rows, :n]


def _col(v) -> np.ndarray:
    return np.asarray(v, np.float64)[:, None]


def _random_pops(seed: int, n: int, n_square: int = 0):
    """Random ``(t, s1, s2, c)``: scales 1e-3..1e3, variance ratios 1e-2..1e2; the first ``n_square`` have c = 1."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.05, 0.95, n)
    s1 = 10.0 ** rng.uniform(-3, 3, n)
    s2 = s1 * 10.0 ** rng.uniform(-2, 2, n)
    c = rng.uniform(0.02, 1.0, n)
    c[:n_square] = 1.0
    return t, s1, s2, c


def _assert_close(got, want, rtol, atol=0.0):
    """``|got - want| <= atol + rtol |want|`` elementwise, with an array ``atol`` allowed."""
    got, want = np.asarray(got), np.asarray(want)
    bad = ~(np.abs(got - want) <= atol + rtol * np.abs(want))
    assert not bad.any(), f"{bad.sum()} mismatches, e.g. got {got[bad][:4]} want {want[bad][:4]}"


def _n_edges(e: np.ndarray) -> np.ndarray:
    return np.isfinite(e).sum(-1)


def _split_critical(crit: np.ndarray):
    """``(a1, a2, a3, a4, separated)`` columns from ``critical_points`` (ascending, NaN last)."""
    sep = np.isfinite(crit[:, 2:3])
    return crit[:, 0:1], crit[:, 1:2], crit[:, 2:3], np.nanmax(crit, 1, keepdims=True), sep


# ------------------------------------------------------------------------ independent oracles


def _cubic_coefficients(z, t, a, b, c):
    """Coefficients (highest first) of the cubic in m of spec section 3, all arrays broadcast."""
    return (
        z * a * b,
        z * (a + b) + a * b * (1 - c),
        z + a + b - c * (t * a + (1 - t) * b),
        np.ones_like(z),
    )


def _herglotz_root(z, t, a, b, c):
    """Root of the cubic with the largest imaginary part, from companion-matrix eigenvalues."""
    z, t, a, b, c = np.broadcast_arrays(np.asarray(z, complex), t, a, b, c)
    k3, k2, k1, k0 = _cubic_coefficients(z, t, a, b, c)
    companion = np.zeros(z.shape + (3, 3), complex)
    companion[..., 0, 0], companion[..., 0, 1], companion[..., 0, 2] = -k2 / k3, -k1 / k3, -k0 / k3
    companion[..., 1, 0] = companion[..., 2, 1] = 1.0
    roots = np.linalg.eigvals(companion)
    return np.take_along_axis(roots, np.argmax(roots.imag, -1)[..., None], -1)[..., 0]


def _cubic_discriminant(x, t, s1, s2, c):
    """Discriminant of the cubic at real ``x``, in units where max(s1, s2) = 1 (scale-free).

    Negative: a complex pair of roots, i.e. ``x`` is inside the support; positive: outside.
    """
    scale = np.maximum(s1, s2)
    a3, a2, a1, a0 = _cubic_coefficients(x / scale, t, s1 / scale, s2 / scale, c)
    return 18 * a3 * a2 * a1 * a0 - 4 * a2**3 * a0 + a2**2 * a1**2 - 4 * a3 * a1**3 - 27 * a3**2 * a0**2


def _quartic_real_roots(t, s1, s2, c):
    """Real roots of ``(a-s1)^2 (a-s2)^2 - c t s1^2 (a-s2)^2 - c (1-t) s2^2 (a-s1)^2`` (numpy), ascending."""
    P = np.polynomial.Polynomial
    q1, q2 = P([-s1, 1.0]) ** 2, P([-s2, 1.0]) ** 2
    roots = (q1 * q2 - c * t * s1**2 * q2 - c * (1 - t) * s2**2 * q1).roots()
    return np.sort(roots[np.abs(roots.imag) <= 1e-7 * max(s1, s2)].real)


def _jacobi_rule(lo, hi, exp_hi, exp_lo, n=256):
    """Nodes and weights for ``int_lo^hi f`` when ``f ~ (hi - x)^exp_hi (x - lo)^exp_lo`` at the ends.

    Gauss-Jacobi with weight ``(1 - xi)^exp_hi (1 + xi)^exp_lo``; the weights are divided by that
    factor so that they apply to ``f`` itself.
    """
    xi, w = roots_jacobi(n, exp_hi, exp_lo)
    half = (hi - lo) / 2
    return (lo + hi) / 2 + half * xi, w * half / ((1 - xi) ** exp_hi * (1 + xi) ** exp_lo)


def _bulk_intervals(edges_row: np.ndarray, c: float):
    """``[(lo, hi, exponent at hi, exponent at lo)]``: square-root edges, ``x^{-1/2}`` at 0 when c = 1."""
    e = edges_row[np.isfinite(edges_row)]
    pairs = [(e[0], e[1])] if len(e) == 2 else [(e[0], e[1]), (e[2], e[3])]
    return [
        (max(lo, 0.0) if c == 1 else lo, hi, 0.5, -0.5 if (c == 1 and i == 0) else 0.5)
        for i, (lo, hi) in enumerate(pairs)
    ]


def _quadrature(edges: np.ndarray, c: np.ndarray, n=256):
    """Per population: nodes ``(P, 2n)`` and weights (second interval zero-weighted when merged)."""
    nodes, weights = [], []
    for row, ci in zip(edges, c):
        xs, ws = zip(*(_jacobi_rule(lo, hi, eh, el, n) for lo, hi, eh, el in _bulk_intervals(row, ci)))
        if len(xs) == 1:
            xs, ws = (xs[0], xs[0]), (ws[0], np.zeros_like(ws[0]))
        nodes.append(np.concatenate(xs))
        weights.append(np.concatenate(ws))
    return np.array(nodes), np.array(weights)



# ------------------------------------------------------------------------ t = 1: Marchenko-Pastur

MP_C = np.array([0.01, 0.3, 0.5, 0.9, 0.99, 1.0])
MP_S = np.array([1e-3, 1.0, 1e3])


def test_pub_matches_marchenko_pastur_closed_forms():
    c, s = (v.ravel() for v in np.meshgrid(MP_C, MP_S))
    lo, hi = s * (1 - np.sqrt(c)) ** 2, s * (1 + np.sqrt(c)) ** 2
    # Chebyshev grid on each support, down to ~6e-6 of the width from the edges.
    u = np.linspace(0, np.pi, 401)[1:-1]
    x = (lo + hi)[:, None] / 2 - (hi - lo)[:, None] / 2 * np.cos(u)
    mp = np.sqrt((hi[:, None] - x) * (x - lo[:, None])) / (2 * np.pi * c[:, None] * s[:, None] * x)
    with x64():
        e = per_population("edges", 1.0, s, s, c)
        crit = per_population("critical_points", 1.0, s, s, c)
        lp = per_population("lambda_plus", 1.0, s, s, c)
        f_limit = pointwise("density", x, 1.0, _col(s), _col(s), _col(c), 1e-12 * _col(s))
        f_default = pointwise("density", x, 1.0, _col(s), _col(s), _col(c))
    _assert_close(e[:, :2], np.stack([lo, hi], 1), 1e-6, 1e-12 * _col(s))
    assert np.all(np.isnan(e[:, 2:])) and np.all(np.isnan(crit[:, 2:]))
    _assert_close(crit[:, :2], np.stack([s * (1 - np.sqrt(c)), s * (1 + np.sqrt(c))], 1), 1e-6, 1e-12 * _col(s))
    _assert_close(lp, hi, 1e-6)
    # eta -> 0: the closed form everywhere on the grid.
    _assert_close(f_limit, mp, 1e-6)
    # The default eta (1e-8 max(s1, s2)) smooths the edges: the closed form away from them.
    away = np.minimum(x - lo[:, None], hi[:, None] - x) >= 0.05 * (hi - lo)[:, None]
    _assert_close(f_default[away], mp[away], 1e-6)


def test_pub_spike_map_and_inverse_closed_forms():
    c, s = (_col(v.ravel()) for v in np.meshgrid(MP_C, MP_S))
    factors = np.array([1.001, 1.1, 2.0, 10.0, 1e3])
    lam = s * (1 + np.sqrt(c)) ** 2 * factors  # above lambda_+
    alpha = (lam + s * (1 - c) + np.sqrt((lam + s * (1 - c)) ** 2 - 4 * lam * s)) / 2
    a = s * (1 + np.sqrt(c)) * factors  # above the critical point s (1 + sqrt c)
    with x64():
        inverse = pointwise("spike_inverse", lam, 1.0, s, s, c)
        forward = pointwise("spike_map", a, 1.0, s, s, c)
    _assert_close(inverse, alpha, 1e-9)
    _assert_close(forward, a + c * s * a / (a - s), 1e-12)


def test_degenerate_pdb_populations_are_pub():
    """``s1 == s2`` (any t), ``t = 1`` (any s2) and ``t = 0`` (any s1) are all the MP law of ratio c."""
    pops = np.array([[1.0, 1.0, 1.0], [0.3, 1.0, 1.0], [1.0, 1.0, 7.0], [0.0, 7.0, 1.0]])
    x = np.linspace(0.01, 3.0, 50)
    with x64():
        f = pointwise("density", x, *(_col(v) for v in pops.T), 0.4)
        e = per_population("edges", *pops.T, 0.4)
    assert f[0].max() > 0.1
    np.testing.assert_allclose(f, np.broadcast_to(f[0], f.shape), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(e, np.broadcast_to(e[0], e.shape), rtol=1e-12)


# ------------------------------------------------------------------------ Stieltjes transform vs the cubic


def _stieltjes_grid(seed: int = 0, n: int = 96):
    """Random populations and a grid of z near every edge, inside the bulks and outside them."""
    t, s1, s2, c = _random_pops(seed, n, n_square=8)
    with x64():
        e = per_population("edges", t, s1, s2, c)
    scale = np.maximum(s1, s2)
    filled = np.where(np.isfinite(e), e, e[:, [1]])  # merged: repeat the upper edge
    near_edges = (filled[:, :, None] * (1 + np.array([-1e-2, -1e-4, 1e-4, 1e-2]))).reshape(n, -1)
    middles = np.stack([(filled[:, 0] + filled[:, 1]) / 2, (filled[:, 2] + filled[:, 3]) / 2], 1)
    others = scale[:, None] * np.array([0.05, 0.3, 1.0, 3.0, 10.0])
    x = np.concatenate([near_edges, middles, others], 1)
    heights = np.array([1e-9, 1e-2, 1.0])
    z = (x[:, None, :] + 1j * heights[None, :, None] * scale[:, None, None]).reshape(n, -1)
    with x64():
        m = pointwise("stieltjes", z, _col(t), _col(s1), _col(s2), _col(c))
    ref = _herglotz_root(z, _col(t), _col(s1), _col(s2), _col(c))
    return e, z, scale, m, ref


def test_stieltjes_is_the_herglotz_root_of_the_cubic():
    e, z, scale, m, ref = _stieltjes_grid()
    counts = _n_edges(e)
    assert set(counts) == {2, 4} and min(np.sum(counts == 2), np.sum(counts == 4)) >= 20
    assert np.all(m.imag > 0) and np.all(ref.imag > 0)
    # Away from the origin (|z| >= 1e-2 max(s1, s2)); closer to it, see the test below.
    far = np.abs(z) >= 1e-2 * scale[:, None]
    assert far.mean() > 0.9
    err = np.abs(m - ref) / np.abs(ref)
    assert err[far].max() <= 1e-6, err[far].max()


def test_stieltjes_near_the_origin_is_the_herglotz_root():
    _, z, scale, m, ref = _stieltjes_grid()
    near = np.abs(z) < 1e-2 * scale[:, None]
    assert near.sum() > 10
    err = np.abs(m - ref) / np.abs(ref)
    assert err[near].max() <= 1e-6, err[near].max()


def test_real_z_is_the_limit_from_above():
    t, s1, s2, c = 0.3, 1.0, 8.0, 0.2
    x = np.array([0.05, 0.5, 1.0, 3.0, 20.0, 50.0])  # outside, inside, in the gap, ...
    with x64():
        m = pointwise("stieltjes", x + 0j, t, s1, s2, c)
        assert np.all(np.isfinite(per_population("edges", t, s1, s2, c)))
    np.testing.assert_allclose(m, _herglotz_root(x + 1e-11j, t, s1, s2, c), rtol=1e-7)


# ------------------------------------------------------------------------ support: edges and critical points


def test_edges_are_where_the_cubic_discriminant_changes_sign():
    t, s1, s2, c = _random_pops(1, 96, n_square=8)
    with x64():
        e = per_population("edges", t, s1, s2, c)
        lp = per_population("lambda_plus", t, s1, s2, c)
    counts = _n_edges(e)
    assert min(np.sum(counts == 2), np.sum(counts == 4)) >= 20
    np.testing.assert_array_equal(lp, np.nanmax(e, 1))
    delta = 1e-6
    for i in range(len(t)):
        row = e[i][np.isfinite(e[i])]
        assert np.all(np.diff(row) > 0)
        for j, beta in enumerate(row):
            if j == 0 and c[i] == 1:
                assert abs(beta) <= 1e-12 * max(s1[i], s2[i])  # hard edge at 0
                continue
            below, above = (_cubic_discriminant(beta * (1 + d), t[i], s1[i], s2[i], c[i]) for d in (-delta, delta))
            inside, outside = (above, below) if j % 2 == 0 else (below, above)
            assert inside < 0 < outside, (i, j, row, inside, outside)


def test_critical_points_are_the_real_roots_of_the_quartic():
    t, s1, s2, c = _random_pops(2, 64)
    with x64():
        crit = per_population("critical_points", t, s1, s2, c)
    assert set(_n_edges(crit)) == {2, 4}
    for i in range(len(t)):
        got = crit[i][np.isfinite(crit[i])]
        want = _quartic_real_roots(t[i], s1[i], s2[i], c[i])
        assert len(got) == len(want), (got, want)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_density_is_positive_inside_and_vanishes_outside_the_support():
    """Outside the support only the smoothing by ``eta`` remains: small, and ~1e4 times smaller at eta / 1e4."""
    t, s1, s2, c = _random_pops(3, 48)
    scale = np.maximum(s1, s2)[:, None]
    frac = np.linspace(1e-3, 1 - 1e-3, 20)
    with x64():
        e = per_population("edges", t, s1, s2, c)
    sep = np.isfinite(e[:, 2:3])
    b1, b2, top = e[:, :1], e[:, 1:2], np.nanmax(e, 1, keepdims=True)
    b3, b4 = np.where(sep, e[:, 2:3], b1), np.where(sep, e[:, 3:4], b2)
    above = top * (1.001 + 2 * frac)
    # Below the lower edge only where that edge is not within 1e-3 scale of 0 (see the origin test).
    below = np.where(b1 >= 1e-3 * scale, b1 * np.geomspace(1e-3, 1 - 1e-3, 20), above)
    in_gap = np.where(sep, b2 + (b3 - b2) * frac, above)
    inside = np.concatenate([b1 + (b2 - b1) * frac, b3 + (b4 - b3) * frac], 1)
    outside = np.concatenate([below, in_gap, above], 1)
    pop = (_col(t), _col(s1), _col(s2), _col(c))
    with x64():
        f = pointwise("density", np.concatenate([inside, outside, -outside], 1), *pop)
        f_in, f_out, f_neg = np.split(f, [40, 100], 1)
        f_out_sharp = pointwise("density", outside, *pop, 1e-12 * scale)
    assert sep.sum() >= 10 and (~sep).sum() >= 10 and (b1 >= 1e-3 * scale).sum() >= 30
    peak = f_in.max(1, keepdims=True)
    assert np.all(f_in > 0)
    assert np.all(f_out <= 1e-3 * peak)
    assert np.all(f_out_sharp <= 1e-6 * peak)
    assert np.all(f_neg == 0.0)



def test_density_vanishes_close_to_the_origin():
    x = 10.0 ** np.arange(-10.0, -3.0, 0.5)
    with x64():
        f = pointwise("density", x, 1.0, 1.0, 1.0, 0.5)  # MP law on [0.086, 2.91]
    assert np.all(f <= 1e-6), f


# ------------------------------------------------------------------------ mass, moments, cdf


def _quadrature_pops():
    t, s1, s2, c = _random_pops(4, 40, n_square=4)
    extra = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 2.0, 0.3], [0.5, 1.0, 12.0, 0.4]])
    return tuple(np.concatenate([v, extra[:, k]]) for k, v in enumerate((t, s1, s2, c)))


def test_cdf_nodes_use_the_closed_form_density_of_the_silverstein_cubic():
    """``cdf`` evaluates the density at its quadrature nodes in closed form (``_density_on_line``: the
    complex pair of the Silverstein cubic, eta -> 0); it must be :func:`density`'s Stieltjes root at
    ``eta = 1e-12 scale`` inside the support and ``0`` outside, including a weight-0 atom (``t`` in
    ``{0, 1}`` with ``s1 != s2``) and ``s1 = s2``, whose spurious real root it must not pick."""
    t, s1, s2, c = _random_pops(5, 44, n_square=4)
    extra = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 2.0, 0.3], [0.0, 1.0, 5.0, 0.7], [1.0, 1.0, 3.0, 0.4]])
    t, s1, s2, c = (np.concatenate([v, extra[:, k]]) for k, v in enumerate((t, s1, s2, c)))
    scale = np.maximum(s1, s2)[:, None]
    frac = np.concatenate([[1e-6, 1e-3], np.linspace(0.01, 0.99, 30), [1 - 1e-3, 1 - 1e-6]])
    with x64():
        e = per_population("edges", t, s1, s2, c)
        sep = np.isfinite(e[:, 2:3])
        b1, b2, top = e[:, :1], e[:, 1:2], np.nanmax(e, 1, keepdims=True)
        b3, b4 = np.where(sep, e[:, 2:3], b1), np.where(sep, e[:, 3:4], b2)
        inside = np.concatenate([b1 + (b2 - b1) * frac, b3 + (b4 - b3) * frac], 1)
        outside = np.concatenate([top * (1.001 + frac), np.where(sep, b2 + (b3 - b2) * frac[2:-2], -top),
                                  b1 * frac[:-2], -top * frac], 1)
        x = np.concatenate([inside, outside], 1)
        want = pointwise("density", x, *(_col(v) for v in (t, s1, s2, c)), 1e-12 * scale)
        closed = jax.jit(spectral._density_on_line)
        got = {dtype: np.asarray(closed(*(jnp.asarray(np.broadcast_to(v, x.shape), dtype)
                                        for v in (x, _col(t), _col(s1), _col(s2), _col(c)))))
               for dtype in (np.float64, np.float32)}
    peak = want.max(1, keepdims=True)
    n_in = inside.shape[1]
    err = {dtype: np.abs(v[:, :n_in] - want[:, :n_in]) / peak for dtype, v in got.items()}
    near = np.isin(np.arange(n_in), [0, len(frac) - 1, len(frac), n_in - 1])  # 1e-6 of an interval from an edge
    assert sep.sum() >= 10 and np.all(want[:, :n_in] > 0)
    assert np.all(got[np.float64][:, n_in:] == 0.0) and np.all(got[np.float32][:, n_in:] == 0.0)
    # float64: 3.5e-6 of the peak measured, all of it eta's smoothing within 1e-6 of an edge.
    assert np.all(err[np.float64] <= 1e-5)
    # float32: the coefficients' rounding moves an edge by ~eps of the scale, and f ~ sqrt(distance) there:
    # measured 8e-5 of the peak away from the edges and 0.044 within 1e-6 of one (the Stieltjes root in
    # float32, with its default eta: 3e-4 and 0.26).
    assert np.all(err[np.float32][:, ~near] <= 1e-3)
    assert np.all(err[np.float32][:, near] <= 0.1)


def test_density_integrates_to_one_and_its_moments_are_moments():
    t, s1, s2, c = _quadrature_pops()
    with x64():
        e = per_population("edges", t, s1, s2, c)
        nodes, weights = _quadrature(e, c)
        f = pointwise("density", nodes, _col(t), _col(s1), _col(s2), _col(c))
        gamma = per_population("moments", t, s1, s2, c, k=5)
    assert set(_n_edges(e)) == {2, 4}
    np.testing.assert_allclose(np.sum(weights * f, 1), 1.0, atol=1e-3)
    for k in range(1, 6):
        np.testing.assert_allclose(np.sum(weights * f * nodes**k, 1), gamma[:, k - 1], rtol=1e-3)


def test_moments_closed_forms():
    t, s1, s2, c = _random_pops(5, 64, n_square=4)
    with x64():
        gamma = per_population("moments", t, s1, s2, c, k=5)
        pub = per_population("moments", 1.0, s1, s1, c, k=5)
        first = np.asarray(spectral.moments(PDB(*(jnp.asarray(v) for v in (t, s1, s2))), jnp.asarray(c), k=1))
    h1, h2, h3 = (t * s1**k + (1 - t) * s2**k for k in (1, 2, 3))
    want = np.stack([h1, h2 + c * h1**2, h3 + 3 * c * h1 * h2 + c**2 * h1**3], 1)
    np.testing.assert_allclose(gamma[:, :3], want, rtol=1e-12)
    # gamma_4 (the five partitions of 4, derived by hand): h4 + 4c h1 h3 + 2c h2^2 + 6c^2 h1^2 h2 + c^3 h1^4.
    h4 = t * s1**4 + (1 - t) * s2**4
    want4 = h4 + 4 * c * h1 * h3 + 2 * c * h2**2 + 6 * c**2 * h1**2 * h2 + c**3 * h1**4
    np.testing.assert_allclose(gamma[:, 3], want4, rtol=1e-12)
    np.testing.assert_allclose(pub[:, :3], np.stack([s1, s1**2 * (1 + c), s1**3 * (1 + 3 * c + c**2)], 1), rtol=1e-12)
    # Higher MP moments (Narayana polynomials): gamma_4 = s^4 (1 + 6c + 6c^2 + c^3),
    # gamma_5 = s^5 (1 + 10c + 20c^2 + 10c^3 + c^4).
    np.testing.assert_allclose(pub[:, 3], s1**4 * (1 + 6 * c + 6 * c**2 + c**3), rtol=1e-12)
    np.testing.assert_allclose(pub[:, 4], s1**5 * (1 + 10 * c + 20 * c**2 + 10 * c**3 + c**4), rtol=1e-12)
    np.testing.assert_allclose(first, gamma[:, :1], rtol=1e-12)
    with pytest.raises(ValueError):
        spectral.moments(PDB(1.0, 1.0, 1.0), 0.5, k=0)


def test_cdf_is_the_integrated_density():
    t, s1, s2, c = _quadrature_pops()
    P = len(t)
    col3 = lambda v: np.asarray(v, np.float64)[:, None, None]  # noqa: E731
    with x64():
        e = per_population("edges", t, s1, s2, c)
        sep = np.isfinite(e[:, 2])
        top = np.nanmax(e, 1)
        bulk_nodes, bulk_weights = _quadrature(e, c)
        fb = pointwise("density", bulk_nodes, _col(t), _col(s1), _col(s2), _col(c))
        first_mass = np.sum((bulk_weights * fb)[:, : bulk_nodes.shape[1] // 2], 1)

        # Six interior points per population; F there = (mass of the bulk below) + int_lo^x f,
        # the partial integral by Gauss-Jacobi from the lower edge of the point's bulk.
        pts, nodes, weights, below = [], [], [], []
        for i in range(P):
            pieces = _bulk_intervals(e[i], c[i])
            fracs = [[0.05, 0.2, 0.4, 0.6, 0.8, 0.95]] if len(pieces) == 1 else [[0.1, 0.5, 0.9]] * 2
            for k, (lo, hi, _, exp_lo) in enumerate(pieces):
                for fr in fracs[k]:
                    xn, wn = _jacobi_rule(lo, lo + fr * (hi - lo), 0.0, exp_lo)
                    pts.append(lo + fr * (hi - lo)), nodes.append(xn), weights.append(wn)
                    below.append(first_mass[i] if k == 1 else 0.0)
        pts, below = np.reshape(pts, (P, 6)), np.reshape(below, (P, 6))
        nodes, weights = np.reshape(nodes, (P, 6, -1)), np.reshape(weights, (P, 6, -1))
        f = pointwise("density", nodes, col3(t), col3(s1), col3(s2), col3(c))
        want = below + np.sum(weights * f, -1)

        # One cdf call: a grid across the support, the six points, and three points in the gap.
        grid = top[:, None] * np.linspace(-0.1, 1.3, 701)
        in_gap = e[:, 1:2] + (e[:, 2:3] - e[:, 1:2]) * np.array([1e-3, 0.5, 1 - 1e-3])
        gap = np.where(sep[:, None], in_gap, top[:, None])
        F, got, gap_F = np.split(cdf_rows(np.concatenate([grid, pts, gap], 1), t, s1, s2, c), [701, 707], 1)

    assert np.all(np.diff(F, axis=1) >= -1e-12)
    lo = np.maximum(e[:, :1], 0.0)
    assert np.all(F[grid <= lo] == 0.0) and np.all(F[grid >= top[:, None]] == 1.0)
    assert np.all(((F > 0) & (F < 1)) == ((grid > lo) & (grid < top[:, None])))
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert sep.sum() >= 5
    np.testing.assert_allclose(gap_F[sep], np.repeat(first_mass[sep, None], 3, 1), atol=1e-3)


# ------------------------------------------------------------------------ Monte Carlo (pdbjax.simulate)

N_MC, P_MC = 2000, 800
MC_POPS = {"pub": (1.0, 1.0, 1.0), "merged": (0.5, 1.0, 3.0), "separated": (0.5, 1.0, 12.0)}


@functools.lru_cache(maxsize=None)
def _eigenvalues(pop: tuple, spikes: tuple, seed: int) -> np.ndarray:
    """Ascending eigenvalues ``s_j^2`` of one simulated ``N_MC x P_MC`` matrix (float64)."""
    with x64():
        w = np.asarray(simulate(jax.random.key(seed), N_MC, P_MC, PDB(*pop), spikes, dtype=jnp.float64))
    return np.linalg.eigvalsh(w.T @ w)


@pytest.mark.parametrize("name", list(MC_POPS))
def test_simulated_bulk_matches_cdf_edges_and_moments(name):
    pop, c, seeds = MC_POPS[name], P_MC / N_MC, range(4)
    lam = np.stack([_eigenvalues(pop, (), s) for s in seeds])
    with x64():
        F = cdf_rows(lam, *pop, c)
        e = per_population("edges", *pop, c)
        gamma = per_population("moments", *pop, c, k=5)[:3]
    n = lam.shape[1]
    ks = np.maximum(np.arange(1, n + 1) / n - F, F - np.arange(n) / n).max(1)
    assert ks.max() <= 0.02, ks
    beta = e[np.isfinite(e)]
    assert len(beta) == (4 if name == "separated" else 2)
    # Extremes (and the two ends of the widest spacing, for separated bulks), averaged over seeds:
    # at this size the largest eigenvalue sits ~1% below lambda_+ (Tracy-Widom scale N^{-2/3}).
    j = np.argmax(np.diff(lam, axis=1), 1)
    rows = np.arange(len(lam))
    ends = [lam[:, 0], lam[rows, j], lam[rows, j + 1], lam[:, -1]] if len(beta) == 4 else [lam[:, 0], lam[:, -1]]
    mean_ends = np.array([v.mean() for v in ends])
    assert np.all(np.abs(mean_ends - beta) <= 0.02 * beta.max()), (mean_ends, beta)
    empirical = np.stack([np.mean(lam**k, 1) for k in (1, 2, 3)], 1)
    np.testing.assert_allclose(empirical, np.broadcast_to(gamma, empirical.shape), rtol=0.02)


SPIKE_CASES = {  # name: (population, spikes); None: 5 lambda_+ and a gap spike at sqrt(alpha_2 alpha_3)
    "pub-above": ((1.0, 1.0, 1.0), (10.0, 5.0)),
    "pdb-above-and-gap": ((0.5, 1.0, 50.0), None),
}


@pytest.mark.parametrize("name", list(SPIKE_CASES))
def test_simulated_spikes_are_recovered(name):
    """spike_inverse of the sample outliers, with c_K = (p - K) / N, gives back the population spikes.

    One matrix has sampling noise ~sqrt(2 / N) = 3% on an outlier (more in the gap), so recovery is
    checked on the mean over 8 matrices.
    """
    pop, spikes = SPIKE_CASES[name]
    K = 2
    c_k = (P_MC - K) / N_MC
    with x64():
        crit = per_population("critical_points", *pop, c_k)
        e = per_population("edges", *pop, c_k)
    if spikes is None:
        assert np.all(np.isfinite(e))
        spikes = (5.0 * float(e[3]), float(np.sqrt(crit[1] * crit[2])))
    outliers = []
    for seed in range(100, 108):
        lam = _eigenvalues(pop, spikes, seed)[::-1]
        if np.isfinite(e[2]):
            width = e[2] - e[1]
            in_gap = lam[(lam > e[1] + 0.05 * width) & (lam < e[2] - 0.05 * width)]
            assert len(in_gap) == 1, in_gap
            outliers.append([lam[0], in_gap[0]])
        else:
            outliers.append(lam[:K])
    outliers = np.array(outliers)
    with x64():
        alpha = pointwise("spike_inverse", outliers, *pop, c_k)
    rel = alpha / np.array(spikes) - 1
    assert np.all(np.isfinite(rel))
    assert np.all(np.abs(rel.mean(0)) <= 0.05), rel.mean(0)
    naive = np.abs((outliers / np.array(spikes) - 1).mean(0))
    assert naive.max() > 0.08  # the correction matters: a raw outlier is off by more than 8%


def test_spike_inverse_inverts_spike_map_on_admissible_values():
    t, s1, s2, c = _random_pops(6, 64)
    u = np.random.default_rng(7).uniform(0.02, 0.98, (64, 4))
    pop = (_col(t), _col(s1), _col(s2), _col(c))
    with x64():
        a1, a2, a3, a4, sep = _split_critical(per_population("critical_points", t, s1, s2, c))
        e = per_population("edges", t, s1, s2, c)
        above = a4 * (1 + 3 * u)
        gap = np.where(sep, a2 + (a3 - a2) * u, above)
        below = a1 * u
        alpha = np.concatenate([above, gap, below], 1)
        lam = pointwise("spike_map", alpha, *pop)
        back = pointwise("spike_inverse", lam, *pop)
        # Absorbed spikes (g' < 0) and sample values inside the support have no counterpart.
        a2_or_a4, a3_or_a1 = np.where(sep, a2, a4), np.where(sep, a3, a1)
        absorbed = np.concatenate([a1 + (a2_or_a4 - a1) * u, a3_or_a1 + (a4 - a3_or_a1) * u], 1)
        b1, b2 = e[:, :1], e[:, 1:2]
        b3, b4 = np.where(sep, e[:, 2:3], b1), np.where(sep, e[:, 3:4], b2)
        in_support = np.concatenate([b1 + (b2 - b1) * u, b3 + (b4 - b3) * u], 1)
        absorbed_map = pointwise("spike_map", absorbed, *pop)
        in_support_inverse = pointwise("spike_inverse", in_support, *pop)
    assert sep.sum() >= 10 and (~sep).sum() >= 10
    assert np.all(np.isfinite(lam))
    assert np.all(lam[:, :4] > np.nanmax(e, 1, keepdims=True))
    assert np.all(np.where(sep, (lam[:, 4:8] > b2) & (lam[:, 4:8] < b3), True))
    assert np.all((lam[:, 8:] > 0) & (lam[:, 8:] < b1))
    np.testing.assert_allclose(back, alpha, rtol=1e-8)
    assert np.all(np.isnan(absorbed_map)) and np.all(np.isnan(in_support_inverse))


# ------------------------------------------------------------------------ batching, jit, vmap, float32

LOOP_POPS = np.array([  # t, s1, s2, c: PUB, merged, separated, separated with s1 > s2 and c = 1
    [1.0, 2.0, 2.0, 0.3],
    [0.5, 1.0, 3.0, 0.5],
    [0.5, 1.0, 12.0, 0.4],
    [0.2, 5.0, 0.3, 1.0],
])
LOOP_X = np.linspace(0.05, 30.0, 9)


def _all_outputs(pop_col: PDB, c_col, pop_row: PDB, c_row) -> dict:
    """Every public function, with ``pop_col, c_col`` broadcast against the points ``LOOP_X`` (shape
    ``(B, 1)`` or scalar) and ``pop_row, c_row`` (``(B,)`` or scalar) for ``cdf`` and the functions
    without evaluation points."""
    return {
        "stieltjes": spectral.stieltjes(LOOP_X + 0.1j, pop_col, c_col),
        "density": spectral.density(LOOP_X, pop_col, c_col),
        "spike_map": spectral.spike_map(3 * LOOP_X, pop_col, c_col),
        "spike_inverse": spectral.spike_inverse(3 * LOOP_X, pop_col, c_col),
        "cdf": spectral.cdf(LOOP_X, pop_row, c_row),
        "critical_points": spectral.critical_points(pop_row, c_row),
        "edges": spectral.edges(pop_row, c_row),
        "lambda_plus": spectral.lambda_plus(pop_row, c_row),
        "moments": spectral.moments(pop_row, c_row, k=4),
    }


_all_outputs_jit = jax.jit(_all_outputs)


def _jnp_pop(*fields) -> PDB:
    return PDB(*(jnp.asarray(f) for f in fields))


def _batched_and_scalar(rows: np.ndarray):
    """``_all_outputs`` under jit for the batch of ``rows`` (t, s1, s2, c) and for each row alone."""
    t, s1, s2, c = rows.T
    col, row = (_jnp_pop(_col(t), _col(s1), _col(s2)), jnp.asarray(_col(c))), (_jnp_pop(t, s1, s2), jnp.asarray(c))
    batched = _all_outputs_jit(*col, *row)
    scalar = [_all_outputs_jit(_jnp_pop(*r[:3]), jnp.asarray(r[3]), _jnp_pop(*r[:3]), jnp.asarray(r[3])) for r in rows]
    batched = {k: np.asarray(v) for k, v in batched.items()}
    return batched, {k: np.stack([np.asarray(out[k]) for out in scalar]) for k in batched}


def test_batched_calls_equal_a_loop_of_scalar_calls():
    t, s1, s2, c = LOOP_POPS.T
    with x64():
        batched, loop = _batched_and_scalar(LOOP_POPS)
        for name in loop:
            assert batched[name].shape == loop[name].shape, name
            np.testing.assert_allclose(batched[name], loop[name], rtol=1e-12, atol=1e-300, err_msg=name)
        # vmap over the population pytree and c (under jit).
        one = lambda pop, cc: (spectral.density(LOOP_X, pop, cc), spectral.edges(pop, cc))  # noqa: E731
        vmapped = jax.jit(jax.vmap(one))(_jnp_pop(t, s1, s2), jnp.asarray(c))
        np.testing.assert_allclose(np.asarray(vmapped[0]), loop["density"], rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(np.asarray(vmapped[1]), loop["edges"], rtol=1e-12)
    assert loop["stieltjes"].shape == loop["density"].shape == loop["cdf"].shape == (4, 9)
    assert loop["edges"].shape == loop["moments"].shape == (4, 4) and loop["lambda_plus"].shape == (4,)
    # The batch covers what it claims: merged and separated bulks, and c = 1.
    assert list(_n_edges(loop["edges"])) == [2, 2, 4, 4]
    for name in ("stieltjes", "density", "cdf", "lambda_plus", "moments"):
        assert np.all(np.isfinite(loop[name])), name
    assert np.all(np.isfinite(loop["spike_inverse"][:, -1]))  # 90 is above every lambda_+


def test_eager_calls_equal_jit():
    """Concrete (validated, not traced) inputs give the same numbers; boundary values t, c in {0, 1} are valid."""
    t = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    c = np.array([1.0, 1.0, 0.5, 1e-6, 1.0, 0.4])
    s1, s2 = np.ones(6), np.array([2.0, 2.0, 2.0, 2.0, 2.0, 12.0])
    with x64():
        eager = np.asarray(spectral.edges(_jnp_pop(t, s1, s2), jnp.asarray(c)))
        jitted = per_population("edges", t, s1, s2, c)
    assert np.all(np.isfinite(eager[:, :2])) and np.isfinite(eager[-1, 3])
    np.testing.assert_allclose(eager, jitted, rtol=1e-12)


def test_float32_runs_and_is_close_to_float64():
    t, s1, s2, c = _random_pops(8, 16)
    frac = np.linspace(0.02, 0.98, 25)
    with x64():
        e = per_population("edges", t, s1, s2, c)
    top = np.nanmax(e, 1)
    x = e[:, :1] + (top - e[:, 0])[:, None] * frac  # across the support (and any gap)
    lam = top[:, None] * np.array([1.2, 2.0, 5.0])

    def run(dtype):
        pop = tuple(np.asarray(v, dtype) for v in (t, s1, s2, c))
        col = tuple(v[:, None] for v in pop)
        return {
            "density": pointwise("density", np.asarray(x, dtype), *col),
            "spike_inverse": pointwise("spike_inverse", np.asarray(lam, dtype), *col),
            "edges": per_population("edges", *pop),
            "moments": per_population("moments", *pop, k=5),
        }

    with x64():
        ref = run(np.float64)
    got = run(np.float32)
    for name, value in got.items():
        assert value.dtype == np.float32, (name, value.dtype)
    assert set(_n_edges(ref["edges"])) == {2, 4}
    peak = ref["density"].max(1, keepdims=True)
    assert np.all(np.abs(got["density"] - ref["density"]) <= 1e-3 * peak)
    for name in ("edges", "spike_inverse", "moments"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, err_msg=name)


# ------------------------------------------------------------------------ invalid input

BAD = {
    "c=0": (0.5, 1.0, 2.0, 0.0),
    "c>1": (0.5, 1.0, 2.0, 1.5),
    "c<0": (0.5, 1.0, 2.0, -0.3),
    "c=nan": (0.5, 1.0, 2.0, np.nan),
    "s1=0": (0.5, 0.0, 2.0, 0.5),
    "s1<0": (0.5, -1.0, 2.0, 0.5),
    "s2=0": (0.5, 1.0, 0.0, 0.5),
    "s2<0": (0.5, 1.0, -2.0, 0.5),
    "s2=inf": (0.5, 1.0, np.inf, 0.5),
    "t<0": (-0.1, 1.0, 2.0, 0.5),
    "t>1": (1.1, 1.0, 2.0, 0.5),
    "t=nan": (np.nan, 1.0, 2.0, 0.5),
    "t=1,s2<0": (1.0, 1.0, -2.0, 0.5),  # an unused atom is still validated
}


def _eager_calls(pop: PDB, c) -> dict:
    """One concrete (non-jit) call of each public function."""
    return {
        "stieltjes": lambda: spectral.stieltjes(1.0 + 0.5j, pop, c),
        "density": lambda: spectral.density(1.0, pop, c),
        "cdf": lambda: spectral.cdf(jnp.asarray([1.0]), pop, c),
        "critical_points": lambda: spectral.critical_points(pop, c),
        "edges": lambda: spectral.edges(pop, c),
        "lambda_plus": lambda: spectral.lambda_plus(pop, c),
        "spike_map": lambda: spectral.spike_map(5.0, pop, c),
        "spike_inverse": lambda: spectral.spike_inverse(20.0, pop, c),
        "moments": lambda: spectral.moments(pop, c),
    }


def _check_invalid(t, s1, s2, c):
    """Concrete input raises ValueError in every public function; under jit every output is NaN."""
    with x64():
        pop, cc = _jnp_pop(*(np.float64(v) for v in (t, s1, s2))), jnp.asarray(np.float64(c))
        calls = _eager_calls(pop, cc)
        assert set(calls) == set(NAMES)
        for call in calls.values():
            with pytest.raises(ValueError):
                call()
        with pytest.raises(ValueError, match="must"):  # the shared check, naming the field that fails
            spectral.check_population(pop, cc)
        outputs = _all_outputs_jit(pop, cc, pop, cc)
    assert set(outputs) == set(NAMES)
    for name, value in outputs.items():
        value = np.asarray(value)
        assert np.all(np.isnan(value.real if np.iscomplexobj(value) else value)), (name, value)


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_input_raises_or_gives_nan_under_jit(case):
    _check_invalid(*BAD[case])


def test_check_population_names_the_first_invalid_field_and_accepts_valid_batches():
    with pytest.raises(ValueError, match=r"sigma2_sq must be a finite positive variance; got -2\.0"):
        spectral.check_population(PDB(np.array([0.5, 0.5]), np.array([1.0, 1.0]), np.array([2.0, -2.0])), 0.5)
    with pytest.raises(ValueError, match=r"c = p / N must lie in \(0, 1\]; got 1\.5"):
        spectral.check_population(PDB(0.5, 1.0, 2.0), 1.5)
    spectral.check_population(PDB(np.array([0.0, 1.0]), np.array([1e-6, 1.0]), np.array([1.0, 1e6])), np.array([1.0, 0.01]))


_valid = {"t": st.floats(0.0, 1.0), "s": st.floats(1e-6, 1e6), "c": st.floats(1e-6, 1.0)}
_bad = {
    "t": st.one_of(st.floats(max_value=-1e-300), st.floats(min_value=1.0, exclude_min=True), st.just(np.nan)),
    "s": st.one_of(st.floats(max_value=0.0), st.just(np.inf), st.just(np.nan)),
    "c": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(np.nan)),
}


@st.composite
def _invalid_populations(draw):
    """(t, s1, s2, c) with at least one field drawn from its invalid set, the others valid."""
    kinds = {"t": "t", "s1": "s", "s2": "s", "c": "c"}
    bad = draw(st.sets(st.sampled_from(list(kinds)), min_size=1))
    return tuple(draw((_bad if k in bad else _valid)[kind]) for k, kind in kinds.items())


@settings(max_examples=40, deadline=None)
@given(_invalid_populations())
def test_invalid_input_property(tsc):
    _check_invalid(*tsc)


def test_invalid_rows_of_a_batch_are_nan_under_jit_and_the_rest_is_unaffected():
    rows = LOOP_POPS.copy()
    rows[1, 3], rows[2, 0] = 1.5, 1.1  # c > 1, t > 1
    with x64():
        batched, scalar = _batched_and_scalar(rows)
        good, _ = _batched_and_scalar(LOOP_POPS)
        with pytest.raises(ValueError):
            spectral.edges(_jnp_pop(*rows.T[:3]), jnp.asarray(rows[:, 3]))
    for name, value in batched.items():
        flat = value.real if np.iscomplexobj(value) else value
        assert np.all(np.isnan(flat[[1, 2]])), name
        np.testing.assert_array_equal(value[[0, 3]], good[name][[0, 3]], err_msg=name)
        # Row by row: the same math compiled for another shape may round differently in the last bits
        # (the cdf's closed-form density: 1e-14), as in the vmap-versus-loop test.
        np.testing.assert_allclose(value, scalar[name], rtol=1e-12, atol=0, err_msg=name)


# ------------------------------------------------------------------------ derivatives vs finite differences
#
# Oracle: central finite differences of the public functions themselves, in float64, with the step
# FD_STEP = 1e-6 relative to each input. Error budget of the difference quotient: truncation
# h^2 |f'''| / 6 ~ 1e-12 of the derivative scale |f| / |v|, rounding eps_f |f| / h ~ 1e-8 |f| / |v|
# (eps_f <= 1e-14: the relative noise of a bisection to full precision or of a Newton-polished
# Stieltjes root). Hence GRAD_RTOL = 1e-6 on |ad - fd| / (|fd| + |f| / |v|): 100x above that budget,
# while differentiating the bare bisection was off by O(1) (d alpha_1 / dc = 0 instead of -0.82).

GRAD_POPS = {  # t, sigma1_sq, sigma2_sq, c
    "pub": (1.0, 2.0, 2.0, 0.3),
    "merged": (0.5, 1.0, 3.0, 0.5),
    "separated": (0.5, 1.0, 12.0, 0.4),
    "separated-s1>s2": (0.3, 8.0, 0.5, 0.2),
}
# Evaluation points, differentiated too: z = z_re + i z_im (the second z on the real axis), density
# and cdf abscissae, spikes alpha (above, in the gap or above again, below) and outliers lam (same).
GRAD_POINTS = {"z_re": 2, "z_im": 1, "x_density": 2, "x_cdf": 4, "alpha": 3, "lam": 3}
GRAD_VARIABLES = ["t", "sigma1_sq", "sigma2_sq", "c"] + [f"{k}[{i}]" for k, n in GRAD_POINTS.items() for i in range(n)]
GRAD_OUTPUTS = (
    "stieltjes.real", "stieltjes.imag", "density", "cdf", "critical_points", "edges", "lambda_plus",
    "spike_map", "spike_inverse", "moments",
)
FD_STEP = 1e-6
GRAD_RTOL = 1e-6


def _grad_outputs(v):
    """Every public function at the flat input ``v = (t, s1, s2, c, *points)`` of one case."""
    pop, c, i, pts = PDB(v[0], v[1], v[2]), v[3], 4, {}
    for key, n in GRAD_POINTS.items():
        pts[key], i = v[i : i + n], i + n
    m = spectral.stieltjes(pts["z_re"] + 1j * jnp.concatenate([pts["z_im"], jnp.zeros(1, v.dtype)]), pop, c)
    return {
        "stieltjes.real": m.real,
        "stieltjes.imag": m.imag,
        "density": spectral.density(pts["x_density"], pop, c),
        "cdf": spectral.cdf(pts["x_cdf"], pop, c),
        "critical_points": spectral.critical_points(pop, c),
        "edges": spectral.edges(pop, c),
        "lambda_plus": spectral.lambda_plus(pop, c),
        "spike_map": spectral.spike_map(pts["alpha"], pop, c),
        "spike_inverse": spectral.spike_inverse(pts["lam"], pop, c),
        "moments": spectral.moments(pop, c, k=3),
    }


def _grad_points(e: np.ndarray, crit: np.ndarray, scale: float) -> np.ndarray:
    """Points inside bulks, in gaps, above and below the support, away from edges and cdf nodes."""
    sep = np.isfinite(e[2])
    b1, b2, top = e[0], e[1], np.nanmax(e)
    b3 = e[2] if sep else b1
    a1, a4 = crit[0], np.nanmax(crit)
    gap_or = lambda v, other: v if sep else other  # noqa: E731
    return np.array([
        b1 + 0.37 * (b2 - b1), 1.5 * top,  # z_re
        0.01 * scale,  # z_im
        b1 + 0.3 * (b2 - b1), b3 + 0.6 * (top - b3),  # x_density
        b1 + 0.41 * (b2 - b1), gap_or((b2 + b3) / 2, b1 + 0.83 * (b2 - b1)), b3 + 0.57 * (top - b3), 1.2 * top,
        1.5 * a4, gap_or(np.sqrt(crit[1] * crit[2]), 2 * a4), 0.5 * a1,  # alpha
        1.5 * top, gap_or((b2 + b3) / 2, 2 * top), 0.5 * b1,  # lam
    ])


@functools.lru_cache(maxsize=None)
def _grad_vs_fd():
    """``v`` (case, input) and ``{output: (value, jacrev, jacfwd, fd)}``, derivatives on the last axis."""
    pops = np.array(list(GRAD_POPS.values()))
    with x64():
        e = per_population("edges", *pops.T)
        crit = per_population("critical_points", *pops.T)
        v = np.stack([np.concatenate([p, _grad_points(ei, ci, max(p[1], p[2]))]) for p, ei, ci in zip(pops, e, crit)])
        jac = jax.jit(jax.vmap(lambda x: (jax.jacrev(_grad_outputs)(x), jax.jacfwd(_grad_outputs)(x))))
        rev, fwd = jac(jnp.asarray(v))
        steps = FD_STEP * np.abs(v)[:, :, None] * np.eye(v.shape[1])  # (case, input, input)
        shifted = np.concatenate([v[:, None] + steps, v[:, None] - steps, v[:, None]], 1)
        values = jax.jit(jax.vmap(jax.vmap(_grad_outputs)))(jnp.asarray(shifted))
    nv = v.shape[1]
    out = {}
    for name in GRAD_OUTPUTS:
        f = np.asarray(values[name])  # (case, 2 nv + 1, *out)
        fd = (f[:, :nv] - f[:, nv : 2 * nv]) / (2 * FD_STEP * np.abs(v).reshape(v.shape + (1,) * (f.ndim - 2)))
        out[name] = (f[:, -1], np.asarray(rev[name]), np.asarray(fwd[name]), np.moveaxis(fd, 1, -1))
    return v, out


@pytest.mark.parametrize("name", GRAD_OUTPUTS)
def test_grad_matches_central_finite_differences(name):
    """d/d(c, t, sigma1_sq, sigma2_sq, evaluation point) of every public function, reverse and forward mode."""
    v, out = _grad_vs_fd()
    value, rev, fwd, fd = out[name]
    finite = np.isfinite(value)[..., None] & np.ones(v.shape[1], bool)
    # PUB has t = 1: t + h is invalid (NaN), and H = delta(s) does not depend on t at all.
    pub = list(GRAD_POPS).index("pub")
    assert np.all(np.isnan(fd[pub][..., 0][finite[pub][..., 0]]))
    assert np.all(np.abs(rev[pub][..., 0]) <= 1e-12 * np.nanmax(np.abs(value[pub])) / v[pub, 0])
    finite[pub][..., 0] = False
    # NaN outputs (padding, inadmissible points) carry a zero derivative, never NaN.
    assert np.all(rev[~np.isfinite(value)] == 0) and np.all(fwd[~np.isfinite(value)] == 0)
    assert np.all(np.isfinite(fd[finite])) and np.all(np.isfinite(rev[finite]))
    # Derivative scale |f| / |v| (largest |f| of this function in the case), see the error budget above.
    size = np.nanmax(np.abs(value.reshape(len(v), -1)), 1).reshape((-1,) + (1,) * (value.ndim - 1) + (1,))
    scale = size / np.abs(v).reshape((len(v),) + (1,) * (value.ndim - 1) + (-1,))
    err = np.where(finite, np.abs(rev - fd) / (np.abs(fd) + scale), 0.0)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= GRAD_RTOL, (list(GRAD_POPS)[worst[0]], GRAD_VARIABLES[worst[-1]], rev[worst], fd[worst])
    np.testing.assert_allclose(fwd[finite], rev[finite], rtol=1e-9, atol=1e-12 * scale.max())
    if name in ("critical_points", "edges"):  # the padding is exercised
        assert set(np.isfinite(value).sum(1)) == {2, 4}


def test_grad_under_jit_and_vmap_in_float32_and_float64():
    """jit(vmap(grad)) of a loss through every root and transform equals per-row grads; float32 runs."""
    pops = np.array(list(GRAD_POPS.values()))

    def loss(p):
        pop, c = PDB(p[0], p[1], p[2]), p[3]
        crit, lp = spectral.critical_points(pop, c), spectral.lambda_plus(pop, c)
        return (
            jnp.sum(jnp.where(jnp.isfinite(crit), crit, 0.0)) + lp + spectral.spike_inverse(1.5 * lp, pop, c)
            + spectral.density(0.3 * lp, pop, c) + spectral.cdf(0.37 * lp[None], pop, c)[0]
            + spectral.stieltjes(0.5 * lp + 0.1j, pop, c).imag + spectral.moments(pop, c)[2] / lp**3
        )

    grad = jax.grad(loss)
    with x64():
        g64 = np.asarray(jax.jit(jax.vmap(grad))(jnp.asarray(pops)))
        one = jax.jit(grad)
        rows = np.stack([np.asarray(one(jnp.asarray(p))) for p in pops])
    g32 = jax.jit(jax.vmap(grad))(jnp.asarray(pops, jnp.float32))
    assert g32.dtype == jnp.float32 and np.all(np.isfinite(g64))
    np.testing.assert_allclose(g64, rows, rtol=1e-12, atol=1e-15)
    # float32: ~1e-7 relative noise in each root, amplified by the conditioning of the loss.
    np.testing.assert_allclose(np.asarray(g32), g64, rtol=1e-3, atol=1e-5 * np.abs(g64).max())


def test_nan_outputs_and_invalid_rows_leave_the_gradient_of_shared_inputs_finite():
    """Padding, inadmissible points (one exactly on a pole of g) and an invalid row: zero contribution."""
    rows = np.concatenate([LOOP_POPS, [[1.1, 1.0, 2.0, 0.5]]])  # last row: t > 1, invalid
    points = np.concatenate([LOOP_X, [1.0, 2.0, 3.0, 5.0, 0.3, -1.0]])  # s1 or s2 of every row, x < 0

    def loss(scale, rows):
        t, s1, s2, c = (rows[:, k] for k in range(4))
        pop, col = PDB(t, s1 * scale, s2 * scale), PDB(t[:, None], s1[:, None] * scale, s2[:, None] * scale)
        outs = (
            spectral.stieltjes(points + 0.1j, col, c[:, None]).real, spectral.density(points, col, c[:, None]),
            spectral.spike_map(points, col, c[:, None]), spectral.spike_inverse(points, col, c[:, None]),
            spectral.cdf(points, pop, c), spectral.critical_points(pop, c), spectral.edges(pop, c),
            spectral.lambda_plus(pop, c), spectral.moments(pop, c),
        )
        return sum(jnp.sum(jnp.where(jnp.isfinite(y), y, 0.0)) for y in outs)

    with x64():
        g = jax.jit(jax.grad(loss, argnums=(0, 1)))
        g_scale, g_rows = (np.asarray(a) for a in g(1.0, jnp.asarray(rows)))
        want_scale, want_rows = (np.asarray(a) for a in g(1.0, jnp.asarray(rows[:-1])))
    assert np.isfinite(g_scale) and np.all(np.isfinite(g_rows))
    np.testing.assert_allclose(g_scale, want_scale, rtol=1e-12)
    np.testing.assert_allclose(g_rows[:-1], want_rows, rtol=1e-12, atol=1e-300)
    assert np.all(g_rows[-1] == 0)


def test_t_derivative_where_an_atom_vanishes():
    """t = 1 (or 0) with sigma1_sq != sigma2_sq: a bulk splits off as t leaves the bound, so the
    root-based functions have no t-derivative (NaN) while the other derivatives stay finite; the
    Stieltjes transform, density (fixed eta) and moments are analytic in t and give the one-sided
    derivative, checked against a second-order one-sided difference."""
    h = 1e-5

    def roots(t, s1, s2, c):
        pop = PDB(t, s1, s2)
        return {
            "critical_points": spectral.critical_points(pop, c)[:2], "edges": spectral.edges(pop, c)[:2],
            "lambda_plus": spectral.lambda_plus(pop, c), "spike_map": spectral.spike_map(6.0, pop, c),
            "spike_inverse": spectral.spike_inverse(6.0, pop, c),
        }

    def analytic(t, s1, s2, c):
        pop = PDB(t, s1, s2)
        return {
            "stieltjes": spectral.stieltjes(jnp.array([1.0, 8.0]) + 0.1j, pop, c).imag,
            "density": spectral.density(1.0, pop, c, eta=1e-8), "moments": spectral.moments(pop, c),
        }

    def with_cdf(t, s1, s2, c):
        return {**roots(t, s1, s2, c), "cdf": spectral.cdf(jnp.array([1.0]), PDB(t, s1, s2), c)}

    rows = np.array([[1.0, 1.0, 7.0, 0.3], [0.0, 7.0, 1.0, 0.3], [1.0, 1.0, 1.0, 0.3]])  # the last: PUB
    inward = np.array([-1.0, 1.0, -1.0])[:, None] * np.array([0.0, h, 2 * h])  # t, t -+ h, t -+ 2h
    shifted = np.repeat(rows[:, None], 3, 1)
    shifted[..., 0] += inward
    with x64():
        # Separate Jacobians: a NaN entry spreads to every row of a jacrev (NaN * 0 = NaN).
        jac = {
            name: value
            for fn in (with_cdf, analytic)
            for name, value in jax.jit(jax.vmap(jax.jacrev(fn, argnums=(0, 1, 2, 3))))(*jnp.asarray(rows.T)).items()
        }
        values = jax.jit(jax.vmap(jax.vmap(analytic)))(*jnp.asarray(np.moveaxis(shifted, -1, 0)))
        # Forward mode with t not perturbed at all (a symbolic zero tangent): finite.
        s1_only = jax.jit(lambda s: jax.jvp(lambda x: roots(1.0, x, 7.0, 0.3), (s,), (1.0,))[1])(1.0)
        # A forward-mode Jacobian that includes t is NaN in every column there (documented).
        fwd_all = jax.jit(jax.jacfwd(lambda p: roots(*p)["lambda_plus"]))(jnp.asarray(rows[0]))
    assert np.all(np.isnan(np.asarray(fwd_all)))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in s1_only.values())
    for name, j in jac.items():
        j = np.stack([np.asarray(a) for a in j], -1)  # (row, *out, 4)
        assert np.all(np.isfinite(j[..., 1:])), name
        np.testing.assert_allclose(j[0, ..., 1:], j[2, ..., 1:] * [1, 0, 1], rtol=1e-12, err_msg=name)  # = PUB
        assert np.all(np.abs(j[2, ..., 0]) <= 1e-12), name  # PUB: H does not depend on t
        if name in values:
            f = np.asarray(values[name])  # (row, 3, *out)
            sign = np.array([-1.0, 1.0]).reshape((2,) + (1,) * (f.ndim - 2))  # inward: t = 1 - h, t = 0 + h
            one_sided = (-3 * f[:2, 0] + 4 * f[:2, 1] - f[:2, 2]) / (2 * h) * sign
            np.testing.assert_allclose(j[:2, ..., 0], one_sided, rtol=1e-5, err_msg=name)
        else:
            assert np.all(np.isnan(j[:2, ..., 0])), name


def test_second_derivatives_match_finite_differences():
    """The implicit-derivative rules are themselves differentiable (the rule calls the root again)."""
    c0, step = 0.4, 1e-6

    def fns(c):
        pop = PDB(0.5, 1.0, 12.0)
        return jnp.concatenate([
            spectral.critical_points(pop, c), spectral.spike_inverse(jnp.array([60.0, 3.0]), pop, c),
            spectral.stieltjes(3.0 + 0.1j, pop, c).imag[None],
        ])

    with x64():
        first = jax.jit(jax.vmap(jax.jacfwd(fns)))(jnp.array([c0, c0 + step * c0, c0 - step * c0]))
        second = jax.jit(jax.jacfwd(jax.jacrev(fns)))(c0)
    fd = (np.asarray(first[1]) - np.asarray(first[2])) / (2 * step * c0)
    assert np.all(np.isfinite(fd))
    np.testing.assert_allclose(np.asarray(second), fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max())


def test_silverstein_z_derivatives_are_those_of_silverstein_z():
    """The closed forms PDBLS's least squares takes, against automatic differentiation of the equation
    itself (float64; real ``m`` of both signs, weights 0 to 1, a point near the pole ``m = -1/10``;
    broadcast arguments)."""
    m = np.array([-7.0, -0.7, -0.09, 0.01, 0.3, 2.5])
    theta = np.array([[0.3, 1.7, 0.4], [1.0, 2.0, 2.0], [0.0, 0.5, 9.0], [0.8, 10.0, 1.0]])
    c = 0.37
    with x64():
        z = lambda th, mm: spectral.silverstein_z(mm, th[0], th[1], th[2], c)  # noqa: E731
        want_j = jax.vmap(lambda th: jax.vmap(lambda mm: jax.jacfwd(z)(th, mm))(jnp.asarray(m)))(jnp.asarray(theta))
        want_t = jax.vmap(lambda th: jax.vmap(lambda mm: jax.hessian(z)(th, mm))(jnp.asarray(m)))(jnp.asarray(theta))
        got_j, got_t = spectral.silverstein_z_derivatives(m[None, :], *(theta[:, i, None] for i in range(3)), c)
    assert got_j.shape == (4, 6, 3) and got_t.shape == (4, 6, 3, 3)
    # the same rational functions evaluated in another order: rounding of float64 relative to the largest
    np.testing.assert_allclose(np.asarray(got_j), np.asarray(want_j), rtol=1e-12, atol=1e-12 * np.abs(want_j).max())
    np.testing.assert_allclose(np.asarray(got_t), np.asarray(want_t), rtol=1e-12, atol=1e-12 * np.abs(want_t).max())


@pytest.mark.parametrize("scale", [1e-30, 1e-18, 1e-14, 1e14, 1e18, 1e30])
def test_float32_functions_are_scale_equivariant_over_the_whole_range(scale):
    """Eigenvalues of 1e-30 to 1e30 in float32: every function equals its unit-scale value in the units the scale
    implies (edges and spikes times k, density, m and the D-transform over k, the shrinker times sqrt k). The derivatives behind the
    edges formed s^2 and (a - s)^3, and the Stieltjes transform and D-transform raw powers of the units, which
    over- or underflowed from 1e13 (the gap between two bulks was lost; lambda_plus was inf from 1e20). Tolerance
    1e-5 relative: float32 rounding of the same computation in other units."""
    from pdbjax.shrink import d_transform, optimal_shrinker

    def values(k):
        k = np.float32(k)
        pop, c = PDB(np.float32(0.5), np.float32(1.0) * k, np.float32(12.0) * k), np.float32(0.4)
        x = jnp.array([1.0, 3.0, 10.0, 30.0], jnp.float32) * k
        return [np.asarray(v, np.complex128) for v in (
            spectral.edges(pop, c) / k, spectral.critical_points(pop, c) / k, spectral.lambda_plus(pop, c) / k,
            spectral.cdf(x, pop, c), spectral.density(x, pop, c) * k, spectral.spike_inverse(np.float32(60.0) * k, pop, c) / k,
            spectral.stieltjes(jnp.complex64(3.0 + 0.1j) * k, pop, c) * k,
            optimal_shrinker(np.float32(6.0) * np.sqrt(k), pop, c) / np.sqrt(k),
            d_transform(np.float32(6.0) * np.sqrt(k), pop, c) * k)]

    for got, want in zip(values(scale), values(1.0)):
        assert np.all(np.isfinite(got)), got
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.max(np.abs(want)))


@pytest.mark.parametrize("num", [1, 0, 2.5, True])
def test_cdf_needs_two_quadrature_nodes(num):
    """num < 2 divided by zero (num - 1); a float or bool num is no node count."""
    with pytest.raises(ValueError, match="num must be an int >= 2"):
        spectral.cdf(1.0, PDB(0.5, 1.0, 2.0), 0.5, num=num)
