r"""Frobenius-optimal singular-value shrinkage under a fitted PDB noise (spec section 11).

Model: ``W = S + Z`` with ``S = sum_i theta_i u_i v_i^T`` of low rank and ``Z`` an ``N x p`` noise matrix
whose eigenvalues ``lambda = s^2`` (of ``Z^T Z``, no ``1/N``; spec section 1) follow the PDB law of
spec section 3 with population ``H = t delta(sigma1_sq) + (1 - t) delta(sigma2_sq)`` and ratio ``c``.
At real ``w = sigma^2`` above the bulk, ``m(w)`` (companion Stieltjes transform, of ``W W^T``) and
``s(w) = (m(w) + (1 - c) / w) / c`` (the ``p``-side one) are real, and the D-transform of the noise's
singular-value law (Benaych-Georges & Nadakuditi 2012) is

.. math::  D(\sigma) = \varphi(\sigma) \left(c\,\varphi(\sigma) + \frac{1 - c}{\sigma}\right)
           = \sigma^2\, s(\sigma^2)\, m(\sigma^2),
   \qquad \varphi(\sigma) = \int \frac{\sigma}{\sigma^2 - x^2}\, d\mu(x) = -\sigma\, s(\sigma^2).

An observed singular value ``sigma > sqrt(lambda_+)`` belongs to a signal component of strength
``theta`` with ``D(sigma) = 1 / theta^2``, and the singular value that minimises the Frobenius error
``||W' - S||_F`` of ``W' = sum_i w_i u'_i v'_i^T`` over the observed singular vectors is

.. math::  w(\sigma) = -2\, \frac{D(\sigma)}{D'(\sigma)} \quad (\sigma > \sqrt{\lambda_+}),
   \qquad w(\sigma) = 0 \quad (\sigma \le \sqrt{\lambda_+})

(OptShrink, Nadakuditi 2014). For white noise (``t = 1``, ``sigma^2 = 1``, Marchenko-Pastur with
``beta = c``) this is Gavish & Donoho's ``eta(y) = sqrt((y^2 - beta - 1)^2 - 4 beta) / y``.

How ``m`` is computed. On the real line above the support the Silverstein equation ``z(m)`` of spec
section 3 is ``z = g(alpha)`` at ``alpha = -1/m`` (spec section 4), so ``m(w) = -1 / alpha(w)`` with
``alpha(w) = g^{-1}(w) > alpha_max``: :func:`pdbjax.spectral.spike_inverse`, a bisection whose
``custom_jvp`` carries the implicit derivative ``d alpha / dw = 1 / g'(alpha)`` (equivalently
``dm/dw = 1 / (dz/dm)``). ``D'`` is the forward-mode derivative of ``D`` through it, exact up to
rounding (no finite differences, no differentiated iterations). It is the same ``m`` as
:func:`pdbjax.spectral.stieltjes` at ``w + i0`` (checked in the tests), in real arithmetic.

Everything here is elementwise in the singular values, with population fields and ``c`` broadcasting
against them (NumPy rules), and runs under ``jit``/``vmap``. Invalid populations raise ``ValueError`` on
concrete input and give NaN under ``jit``, as in :mod:`pdbjax.spectral`.

This is the additive signal-plus-noise view; Algorithm 2's spike replacement
(:func:`pdbjax.filter.shrink_spikes`) is the paper's covariance-spike view. Both are offered by
:func:`pdbjax.filter_matrix` (``shrink="optimal"`` / ``"spikes"``).

References:
  Benaych-Georges & Nadakuditi (2012), "The singular values and vectors of low rank perturbations of
  large rectangular random matrices", J. Multivariate Anal. 111, 120-135 (D-transform, Theorem 2.8:
  outliers at ``D^{-1}(1 / theta^2)``).
  Nadakuditi (2014), "OptShrink: an algorithm for improved low-rank signal matrix denoising by
  optimal, data-driven singular value shrinkage", IEEE Trans. Inf. Theory 60(5), 3002-3018
  (``w = -2 D / D'``).
  Gavish & Donoho (2017), "Optimal shrinkage of singular values", IEEE Trans. Inf. Theory 63(4),
  2137-2152 (Frobenius shrinker for white noise, ``eta(y)`` above).
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
from jax import lax

from pdbjax._validate import is_traced
from pdbjax.fits import PDBFit, PUBFit
from pdbjax.spectral import PDB, check_population, lambda_plus, spike_inverse

__all__ = ["d_transform", "d_transform_derivative", "optimal_shrinker", "shrink_optimal"]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Fit = Union[PDBFit, PUBFit]


def _d_above(sigma: ArrayLike, pop: PDB, c: ArrayLike) -> tuple[Array, Array, Array, Array, Array]:
    """``(D_r, D_r', above, lambda_+, r)``: the D-transform and its ``sigma``-derivative where ``sigma^2 > lambda_+``, in
    units of ``r`` (a power of two near the larger noise standard deviation): ``D = D_r / r^2``, ``D' = D_r' / r^3``.

    A concrete invalid population raises ``ValueError`` here (the checks of :mod:`pdbjax.spectral`);
    the computation itself is compiled (:func:`_d_above_jit`), where invalid entries give NaN.
    """
    sigma = jnp.asarray(sigma)
    # float32 at least: the D-transform's squares and its derivative's terms leave float16's range (sigma = 20)
    sigma = sigma.astype(jnp.promote_types(jnp.result_type(sigma, float), jnp.float32))
    if not is_traced(sigma, pop, c):
        check_population(pop, c)
    return _d_above_jit(sigma, pop, c)


@jax.jit
def _d_above_jit(sigma: Array, pop: PDB, c: ArrayLike) -> tuple[Array, Array, Array, Array, Array]:
    """:func:`_d_above` under ``jit``, in units where the larger variance is about 1: ``D`` has the units of
    ``1 / sigma^2`` (``D(sigma; H) = D(sigma / r; H / r^2) / r^2``), so with ``r^2 = 4^e`` (exact) the variances are
    divided by ``r^2`` and ``sigma`` by ``r`` (float32 eigenvalues of 1e20 or 1e-30 would otherwise over- or
    underflow on the way); ``lambda_+`` is scaled back, ``D`` and ``D'`` are left to the caller (the shrinker
    ``-2 D / D' = -2 r D_r / D_r'`` needs neither, and ``D'`` alone overflows float32 at 1e-30)."""
    half = jnp.frexp(jnp.maximum(jnp.asarray(pop.sigma1_sq), jnp.asarray(pop.sigma2_sq)))[1] // 2
    r = jnp.ldexp(jnp.ones((), sigma.dtype), half)
    unit = PDB(pop.t, pop.sigma1_sq / (r * r), pop.sigma2_sq / (r * r))
    value, slope, above, lam_plus = _d_above_unit(sigma / r, unit, c)
    return value, slope, above, lam_plus * (r * r), jnp.broadcast_to(r, jnp.shape(value))


def _d_above_unit(sigma: Array, pop: PDB, c: ArrayLike) -> tuple[Array, Array, Array, Array]:
    """:func:`_d_above_jit` in its units. Points at or below the edge are evaluated at a stand-in above it
    (``w = 2 lambda_+``, no derivative) so that every output and derivative is finite; callers mask
    them with ``above``."""
    lam_plus = lambda_plus(pop, c)
    above = sigma**2 > lam_plus
    stand_in = lax.stop_gradient(2 * lam_plus)

    def d(x: Array) -> Array:
        w = jnp.where(above, x**2, stand_in)
        m = -1 / spike_inverse(w, pop, c)  # m(w) = -1 / g^{-1}(w) above the support
        cc = jnp.asarray(c, m.dtype)
        s = (m + (1 - cc) / w) / cc
        return w * s * m

    value, slope = jax.jvp(d, (sigma,), (jnp.ones_like(sigma),))
    return value, slope, above, lam_plus


def d_transform(sigma: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""D-transform ``D(sigma) = sigma^2 s(sigma^2) m(sigma^2)`` of the noise's singular-value law.

    Defined above the bulk, ``sigma > sqrt(lambda_+)``, where it is positive and decreases from its
    value at the edge to 0 (``D ~ 1 / sigma^2`` at infinity); NaN at and below the edge. A signal
    component of strength ``theta`` appears as an outlier at ``sigma`` with ``D(sigma) = 1 / theta^2``
    once ``theta^2 > 1 / D(sqrt(lambda_+))`` (Benaych-Georges & Nadakuditi 2012). For white noise
    ``D(sigma) = 1 / theta^2`` gives ``sigma^2 = (1 + theta^2)(c + theta^2) / theta^2``.

    Args:
      sigma: singular values (units: square roots of the eigenvalues, no ``1/N``), any shape.
      pop: noise population ``PDB(t, sigma1_sq, sigma2_sq)``; fields broadcast against ``sigma``.
      c: ratio ``p / N`` of the noise law (for a fit: its ``c``).

    Differentiable in ``sigma``, ``c`` and the population (implicit derivative of
    :func:`pdbjax.spectral.spike_inverse`, with its caveats at ``t in {0, 1}``); NaN entries carry no
    derivative.
    """
    value, _, above, _, r = _d_above(sigma, pop, c)
    return jnp.where(above, value / (r * r), jnp.nan).astype(_out_dtype(sigma))


def d_transform_derivative(sigma: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""``D'(sigma) = dD/dsigma`` above the bulk (negative; ``-> -inf`` at the edge), NaN at and below it.

    With ``alpha = g^{-1}(sigma^2)`` and ``m = -1/alpha``: ``dm/dw = 1 / (dz/dm)`` by implicit
    differentiation of the Silverstein equation, ``ds/dw = (dm/dw - (1 - c)/w^2) / c`` and
    ``dD/dsigma = 2 sigma d(w s m)/dw``; evaluated as one forward-mode derivative of :func:`d_transform`.
    Arguments as in :func:`d_transform`.
    """
    _, slope, above, _, r = _d_above(sigma, pop, c)
    return jnp.where(above, slope / (r * r * r), jnp.nan).astype(_out_dtype(sigma))


def optimal_shrinker(sigma: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""Frobenius-optimal singular value ``w(sigma) = -2 D(sigma) / D'(sigma)``, 0 at and below the edge.

    For ``sigma > sqrt(lambda_+)``, ``w`` estimates ``theta |<u, u'>| |<v, v'>|`` (the signal strength
    times the cosines between the signal's and the observed singular vectors) and is the minimiser of
    the asymptotic ``||W' - S||_F`` (Nadakuditi 2014); it rises continuously from 0 at the edge and
    ``w(sigma) = sigma - O(1/sigma)`` far above it. Components at or below ``sqrt(lambda_+)`` (also one
    that rounding puts exactly on the edge, where ``D'`` is infinite) get 0. For white noise
    (``t = 1``, ``sigma1_sq = 1``, ``c = beta``) it equals Gavish & Donoho's
    ``eta(y) = sqrt((y^2 - beta - 1)^2 - 4 beta) / y``.

    Homogeneous of degree 1: scaling the noise variances by ``k^2`` and ``sigma`` by ``k`` scales ``w``
    by ``k``. NaN where ``sigma`` is NaN or the population is invalid (under ``jit``; a concrete
    invalid population raises ``ValueError``). Arguments as in :func:`d_transform`.

    >>> from pdbjax import PDB, optimal_shrinker
    >>> [round(float(w), 5) for w in optimal_shrinker([1.5, 3.0], PDB.pub(1.0), 1.0)]  # eta(3) = sqrt(5)
    [0.0, 2.23607]
    """
    value, slope, above, lam_plus, r = _d_above(sigma, pop, c)
    usable = above & jnp.isfinite(value) & (slope < 0)
    w = jnp.where(usable, -2 * r * value / jnp.where(usable, slope, -1), 0.0)
    # Far above the edge D' is a difference of terms that cancel to below rounding (float32: sigma ~ 3e9
    # sqrt(lambda_+)) and can come out >= 0; there w = sigma - O(lambda_+ / sigma) is sigma to the working precision.
    x = jnp.asarray(sigma, lam_plus.dtype)
    w = jnp.where(above & ~usable & (x**2 * jnp.finfo(x.dtype).eps > lam_plus), x, w)
    invalid = jnp.isnan(jnp.asarray(sigma)) | jnp.isnan(lam_plus)
    return jnp.where(invalid, jnp.nan, w).astype(_out_dtype(sigma))


def _out_dtype(sigma: ArrayLike) -> jnp.dtype:
    """The public functions' result dtype: ``sigma``'s floating dtype (computed in float32 at least, :func:`_d_above`)."""
    return jnp.result_type(jnp.asarray(sigma), float)


@jax.jit
def shrink_optimal(s: ArrayLike, fit: Fit) -> Array:
    r"""Replace every singular value by :func:`optimal_shrinker` under the fitted noise.

    ``s_j -> w(s_j)`` with the fit's population (a :class:`~pdbjax.fits.PDBFit`'s
    ``PDB(t, sigma1_sq, sigma2_sq)``, or a :class:`~pdbjax.fits.PUBFit`'s single bulk ``t = 1``,
    ``sigma1_sq = sigma2_sq = sigma_sq``) and its ratio ``fit.c`` (``c_K = (p - K) / N`` for PDBLS:
    the bulk law the fit describes, whose upper edge is ``fit.lambda_plus``). Values at or below
    ``sqrt(lambda_+)`` become 0, so the result has at most the ``"spikes"`` keep count of
    :func:`pdbjax.filter.keep_count` non-zero entries. Rows whose fit is not ok are returned unchanged,
    as :func:`pdbjax.filter.shrink_spikes` leaves them. Values stay in place (no re-sorting).

    Args:
      s: singular values ``(..., p)`` (the square roots of the eigenvalues the fit describes).
      fit: a fit with batch shape ``s.shape[:-1]`` (or broadcasting to it).

    Returns:
      Singular values of the shape and dtype of ``s``.
    """
    s = jnp.asarray(s)
    pop = PDB(*(jnp.asarray(v)[..., None] for v in fit.population))
    w = optimal_shrinker(s, pop, jnp.asarray(fit.c)[..., None])
    ok = jnp.asarray(fit.ok, bool)[..., None]
    return jnp.where(ok, w.astype(s.dtype), s)
