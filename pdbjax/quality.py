r"""Goodness of fit of a bulk model (PDB or PUB) to the bulk of a spectrum: moments, KS and L2 distances.

For a fit with spike count ``K`` the bulk is ``lambda_{K+1..p}`` (the eigenvalues after the top ``K``)
with ratio ``c_K = (p - K) / N``, and the model is the fit's population ``H`` (spec
``shared/spec/pdb-model.md`` sections 3 and 5). :func:`fit_quality` compares

* moments: empirical ``gamma_k = (1/(p-K)) sum_{j>K} lambda_j^k`` with the model's
  (:func:`pdbjax.spectral.moments`; PUB: ``sigma^2``, ``sigma^4 (1 + c_K)``, ``sigma^6 (1 + 3 c_K + c_K^2)``),
  as in Tables 3 and 5 of Wu, Zhu & Li (2025);
* the Kolmogorov-Smirnov distance ``sup_x |F_n(x) - F(x)|`` between the empirical distribution of the
  bulk and the model distribution function :func:`pdbjax.spectral.cdf`;
* a relative L2 distance between a histogram of the bulk and the model density averaged over the same
  bins, ``||h - f||_2 / ||f||_2``. Binning: ``B = ceil(2 p^{1/3})`` equal-width bins (Rice's rule on
  ``p``, fixed per shape so the computation is static), spanning
  ``[min(lambda_p, beta_1), max(lambda_{K+1}, lambda_+)]`` (the bulk and the model support together);
  ``h_b = count_b / ((p - K) width)`` and ``f_b = (F(right_b) - F(left_b)) / width``. Averaging the model
  over each bin keeps the comparison finite where the density diverges (``x^{-1/2}`` at 0 for ``c = 1``).

All three are scale-invariant (relative moment errors, distances between distributions of
``lambda / scale``). Everything is batched over leading axes; ``p - K`` differs between the matrices
of a batch, so the bulk is a mask, not a slice.

References:
  Wu, Zhu & Li (2025), "Weight matrices compression based on PDB model in deep neural networks",
  ICML (moment alignment, Tables 3 and 5).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp

from pdbjax.estimate import _check_eigs, _median_scale, _work
from pdbjax.fits import PDBFit, PUBFit
from pdbjax.spectral import PDB, cdf, edges, moments

__all__ = ["Quality", "fit_quality"]

Array = jax.Array
Fit = Union[PDBFit, PUBFit]


class Quality(NamedTuple):
    """Goodness of fit of a bulk model, batched like the fit (NaN where the fit is not ok).

    Attributes:
      moments: empirical bulk moments ``gamma_1..gamma_3``, shape ``(..., 3)``.
      model_moments: the model's ``gamma_1..gamma_3`` at ratio ``c_K = (p - K) / N``, shape ``(..., 3)``.
      moment_error: signed relative error ``model_moments / moments - 1``, shape ``(..., 3)``.
      ks: Kolmogorov-Smirnov distance between the empirical bulk distribution and the model's.
      l2: relative L2 distance between the bulk histogram and the bin-averaged model density.
      ok: the fit's ``ok`` (and a non-empty, finite bulk).
    """

    moments: Array
    model_moments: Array
    moment_error: Array
    ks: Array
    l2: Array
    ok: Array


def _quality_one(eigs: Array, K: Array, pop: PDB, ok: Array, N: int) -> Quality:
    lam = -jnp.sort(-eigs)
    p = lam.shape[-1]
    n = p - K
    ok = ok & (n >= 1) & jnp.all(jnp.isfinite(lam))
    lam = jnp.where(ok, lam, 1.0)
    # Work in units where the median is in [1/2, 1) (a power of 2: exact, no overflow of lambda^3).
    exponent = jnp.frexp(_median_scale(lam))[1]
    lam = jnp.ldexp(lam, -exponent)
    t, s1, s2 = (jnp.where(ok, v, 1.0).astype(lam.dtype) for v in pop)
    pop = PDB(t, jnp.ldexp(s1, -exponent), jnp.ldexp(s2, -exponent))
    n_bulk = jnp.maximum(n, 1).astype(lam.dtype)
    c_k = n_bulk / N
    bulk = jnp.arange(p) >= K

    order = jnp.arange(1, 4)
    powers = lam[:, None] ** order.astype(lam.dtype)
    empirical = jnp.sum(jnp.where(bulk[:, None], powers, 0.0), axis=0) / n_bulk
    model = moments(pop, c_k, 3)

    n_bins = math.ceil(2 * p ** (1 / 3))
    support = edges(pop, c_k)
    lo = jnp.minimum(lam[-1], jnp.nanmin(support))
    hi = jnp.maximum(jnp.take(lam, jnp.minimum(K, p - 1)), jnp.nanmax(support))
    width = (hi - lo) / n_bins
    bin_edges = lo + width * jnp.arange(n_bins + 1, dtype=lam.dtype)
    F = cdf(jnp.concatenate([lam, bin_edges]), pop, c_k)
    F_lam, F_edges = F[:p], F[p:]

    ascending_rank = (p - jnp.arange(p)).astype(lam.dtype)  # rank of lambda_j among the bulk, 1 = smallest
    gap = jnp.maximum(ascending_rank / n_bulk - F_lam, F_lam - (ascending_rank - 1) / n_bulk)
    ks = jnp.max(jnp.where(bulk, gap, 0.0))

    index = jnp.clip(jnp.floor((lam - lo) / width), 0, n_bins - 1).astype(jnp.int32)
    counts = jnp.zeros(n_bins, lam.dtype).at[index].add(bulk.astype(lam.dtype))
    hist = counts / (n_bulk * width)
    model_bins = jnp.diff(F_edges) / width
    l2 = jnp.sqrt(jnp.sum((hist - model_bins) ** 2) / jnp.sum(model_bins**2))

    nan = lambda v: jnp.where(ok, v, jnp.nan)  # noqa: E731
    units = lambda v: jnp.ldexp(v, order * exponent)  # noqa: E731
    return Quality(nan(units(empirical)), nan(units(model)), nan(model / empirical - 1), nan(ks), nan(l2), ok)


@functools.partial(jax.jit, static_argnames="N")
def _quality_batched(eigs: Array, K: Array, pop: PDB, ok: Array, N: int) -> Quality:
    batch, p = eigs.shape[:-1], eigs.shape[-1]
    flat = lambda v: jnp.broadcast_to(v, batch).reshape(-1)  # noqa: E731
    out = jax.vmap(lambda e, k, t, s1, s2, o: _quality_one(e, k, PDB(t, s1, s2), o, N))(
        eigs.reshape(-1, p), flat(K), *(flat(v) for v in pop), flat(ok)
    )
    return jax.tree_util.tree_map(lambda v: v.reshape(batch + v.shape[1:]), out)


def fit_quality(eigs: jax.typing.ArrayLike, N: int, fit: Fit) -> Quality:
    r"""Moments, KS and L2 distances between the bulk of ``eigs`` and the bulk law of ``fit``.

    Args:
      eigs: eigenvalues of ``W^T W``, shape ``(..., p)``, descending (an unsorted vector is sorted).
      N: larger matrix dimension, ``N >= p`` (static).
      fit: a :class:`~pdbjax.fits.PDBFit` or :class:`~pdbjax.fits.PUBFit` whose leading axes broadcast
        to those of ``eigs``. The bulk is everything after the top ``fit.K`` eigenvalues; to compare
        several fits on one common bulk, pass ``fit._replace(K=k)``.

    Returns:
      :class:`Quality` with the batch shape of ``eigs``; NaN (and ``ok = False``) where ``fit.ok`` is
      False. See the module docstring for the definitions and the binning.
    """
    eigs = jnp.asarray(eigs)
    _check_eigs(eigs, N)
    eigs = _work(eigs)
    pop = PDB(*(jnp.asarray(v, eigs.dtype) for v in fit.population))
    return _quality_batched(eigs, jnp.asarray(fit.K, jnp.int32), pop, jnp.asarray(fit.ok, bool), N)
