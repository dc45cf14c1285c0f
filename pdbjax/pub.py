r"""PUB baselines: single-bulk (Marchenko-Pastur) fits of a spectrum by BEMA and by a kernel estimate.

The PUB model (spec ``shared/spec/pdb-model.md`` sections 2 and 8) is
``Sigma = diag(alpha_1..alpha_K, sigma^2 I_{p-K})``: the bulk eigenvalues follow the Marchenko-Pastur
law with variance ``sigma^2`` and ratio ``c``, whose upper edge ``lambda_+ = sigma^2 (1 + sqrt c)^2``
separates noise from the ``K`` spikes. Both estimators take the input convention of
:mod:`pdbjax.estimate`: ``eigs`` are the eigenvalues of ``W^T W`` (squared singular values, no
``1/N``) on the last axis of a ``(..., p)`` array, ``N`` the larger matrix dimension (a Python int),
``c = p / N``.

* ``method="bema"``: bulk eigenvalue matching analysis (Ke, Ma & Lin 2023, Algorithm "BEMA0"). The
  ``k``-th largest eigenvalue is matched with the Marchenko-Pastur quantile (``sigma^2 = 1``, ratio
  ``c = p / N``) at CDF level ``1 - (k - 1/2) / p`` (the mid-point plotting position), for the trimmed
  ranks ``alpha p < k < (1 - alpha) p``, and ``sigma^2`` is the least-squares slope through the origin,

  .. math::  \hat\sigma^2 = \sum_k q_k \lambda_k \Big/ \sum_k q_k^2 .

  ``K`` counts the eigenvalues above the Tracy-Widom corrected edge
  ``sigma^2 [(1 + sqrt c)^2 + q_{TW1}(1 - beta) N^{-2/3} c^{-1/6} (1 + sqrt c)^{4/3}]``.
* ``method="kernel"``: kernel density matching (as used for PUB filtering by Staats, Thamm & Rosenow
  2023). The bulk is the spectrum below the BEMA threshold (``K0`` eigenvalues removed), with ratio
  ``c0 = (p - K0) / N``. Its Gaussian kernel density estimate ``f_h`` (Silverman's bandwidth
  ``h = 1.06 sd n^{-1/5}``, ``n = p - K0``) is compared, on 128 equispaced points spanning the bulk, with
  the Marchenko-Pastur density *smoothed by the same kernel*,
  ``(f_{MP}(sigma^2, c0) * phi_h)(x) ~= (1/M) sum_i phi_h(x - sigma^2 q_i)`` (``q_i`` the ``M = 256``
  mid-point quantiles of ``MP(1, c0)``), and ``sigma^2`` minimises the squared distance. Smoothing the
  model like the data removes the kernel's bias: near square layers (``c`` near 1) the density
  diverges like ``x^{-1/2}`` at 0, which a kernel estimate cannot follow, and an unsmoothed match is
  biased there. ``lambda_+ = sigma^2 (1 + sqrt c0)^2`` is the threshold: ``K`` counts eigenvalues above it.

Quantiles come from :func:`bulk_quantile`, the inverse of :func:`pdbjax.spectral.cdf`. Both fits are
scale-equivariant: the eigenvalues are divided by their median before fitting and ``sigma^2`` is
multiplied back, so scaling ``W`` by ``a`` multiplies ``sigma^2`` by ``a^2`` and leaves ``K`` unchanged.
Unusable spectra (:func:`pdbjax.estimate.screen`: NaN/Inf, all zero, ``p < 8``, rank deficient) give
``ok = False`` with a :class:`~pdbjax.fits.Reason` and NaN fields, inside a batch and under ``jit``.

References:
  Ke, Ma & Lin (2023), "Estimation of the number of spiked eigenvalues in a covariance matrix by bulk
  eigenvalue matching analysis", J. Amer. Statist. Assoc. 118(541), 374-392 (Algorithm 1, BEMA0).
  Staats, Thamm & Rosenow (2023), "Boundary between noise and information applied to filtering neural
  network weight matrices", Phys. Rev. E 108, L022302.
  Johnstone (2001), "On the distribution of the largest eigenvalue in principal components analysis",
  Ann. Statist. 29 (Tracy-Widom scaling ``N^{-2/3} c^{-1/6} (1 + sqrt c)^{4/3}``).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax.estimate import _check_eigs, _median_scale, _placeholder, _work, screen
from pdbjax.fits import PUBFit, Reason
from pdbjax.lsq import least_squares_box
from pdbjax.spectral import PDB, cdf, edges

__all__ = ["fit_pub", "bulk_quantile", "TW1_QUANTILES"]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Method = Literal["bema", "kernel"]

TW1_QUANTILES = {0.10: 0.4501, 0.05: 0.9793, 0.01: 2.0234}
"""Upper ``beta`` quantiles ``q_TW1(1 - beta)`` of the Tracy-Widom law of order 1, keyed by ``beta``."""

_MIN_BULK = 8  # fewest bulk eigenvalues the kernel fit accepts (the TOO_SMALL limit of screen)
_KDE_POINTS = 128  # grid on which the kernel estimate and the smoothed model are compared
_MODEL_QUANTILES = 256  # quantile nodes representing the Marchenko-Pastur law in the smoothed model
_SEARCH_FACTOR = 4.0  # sigma^2 is searched in [mean / 4, 4 mean] of the bulk
_LSQ_ITERS = 40


# --------------------------------------------------------------------------------------------------
# Quantiles of the bulk law


def bulk_quantile(level: ArrayLike, pop: PDB, c: ArrayLike, num: int = 1025) -> Array:
    r"""Quantiles ``F^{-1}(level)`` of the bulk law, ``F`` = :func:`pdbjax.spectral.cdf`.

    ``F`` is evaluated on ``num`` Chebyshev-spaced points of the support ``[beta_1, beta_max]``
    (``lambda = mid - half cos u``, ``u`` equispaced in ``[0, pi]``: dense at the edges, where ``F``
    has square-root (or, for ``c = 1``, ``x^{1/2}``-type) behaviour) and inverted by linear
    interpolation. ``level`` carries the levels on its LAST axis; the population fields and ``c``
    broadcast against ``level[..., 0]``. For PUB with ``sigma^2 = 1`` this is the Marchenko-Pastur
    quantile function used by BEMA.
    """
    level = jnp.asarray(level)
    beta = edges(pop, c)
    lo, hi = jnp.nanmin(beta, axis=-1), jnp.nanmax(beta, axis=-1)
    batch = jnp.broadcast_shapes(lo.shape, level.shape[:-1])
    u = jnp.linspace(0.0, jnp.pi, num, dtype=beta.dtype)
    x = jnp.broadcast_to(((lo + hi) / 2)[..., None] - ((hi - lo) / 2)[..., None] * jnp.cos(u), batch + (num,))
    F = cdf(x, pop, c)
    level = jnp.broadcast_to(level, batch + level.shape[-1:]).astype(beta.dtype)
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    q = jax.vmap(jnp.interp)(flat(level), flat(F), flat(x))
    return q.reshape(level.shape)


# --------------------------------------------------------------------------------------------------
# The two estimators, on one descending vector divided by its median


def _tw_quantile(beta: float) -> float:
    for key, value in TW1_QUANTILES.items():
        if math.isclose(beta, key):
            return value
    raise ValueError(f"beta must be one of {sorted(TW1_QUANTILES)} (tabulated Tracy-Widom quantiles); got {beta!r}")


def _bema(lam: Array, N: int, alpha: float, beta: float) -> tuple[Array, Array, Array]:
    """BEMA on descending ``lam``: returns ``(sigma_sq, c, threshold)`` (``c = p / N``)."""
    p = lam.shape[-1]
    c = p / N
    k = np.arange(1, p + 1)
    ranks = k[(k > alpha * p) & (k < (1 - alpha) * p)]
    q = bulk_quantile(1 - (ranks - 0.5) / p, PDB.pub(jnp.ones((), lam.dtype)), c)
    sigma_sq = jnp.sum(q * lam[ranks - 1]) / jnp.sum(q**2)
    edge = (1 + math.sqrt(c)) ** 2 + _tw_quantile(beta) * N ** (-2 / 3) * c ** (-1 / 6) * (1 + math.sqrt(c)) ** (4 / 3)
    return sigma_sq, jnp.asarray(c, lam.dtype), sigma_sq * edge


def _gaussian(u: Array) -> Array:
    return jnp.exp(-0.5 * u**2) / math.sqrt(2 * math.pi)


def _kernel(lam: Array, N: int, alpha: float, beta: float) -> tuple[Array, Array, Array, Array]:
    """Kernel density matching on descending ``lam``: returns ``(sigma_sq, c0, threshold, usable)``."""
    p = lam.shape[-1]
    _, _, bema_threshold = _bema(lam, N, alpha, beta)
    K0 = jnp.sum(lam > bema_threshold)
    n = p - K0
    weight = jnp.where(jnp.arange(p) >= K0, 1.0, 0.0).astype(lam.dtype) / jnp.maximum(n, 1)
    mean = jnp.sum(weight * lam)
    sd = jnp.sqrt(jnp.sum(weight * (lam - mean) ** 2))
    usable = (n >= _MIN_BULK) & (sd > 0)
    h = jnp.where(usable, 1.06 * sd * jnp.maximum(n, 1).astype(lam.dtype) ** -0.2, 1.0)
    lo, hi = lam[-1], jnp.take(lam, jnp.minimum(K0, p - 1))
    x = lo + (hi - lo) * (jnp.arange(_KDE_POINTS, dtype=lam.dtype) + 0.5) / _KDE_POINTS
    kde = jnp.sum(weight * _gaussian((x[:, None] - lam) / h), axis=-1) / h
    c0 = jnp.maximum(n, 1).astype(lam.dtype) / N
    levels = (jnp.arange(_MODEL_QUANTILES, dtype=lam.dtype) + 0.5) / _MODEL_QUANTILES
    q = bulk_quantile(levels, PDB.pub(jnp.ones((), lam.dtype)), c0)

    def residual(log_s: Array) -> Array:
        model = jnp.mean(_gaussian((x[:, None] - jnp.exp(log_s[0]) * q) / h), axis=-1) / h
        return kde - model

    center = jnp.log(jnp.where(usable, mean, 1.0))
    width = math.log(_SEARCH_FACTOR)
    sol = least_squares_box(residual, center[None], (center - width)[None], (center + width)[None], _LSQ_ITERS)
    sigma_sq = jnp.exp(sol.x[0])
    return sigma_sq, c0, sigma_sq * (1 + jnp.sqrt(c0)) ** 2, usable


def _fit_pub_one(eigs: Array, N: int, method: str, alpha: float, beta: float) -> PUBFit:
    eigs = -jnp.sort(-eigs)
    code = screen(eigs)
    lam = _placeholder(eigs, code)
    scale = _median_scale(lam)
    lam = lam / scale
    if method == "bema":
        sigma_sq, c, threshold = _bema(lam, N, alpha, beta)
        lam_plus = sigma_sq * (1 + jnp.sqrt(c)) ** 2
    else:
        sigma_sq, c, threshold, usable = _kernel(lam, N, alpha, beta)
        code = jnp.where((code == Reason.OK) & ~usable, Reason.NO_BULK, code)
        lam_plus = threshold
    K = jnp.sum(lam > threshold)
    sigma_sq, lam_plus, threshold = sigma_sq * scale, lam_plus * scale, threshold * scale
    solved = jnp.isfinite(threshold) & (sigma_sq > 0)
    code = jnp.where((code == Reason.OK) & ~solved, Reason.NOT_CONVERGED, code).astype(jnp.int32)
    ok = code == Reason.OK
    nan = lambda v: jnp.where(ok, v, jnp.nan)  # noqa: E731
    return PUBFit(
        K=jnp.where(ok, K, 0).astype(jnp.int32),
        sigma_sq=nan(sigma_sq),
        c=nan(c),
        lambda_plus=nan(lam_plus),
        threshold=nan(threshold),
        ok=ok,
        reason=code,
    )


@functools.partial(jax.jit, static_argnames=("N", "method", "alpha", "beta"))
def _fit_pub_batched(eigs: Array, N: int, method: str, alpha: float, beta: float) -> PUBFit:
    batch, p = eigs.shape[:-1], eigs.shape[-1]
    fit = jax.vmap(lambda v: _fit_pub_one(v, N, method, alpha, beta))(eigs.reshape(-1, p))
    return jax.tree_util.tree_map(lambda v: v.reshape(batch + v.shape[1:]), fit)


def fit_pub(
    eigs: ArrayLike,
    N: int,
    method: Method = "bema",
    *,
    alpha: float = 0.2,
    beta: float = 0.1,
) -> PUBFit:
    r"""Fit the PUB (Marchenko-Pastur) model to a batch of spectra by BEMA or kernel matching.

    See the module docstring for the two methods. Computes in the input's float dtype (float32 for
    integer and half-precision inputs); pass float64 eigenvalues inside ``jax.enable_x64(True)`` for
    double precision.

    Args:
      eigs: eigenvalues of ``W^T W``, shape ``(..., p)``, descending (an unsorted vector is sorted).
      N: larger matrix dimension, ``N >= p`` (static).
      method: ``"bema"`` or ``"kernel"`` (static).
      alpha: BEMA trimming: ranks ``alpha p < k < (1 - alpha) p`` are matched, ``0 <= alpha < 1/2``.
        The kernel method uses it for its initial BEMA threshold.
      beta: Tracy-Widom level of the BEMA threshold: ``0.1``, ``0.05`` or ``0.01``.

    Returns:
      :class:`~pdbjax.fits.PUBFit` with the leading batch axes of ``eigs``. ``c`` is ``p / N`` for
      BEMA and the bulk ratio ``(p - K0) / N`` for the kernel method; ``threshold`` is the
      Tracy-Widom corrected edge for BEMA and ``lambda_plus`` for the kernel method. Rows with
      ``ok = False`` have NaN fields, ``K = 0`` and a :class:`~pdbjax.fits.Reason`.
    """
    eigs = jnp.asarray(eigs)
    _check_eigs(eigs, N)
    if method not in ("bema", "kernel"):
        raise ValueError(f"method must be 'bema' or 'kernel'; got {method!r}")
    if not 0 <= alpha < 0.5:
        raise ValueError(f"alpha must lie in [0, 0.5); got {alpha!r}")
    _tw_quantile(beta)
    return _fit_pub_batched(_work(eigs), N, method, float(alpha), float(beta))
