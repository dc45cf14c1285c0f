r"""Spectral core of the PDB model: Stieltjes transform, density, edges, spike map, moments.

Conventions (``shared/spec/pdb-model.md`` sections 1-5). A weight matrix ``W`` is ``N x p`` with
``p <= N`` and ``c = p / N``; its eigenvalues are ``lambda_j = s_j^2`` (squared singular values, no
``1/N``). The model is ``W = X Sigma^{1/2}`` with ``X`` i.i.d. of variance ``1/N``; the bulk population
law is the two-atom measure

.. math::  H = t\,\delta_{\sigma_1^2} + (1 - t)\,\delta_{\sigma_2^2},

and PUB (Marchenko-Pastur) is ``t = 1``. Everything here is a pure function of arrays: the population
fields, ``c`` and the evaluation points broadcast against each other with NumPy rules, so one call
evaluates many populations at once; all functions run under ``jit``/``vmap``/``grad`` on CPU, GPU and
TPU (fixed iteration counts, no ``roots``/non-symmetric ``eig``). The dtype follows the inputs: call
with float64 arrays inside ``jax.enable_x64(True)`` for double precision.

Invalid input (``c`` outside ``(0, 1]``, a variance ``<= 0``, ``t`` outside ``[0, 1]``, non-finite values)
raises ``ValueError`` when the arguments are concrete; under ``jit`` (traced arguments) the affected
outputs are NaN instead.

References:
  Silverstein & Choi (1995), "Analysis of the limiting spectral distribution of large dimensional
  random matrices", J. Multivariate Anal. 54 (support theorem, eq. 1.6).
  Bai & Yao (2012), "On sample eigenvalues in a generalized spiked population model", JMVA 106.
  Wu, Zhu & Li (2025), "Weight matrices compression based on PDB model in deep neural networks", ICML.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pdbjax._validate import is_traced

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "PDB",
    "stieltjes",
    "density",
    "cdf",
    "critical_points",
    "edges",
    "lambda_plus",
    "spike_map",
    "spike_inverse",
    "moments",
]

_BISECT_ITERS = 96
_FIXED_ITERS = 32
_CONT_STAGES = 32
_NEWTON_ITERS = 3
_POLISH_ITERS = 4


class PDB(NamedTuple):
    r"""Bulk population ``H = t delta(sigma1_sq) + (1 - t) delta(sigma2_sq)`` (a pytree).

    Every field may carry batch dimensions; fields broadcast against each other.

    Attributes:
      t: weight of the first atom, in ``[0, 1]``.
      sigma1_sq: first population variance ``sigma_1^2 > 0`` (units of the eigenvalues).
      sigma2_sq: second population variance ``sigma_2^2 > 0``.
    """

    t: ArrayLike
    sigma1_sq: ArrayLike
    sigma2_sq: ArrayLike

    @classmethod
    def pub(cls, sigma_sq: ArrayLike) -> "PDB":
        """The PUB (Marchenko-Pastur) population ``H = delta(sigma_sq)``: ``t = 1``."""
        sigma_sq = jnp.asarray(sigma_sq)
        return cls(jnp.ones_like(sigma_sq), sigma_sq, sigma_sq)


# --------------------------------------------------------------------------------------------------
# Input handling


def _float_dtype(*xs: ArrayLike) -> jnp.dtype:
    dtype = jnp.result_type(*[jnp.asarray(x).dtype for x in xs])
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _prepare(pop: PDB, c: ArrayLike, *points: ArrayLike):
    """Cast population, ratio and evaluation points to one float dtype and validate them.

    Returns ``(t, s1, s2, c, valid, *points)``: the population with degenerate atoms merged
    (``t = 1`` uses ``sigma1_sq`` for both atoms, ``t = 0`` uses ``sigma2_sq``), and a boolean mask of
    valid parameters, used to put NaN in the outputs under ``jit``.
    """
    real_points = [p for p in points if not jnp.iscomplexobj(p)]
    dtype = _float_dtype(*pop, c, *real_points)
    t, s1, s2, c = (jnp.asarray(v, dtype) for v in (*pop, c))
    valid = (
        (c > 0) & (c <= 1) & (t >= 0) & (t <= 1) & (s1 > 0) & (s2 > 0)
        & jnp.isfinite(c) & jnp.isfinite(s1) & jnp.isfinite(s2)
    )
    if not is_traced(t, s1, s2, c):
        _raise_if_invalid(np.asarray(t), np.asarray(s1), np.asarray(s2), np.asarray(c))
    s1, s2 = jnp.where(t <= 0, s2, s1), jnp.where(t >= 1, s1, s2)
    cast = [jnp.asarray(p, jnp.result_type(dtype, 1j) if jnp.iscomplexobj(p) else dtype) for p in points]
    return (t, s1, s2, c, valid, *cast)


def _raise_if_invalid(t: np.ndarray, s1: np.ndarray, s2: np.ndarray, c: np.ndarray) -> None:
    checks = [
        (~((c > 0) & (c <= 1)), "c = p / N must lie in (0, 1]", c),
        (~((t >= 0) & (t <= 1)), "t must lie in [0, 1]", t),
        (~(np.isfinite(s1) & (s1 > 0)), "sigma1_sq must be a finite positive variance", s1),
        (~(np.isfinite(s2) & (s2 > 0)), "sigma2_sq must be a finite positive variance", s2),
    ]
    for bad, message, value in checks:
        if np.any(bad):
            first = np.asarray(value)[bad] if np.ndim(value) else value
            raise ValueError(f"{message}; got {np.ravel(first)[0]!r}")


def _nan_where_invalid(valid: Array, x: Array) -> Array:
    return jnp.where(valid, x, jnp.nan)


# --------------------------------------------------------------------------------------------------
# The map g (z as a function of alpha = -1/m) and its derivatives


def _g(alpha, t, s1, s2, c):
    r"""``g(a) = a + c a [t s1 / (a - s1) + (1 - t) s2 / (a - s2)]``: inverse of ``-1/m`` on the real line."""
    return alpha + c * alpha * (t * s1 / (alpha - s1) + (1 - t) * s2 / (alpha - s2))


def _dg(alpha, t, s1, s2, c):
    r"""``g'(a) = 1 - c t s1^2 / (a - s1)^2 - c (1 - t) s2^2 / (a - s2)^2``."""
    return 1 - c * t * s1**2 / (alpha - s1) ** 2 - c * (1 - t) * s2**2 / (alpha - s2) ** 2


def _d2g(alpha, t, s1, s2, c):
    return 2 * c * t * s1**2 / (alpha - s1) ** 3 + 2 * c * (1 - t) * s2**2 / (alpha - s2) ** 3


def _bisect(f, lo: Array, hi: Array, increasing: bool | Array) -> Array:
    """Root of ``f`` in ``(lo, hi)`` by a fixed number of bisection steps (f changes sign once)."""

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = (f(mid) < 0) == increasing
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = lax.fori_loop(0, _BISECT_ITERS, body, (lo, hi))
    return 0.5 * (lo + hi)


def _critical(t, s1, s2, c):
    """The real zeros of ``g'`` as ``(a1, a2, a3, a4, separated)``.

    ``g'`` is decreasing on ``(0, s_lo)`` (from ``1 - c`` to ``-inf``), increasing on ``(s_hi, inf)`` and
    concave on ``(s_lo, s_hi)``, so there is one zero ``a1`` below ``s_lo``, one zero ``a4`` above
    ``s_hi`` (at most ``s_hi (1 + sqrt c)``), and two zeros ``a2 < a3`` between the atoms exactly when
    the maximum of ``g'`` there is positive (two separated bulks). ``a2, a3`` are NaN otherwise.
    """
    s_lo, s_hi = jnp.minimum(s1, s2), jnp.maximum(s1, s2)
    dg = lambda a: _dg(a, t, s1, s2, c)  # noqa: E731
    zero = jnp.zeros_like(s_lo)
    a1 = _bisect(dg, zero, s_lo, increasing=False)
    a4 = _bisect(dg, s_hi, s_hi * (1 + jnp.sqrt(c)), increasing=True)
    a_max = _bisect(lambda a: _d2g(a, t, s1, s2, c), s_lo, s_hi, increasing=False)
    separated = (s_hi > s_lo) & (dg(a_max) > 0)
    a2 = _bisect(dg, s_lo, a_max, increasing=True)
    a3 = _bisect(dg, a_max, s_hi, increasing=False)
    nan = jnp.full_like(a2, jnp.nan)
    return a1, jnp.where(separated, a2, nan), jnp.where(separated, a3, nan), a4, separated


def _stack_sorted(values) -> Array:
    """Stack on a new last axis and sort ascending, NaN last."""
    return jnp.sort(jnp.stack(values, axis=-1), axis=-1)


# --------------------------------------------------------------------------------------------------
# Public functions


def critical_points(pop: PDB, c: ArrayLike) -> Array:
    r"""Real critical points ``alpha_i`` of ``g`` (zeros of ``g'``), ascending, NaN-padded to 4.

    They solve the quartic
    ``(a - s1)^2 (a - s2)^2 - c t s1^2 (a - s2)^2 - c (1 - t) s2^2 (a - s1)^2 = 0``
    (spec section 4). Two values for a merged bulk, four for two separated bulks.

    Returns:
      Array of shape ``broadcast(pop, c).shape + (4,)``.
    """
    t, s1, s2, c, valid = _prepare(pop, c)
    a1, a2, a3, a4, _ = _critical(t, s1, s2, c)
    return _nan_where_invalid(valid[..., None], _stack_sorted([a1, a2, a3, a4]))


def edges(pop: PDB, c: ArrayLike) -> Array:
    r"""Support edges ``beta_i = g(alpha_i)`` of the bulk law, ascending, NaN-padded to 4.

    ``[beta_1, beta_2]`` is a merged bulk; ``[beta_1, beta_2] U [beta_3, beta_4]`` two separated bulks
    (Silverstein-Choi). For ``t = 1`` this is the Marchenko-Pastur support
    ``sigma^2 (1 -+ sqrt c)^2``.
    """
    t, s1, s2, c, valid = _prepare(pop, c)
    alphas = _critical(t, s1, s2, c)[:4]
    betas = [_g(a, t, s1, s2, c) for a in alphas]
    return _nan_where_invalid(valid[..., None], _stack_sorted(betas))


def lambda_plus(pop: PDB, c: ArrayLike) -> Array:
    r"""The noise boundary ``lambda_+ = max_i beta_i = g(alpha_max)`` (upper edge of the bulk)."""
    t, s1, s2, c, valid = _prepare(pop, c)
    a4 = _critical(t, s1, s2, c)[3]
    return _nan_where_invalid(valid, _g(a4, t, s1, s2, c))


def spike_map(alpha: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""Sample location ``lambda = g(alpha)`` of a population spike ``alpha`` (Bai-Yao).

    A spike produces an outlier only where ``g'(alpha) > 0``: above the largest critical point
    (outlier above ``lambda_+``), between the two middle critical points of separated bulks (outlier
    in the gap), or below the smallest one when ``c < 1`` (outlier below the bulk). Elsewhere the spike
    is absorbed by the bulk and the result is NaN.
    """
    t, s1, s2, c, valid, alpha = _prepare(pop, c, alpha)
    a1, a2, a3, a4, separated = _critical(t, s1, s2, c)
    admissible = (alpha > a4) | (separated & (alpha > a2) & (alpha < a3)) | ((alpha > 0) & (alpha < a1))
    return _nan_where_invalid(valid & admissible, _g(alpha, t, s1, s2, c))


def spike_inverse(lam: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""Population value ``alpha`` of a sample outlier ``lam``: the admissible root of ``g(alpha) = lam``.

    ``lam > lambda_+`` gives the root in ``(alpha_max, lam)``; ``lam`` in the gap ``(beta_2, beta_3)`` of
    separated bulks the root in ``(alpha_2, alpha_3)``; ``0 < lam < beta_1`` the root in
    ``(0, alpha_1)``. ``g`` is increasing on each interval, so the root is found by bisection. NaN where
    ``lam`` lies inside the support. PUB closed form:
    ``alpha = (lam + s (1 - c) + sqrt((lam + s (1 - c))^2 - 4 lam s)) / 2``.
    """
    t, s1, s2, c, valid, lam = _prepare(pop, c, lam)
    a1, a2, a3, a4, separated = _critical(t, s1, s2, c)
    g = lambda a: _g(a, t, s1, s2, c)  # noqa: E731
    above = lam > g(a4)
    in_gap = separated & (lam > g(a2)) & (lam < g(a3))
    below = (lam > 0) & (lam < g(a1))
    lo = jnp.where(above, a4, jnp.where(in_gap, a2, 0.0))
    hi = jnp.where(above, jnp.maximum(lam, a4), jnp.where(in_gap, a3, a1))
    root = _bisect(lambda a: g(a) - lam, lo, hi, increasing=True)
    return _nan_where_invalid(valid & (above | in_gap | below), root)


def stieltjes(z: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""Companion Stieltjes transform ``m(z)`` of the ``N x N`` matrix ``W W^T`` (spec section 3).

    ``m`` is the Herglotz solution (``Im m > 0`` for ``Im z > 0``) of

    .. math::  z = -\frac{1}{m} + c \left[\frac{t s_1}{1 + s_1 m} + \frac{(1 - t) s_2}{1 + s_2 m}\right].

    Solved by the damped fixed point ``m <- (m + T(m)) / 2``, ``T(m) = -1 / (z - c \int \tau dH / (1 + \tau m))``
    at a height ``Im z >= max(s1, s2)`` where it contracts fast, then continued down to ``Im z`` along a
    geometric path with Newton steps on the same equation (a Newton step that leaves the upper half
    plane or does not reduce the residual is replaced by a fixed-point step, which stays Herglotz).
    A real ``z`` is treated as ``z + i 0^+`` (``Im z`` raised to ``1e-12 max(s1, s2)``).
    """
    t, s1, s2, c, valid, z = _prepare(pop, c, jnp.asarray(z) + 0j)
    return _nan_where_invalid(valid, _stieltjes(z, t, s1, s2, c))


def _stieltjes(z, t, s1, s2, c):
    scale = jnp.maximum(s1, s2)
    x, y_target = jnp.real(z), jnp.maximum(jnp.imag(z), 1e-12 * scale)
    y_start = jnp.maximum(y_target, scale)

    def residual(m, zz):
        return zz + 1 / m - c * (t * s1 / (1 + s1 * m) + (1 - t) * s2 / (1 + s2 * m))

    def fixed_step(m, zz):
        return -1 / (zz - c * (t * s1 / (1 + s1 * m) + (1 - t) * s2 / (1 + s2 * m)))

    def newton_step(m, zz):
        f = residual(m, zz)
        df = -1 / m**2 + c * (t * s1**2 / (1 + s1 * m) ** 2 + (1 - t) * s2**2 / (1 + s2 * m) ** 2)
        m_new = m - f / df
        ok = jnp.isfinite(m_new) & (jnp.imag(m_new) >= 0) & (jnp.abs(residual(m_new, zz)) <= jnp.abs(f))
        return jnp.where(ok, m_new, fixed_step(m, zz))

    z0 = x + 1j * y_start
    m = lax.fori_loop(0, _FIXED_ITERS, lambda _, m: 0.5 * (m + fixed_step(m, z0)), -1 / z0)
    log_ratio = jnp.log(y_target / y_start)

    def stage(k, m):
        zk = x + 1j * (y_start * jnp.exp(log_ratio * (k + 1) / _CONT_STAGES))
        return lax.fori_loop(0, _NEWTON_ITERS, lambda _, m: newton_step(m, zk), m)

    m = lax.fori_loop(0, _CONT_STAGES, stage, m)
    # Polish at the target point: near z = 0 the last stage alone leaves m under-converged.
    z_target = x + 1j * y_target
    return lax.fori_loop(0, _POLISH_ITERS, lambda _, m: newton_step(m, z_target), m)


def _default_eta(s1, s2):
    return 1e-8 * jnp.maximum(s1, s2)


def density(x: ArrayLike, pop: PDB, c: ArrayLike, eta: ArrayLike | None = None) -> Array:
    r"""Density of the bulk eigenvalues of ``W^T W`` (the ``p``-side law), at real ``x``.

    ``f(x) = Im s(x + i eta) / pi`` with ``s(z) = (m(z) + (1 - c) / z) / c``, which removes the atom of
    mass ``1 - c`` that the companion ``m`` carries at 0. ``eta`` defaults to ``1e-8 max(s1, s2)``.
    Zero for ``x <= 0``. Integrates to 1.
    """
    t, s1, s2, c, valid, x = _prepare(pop, c, x)
    eta = _default_eta(s1, s2) if eta is None else jnp.asarray(eta, x.dtype)
    z = x + 1j * eta
    s = (_stieltjes(z, t, s1, s2, c) + (1 - c) / z) / c
    f = jnp.where(x > 0, jnp.maximum(jnp.imag(s) / jnp.pi, 0.0), 0.0)
    return _nan_where_invalid(valid, f)


def cdf(x: ArrayLike, pop: PDB, c: ArrayLike, num: int = 2049) -> Array:
    r"""Distribution function ``F(x) = int_0^x f`` of the bulk law.

    Integrates :func:`density` over each bulk interval with Gauss-Chebyshev quadrature of the second
    kind in the variable ``u`` where ``lambda = (beta_lo + beta_hi)/2 + (beta_hi - beta_lo)/2 cos u``
    (the density has square-root zeros at the edges, so the integrand is smooth in ``u``), then
    interpolates linearly in ``u``. ``x`` must carry the evaluation points on its LAST axis; population
    fields broadcast against ``x[..., 0]``. Exact ``0`` below the support and ``1`` above it.
    """
    t, s1, s2, c, valid, x = _prepare(pop, c, x)
    batch = jnp.broadcast_shapes(t.shape, s1.shape, s2.shape, c.shape, x.shape[:-1])
    pop_b = [jnp.broadcast_to(v, batch)[..., None] for v in (t, s1, s2, c)]
    t_, s1_, s2_, c_ = pop_b
    a1, a2, a3, a4, separated = _critical(t_, s1_, s2_, c_)
    g = lambda a: _g(a, t_, s1_, s2_, c_)  # noqa: E731
    b1, b4 = g(a1), g(a4)
    b2, b3 = jnp.where(separated, g(a2), b4), jnp.where(separated, g(a3), b4)
    u = jnp.linspace(0.0, jnp.pi, num, dtype=x.dtype)

    def interval_mass(lo, hi, points):
        half, mid = (hi - lo) / 2, (hi + lo) / 2
        lam = mid - half * jnp.cos(u)
        f = density(lam, PDB(t_, s1_, s2_), c_)
        w = f * half * jnp.sin(u)
        du = u[1] - u[0]
        cum = jnp.concatenate([jnp.zeros_like(w[..., :1]), jnp.cumsum((w[..., 1:] + w[..., :-1]) * du / 2, -1)], -1)
        arg = jnp.arccos(jnp.clip((mid - points) / jnp.where(half > 0, half, 1.0), -1.0, 1.0))
        return jax.vmap(jnp.interp)(
            arg.reshape(-1, arg.shape[-1]),
            jnp.broadcast_to(u, cum.shape).reshape(-1, num),
            cum.reshape(-1, num),
        ).reshape(arg.shape), cum[..., -1:]

    first, m1 = interval_mass(b1, b2, x)
    second, m2 = interval_mass(b3, b4, x)
    total = m1 + m2
    out = (first + jnp.where(separated, second, 0.0)) / total
    out = jnp.where(x <= b1, 0.0, jnp.where(x >= b4, 1.0, out))
    return _nan_where_invalid(jnp.broadcast_to(valid, batch)[..., None], out)


def moments(pop: PDB, c: ArrayLike, k: int = 3) -> Array:
    r"""Moments ``gamma_1..gamma_k`` of the bulk law, ``gamma_j = lim (1/p) tr (W^T W)^j``.

    With ``h_j = t s1^j + (1 - t) s2^j`` and ``w = 1/z``, the companion transform is
    ``m = -w M(w)`` where ``M(w) = sum_j c_j w^j`` (``c_0 = 1``, ``c_j = c gamma_j``) solves
    ``M = 1 / (1 - c sum_{j >= 0} h_{j+1} w^{j+1} M^j)``; ``k`` iterations of this map on truncated power
    series give the exact coefficients. In particular ``gamma_1 = h_1``,
    ``gamma_2 = h_2 + c h_1^2``, ``gamma_3 = h_3 + 3 c h_1 h_2 + c^2 h_1^3`` (spec section 5).

    Returns:
      Array of shape ``broadcast(pop, c).shape + (k,)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    t, s1, s2, c, valid = _prepare(pop, c)
    t, s1, s2, c = (v[..., None] for v in jnp.broadcast_arrays(t, s1, s2, c))
    order = jnp.arange(k + 1)
    h = t * s1**order + (1 - t) * s2**order  # h[..., j] = h_j

    def mul(a, b):  # truncated product of power series in w (last axis: coefficient of w^j)
        return jnp.stack([jnp.sum(a[..., : j + 1] * b[..., j::-1], -1) for j in range(k + 1)], -1)

    def inv(a):  # 1 / a for a series with a_0 = 1
        out = [jnp.ones_like(a[..., 0])]
        for j in range(1, k + 1):
            out.append(-sum(a[..., i] * out[j - i] for i in range(1, j + 1)))
        return jnp.stack(out, -1)

    one = jnp.zeros_like(h).at[..., 0].set(1.0)
    series = one
    for _ in range(k):
        power, acc = one, jnp.zeros_like(h)
        for j in range(k):  # acc = sum_j h_{j+1} w^{j+1} M^j
            shifted = jnp.concatenate([jnp.zeros_like(power[..., :j + 1]), power[..., : k - j]], -1)
            acc = acc + h[..., j + 1 : j + 2] * shifted
            power = mul(power, series)
        series = inv(one - c * acc)
    return _nan_where_invalid(valid[..., None], series[..., 1:] / c)
