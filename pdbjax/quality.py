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
  ``p``; computed exactly as the least ``B`` with ``B^3 >= 8 p``, data of the compiled program), spanning
  ``[min(lambda_p, beta_1), max(lambda_{K+1}, lambda_+)]`` (the bulk and the model support together);
  ``h_b = count_b / ((p - K) width)`` and ``f_b = (F(right_b) - F(left_b)) / width``. Averaging the model
  over each bin keeps the comparison finite where the density diverges (``x^{-1/2}`` at 0 for ``c = 1``).

All three are scale-invariant (relative moment errors, distances between distributions of
``lambda / scale``). Everything is batched over leading axes; ``p - K`` differs between the matrices
of a batch, so the bulk is a mask, not a slice.

Heavy tails. :func:`tail_slope` is a robust Hill-type estimate of how steeply the top quarter of a
spectrum falls in rank (``zeta ~ 2 / alpha`` for i.i.d. entries with tail index ``alpha``);
:func:`heavy_tailed` flags a spectrum whose top is steeper than any real layer we measured
(:data:`HEAVY_TAIL_SLOPE`) *and* whose bulk the fit does not describe (:data:`HEAVY_TAIL_KS`). The
thresholds and their margins come from ``benchmarks/heavy_tails.py``
(``benchmarks/results/heavy_tails.md``).

References:
  Wu, Zhu & Li (2025), "Weight matrices compression based on PDB model in deep neural networks",
  ICML (moment alignment, Tables 3 and 5).
  Hill (1975), "A simple general approach to inference about the tail of a distribution",
  Ann. Statist. 3(5).
  Renyi (1953), "On the theory of order statistics", Acta Math. Acad. Sci. Hungar. 4 (the spacings
  of exponential order statistics are independent).
  Auffinger, Ben Arous & Peche (2009), "Poisson convergence for the largest eigenvalues of heavy
  tailed random matrices", Ann. Inst. H. Poincare Probab. Statist. 45(3).
  Martin & Mahoney (2021), "Implicit self-regularization in deep neural networks: evidence from
  random matrix theory and implications for learning", JMLR 22(165).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax import exported
from pdbjax.fits import PDBFit, PUBFit
from pdbjax.inputs import bulk, check_eigs, median_units, sort_valid, valid
from pdbjax.precision import as_work
from pdbjax.spectral import PDB, cdf, edges, moments

__all__ = ["HEAVY_TAIL_KS", "HEAVY_TAIL_SLOPE", "Quality", "fit_quality", "heavy_tail_rule", "heavy_tailed", "tail_slope"]

Array = jax.Array
Fit = Union[PDBFit, PUBFit]


@exported.register
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

    def rescale(self, factor) -> "Quality":
        """The same figures for eigenvalues multiplied by ``factor`` (batch-shaped, e.g. float64 on the host):
        the ``k``-th moments are multiplied by ``factor^k``; the distances and relative errors are unit-free."""
        power = np.reshape(np.asarray(factor), np.shape(factor) + (1,)) ** np.arange(1, 4)
        return self._replace(moments=self.moments * power, model_moments=self.model_moments * power)


def _rice_bins(p: Array, most: int) -> Array:
    """``ceil(2 p^{1/3})`` for integer ``p``, exactly: the least ``B`` in ``1..most`` with ``B^3 >= 8 p``."""
    b = jnp.arange(1, most + 1)
    return jnp.sum(b**3 < 8 * p) + 1


def _quality_one(eigs: Array, K: Array, pop: PDB, ok: Array, N: Array, length: Array) -> Quality:
    size = eigs.shape[-1]
    p = length
    lam = sort_valid(eigs, length)
    n = p - K
    ok = ok & (n >= 1) & jnp.all(jnp.isfinite(lam))
    lam = jnp.where(ok, lam, jnp.where(valid(lam, length), 1.0, 0.0))
    # Work in units where the median is in [1/2, 1) (a power of 2: exact, no overflow of lambda^3).
    lam, exponent = median_units(lam, length)
    t, s1, s2 = (jnp.where(ok, v, 1.0).astype(lam.dtype) for v in pop)
    pop = PDB(t, jnp.ldexp(s1, -exponent), jnp.ldexp(s2, -exponent))
    n_bulk = jnp.maximum(n, 1).astype(lam.dtype)
    c_k = n_bulk / N
    in_bulk = bulk(lam, K, length)

    order = jnp.arange(1, 4)
    powers = lam[:, None] ** order.astype(lam.dtype)
    empirical = jnp.sum(jnp.where(in_bulk[:, None], powers, 0.0), axis=0) / n_bulk
    model = moments(pop, c_k, 3)

    most_bins = math.ceil(2 * size ** (1 / 3)) + 1  # room for the bins of any p <= size
    n_bins = _rice_bins(p, most_bins)
    support = edges(pop, c_k)
    lo = jnp.minimum(jnp.take(lam, p - 1), jnp.nanmin(support))
    hi = jnp.maximum(jnp.take(lam, jnp.minimum(K, p - 1)), jnp.nanmax(support))
    width = (hi - lo) / n_bins.astype(lam.dtype)
    bin_edges = lo + width * jnp.arange(most_bins + 1, dtype=lam.dtype)
    F = cdf(jnp.concatenate([lam, bin_edges]), pop, c_k)
    F_lam, F_edges = F[:size], F[size:]

    ascending_rank = (p - jnp.arange(size)).astype(lam.dtype)  # rank of lambda_j among the bulk, 1 = smallest
    gap = jnp.maximum(ascending_rank / n_bulk - F_lam, F_lam - (ascending_rank - 1) / n_bulk)
    ks = jnp.max(jnp.where(in_bulk, gap, 0.0))

    index = jnp.clip(jnp.floor((lam - lo) / width), 0, n_bins - 1).astype(jnp.int32)
    counts = jnp.zeros(most_bins, lam.dtype).at[index].add(in_bulk.astype(lam.dtype))
    hist = counts / (n_bulk * width)
    in_range = jnp.arange(most_bins) < n_bins
    model_bins = jnp.where(in_range, jnp.diff(F_edges) / width, 0.0)
    l2 = jnp.sqrt(jnp.sum(jnp.where(in_range, hist - model_bins, 0.0) ** 2) / jnp.sum(model_bins**2))

    nan = lambda v: jnp.where(ok, v, jnp.nan)  # noqa: E731
    units = lambda v: jnp.ldexp(v, order * exponent)  # noqa: E731
    return Quality(nan(units(empirical)), nan(units(model)), nan(model / empirical - 1), nan(ks), nan(l2), ok)


@exported.jit(cpu_compiler_options=exported.FAST_COMPILE)
def quality_batched(eigs: Array, K: Array, pop: PDB, ok: Array, N: Array, length: Array) -> Quality:
    """The compiled core of :func:`fit_quality`: unchecked work-dtype ``eigs`` ``(..., P)``, padded after each
    spectrum's ``length`` entries (:mod:`pdbjax.inputs`), the fit's ``K`` (int32), population (in ``eigs``' dtype)
    and ``ok``, ``N`` and ``length`` (int32), all batch-shaped."""
    batch, p = eigs.shape[:-1], eigs.shape[-1]
    flat = lambda v: jnp.broadcast_to(v, batch).reshape(-1)  # noqa: E731
    out = jax.vmap(lambda e, k, t, s1, s2, o, n, q: _quality_one(e, k, PDB(t, s1, s2), o, n, q))(
        eigs.reshape(-1, p), flat(K), *(flat(v) for v in pop), flat(ok), flat(N.astype(eigs.dtype)), flat(length)
    )
    return jax.tree_util.tree_map(lambda v: v.reshape(batch + v.shape[1:]), out)


def fit_quality(eigs: jax.typing.ArrayLike, N: int | np.ndarray, fit: Fit) -> Quality:
    r"""Moments, KS and L2 distances between the bulk of ``eigs`` and the bulk law of ``fit``.

    Args:
      eigs: eigenvalues of ``W^T W``, shape ``(..., p)``, descending (an unsorted vector is sorted).
      N: larger matrix dimension, ``N >= p``: an int or integer array broadcasting to the batch
        shape (concrete; data of the compiled computation).
      fit: a :class:`~pdbjax.fits.PDBFit` or :class:`~pdbjax.fits.PUBFit` whose leading axes broadcast
        to those of ``eigs``. The bulk is everything after the top ``fit.K`` eigenvalues; to compare
        several fits on one common bulk, pass ``fit._replace(K=k)``.

    Returns:
      :class:`Quality` with the batch shape of ``eigs``; NaN (and ``ok = False``) where ``fit.ok`` is
      False. See the module docstring for the definitions and the binning.
    """
    eigs = jnp.asarray(eigs)
    check_eigs(eigs, N)
    eigs = as_work(eigs)
    pop = PDB(*(jnp.asarray(v, eigs.dtype) for v in fit.population))
    n = jnp.asarray(np.broadcast_to(np.asarray(N, np.int64), eigs.shape[:-1]), jnp.int32)
    length = jnp.full(eigs.shape[:-1], eigs.shape[-1], jnp.int32)
    return quality_batched(eigs, jnp.asarray(fit.K, jnp.int32), pop, jnp.asarray(fit.ok, bool), n, length)


# --------------------------------------------------------------------------------------------------
# Heavy tails

#: :func:`tail_slope` above which the top of a spectrum is steeper than in every real layer measured
#: (``benchmarks/heavy_tails.py``, ``benchmarks/results/heavy_tails.md``). Real layers: <= 1.08 (25 trained
#: kernels: FCNN on MNIST-5k and Fashion-MNIST at label noise 0/0.2/0.4, VGG16; 36 MiniLM-L6 encoder
#: matrices <= 1.03; Glorot initialisation <= 0.50). Heavy-tailed: i.i.d. Cauchy entries >= 1.80;
#: Student-t(1.5) 1.06-1.78 (median 1.38, 16 of 20 above 1.2); Student-t(2) 0.66-1.01, the range of the
#: trained layers, so df = 2 is not separable by a threshold that spares them; s_j = j^-a: 1.42, 2.13,
#: 2.84 for a = 0.5, 0.75, 1. PDB: i.i.d. finite-variance noise <= 0.59; simulated populations up to 1.36
#: when a high-variance minority bulk merges into the majority under spikes (1.50 with more spikes than
#: fit_pdb's window), which is why :func:`heavy_tailed` also asks for a poor fit. In Martin & Mahoney's
#: terms ``alpha_MM = 1 + 1 / zeta``: 1.2 is ``alpha_MM ~ 1.83``, past their "very heavy-tailed" boundary 2.
HEAVY_TAIL_SLOPE = 1.2
#: KS distance of the bulk fit (:attr:`Quality.ks`) above which the fit does not describe the bulk.
#: Measured: PDB spectra with ``tail_slope > HEAVY_TAIL_SLOPE`` and at most ``floor(6 N^0.1)`` spikes
#: fit with KS <= 0.013 (their exact law gives 0.020-0.024 at p = 256, tests/test_quality.py); every
#: heavy-tailed spectrum above the slope threshold whose fit is ok has KS >= 0.058 (Student-t(1.5);
#: Cauchy >= 0.25). Real layers reach 0.11 (MiniLM) but are kept by the slope. With more spikes than
#: the window, the spikes left in the bulk raise KS to 0.03-0.06.
HEAVY_TAIL_KS = 0.03


def _tail_slope_one(lam: Array, length: Array) -> Array:
    size = lam.shape[-1]
    if size < 8:
        return jnp.full((), jnp.nan, lam.dtype)
    m = length // 4
    lam = sort_valid(lam, length)
    j = jnp.arange(1, size // 4 + 1)
    spacing = j * (jnp.log(lam[: size // 4]) - jnp.log(lam[1 : size // 4 + 1]))
    # The median of the first m spacings: the others sorted past them (inf), then the middle one or two.
    ordered = jnp.sort(jnp.where(j <= m, spacing, jnp.inf))
    middle = 0.5 * (jnp.take(ordered, (m - 1) // 2) + jnp.take(ordered, m // 2))
    zeta = middle / math.log(2)
    usable = jnp.all(jnp.isfinite(jnp.where(jnp.arange(size) < length, lam, 0.0))) & (jnp.take(lam, m) > 0) & (length >= 8)
    return jnp.where(usable, zeta, jnp.nan)


@exported.jit
def tail_slope_batched(eigs: Array, length: Array) -> Array:
    """The compiled core of :func:`tail_slope`: unchecked work-dtype ``eigs`` ``(..., P)``, padded after each
    spectrum's ``length`` entries (:mod:`pdbjax.inputs`)."""
    return jnp.vectorize(_tail_slope_one, signature="(p),()->()")(eigs, length)


def tail_slope(eigs: jax.typing.ArrayLike) -> Array:
    r"""Robust rank-slope of the top quarter of a spectrum, ``zeta`` (a heavy-tail statistic), batched.

    With ``lambda_1 >= ... >= lambda_p`` and ``m = floor(p / 4)``,

    .. math::

        \zeta = \frac{1}{\log 2}\, \operatorname{median}_{1 \le j \le m}
                \; j \log\frac{\lambda_j}{\lambda_{j+1}} .

    Why: if the top eigenvalues follow a power law in rank, ``lambda_j ~ C j^{-s}``, every term
    ``j log(lambda_j / lambda_{j+1})`` is about ``s``; their *mean* over ``j <= k`` is exactly Hill's
    (1975) estimator ``(1/k) sum_{j<=k} log(lambda_j / lambda_{k+1})`` of ``s``. For a matrix with
    i.i.d. entries of tail index ``alpha < 4`` the top eigenvalues are close to the squared largest
    entries, a Poisson process (Auffinger, Ben Arous & Peche 2009), and by Renyi's representation the
    terms are then about i.i.d. exponential with mean ``s = 2 / alpha``; the median of an exponential is its mean times
    ``log 2``, hence the normalisation: ``zeta ~ 2 / alpha`` (Cauchy: 2; Student-t(1.5): 1.33;
    Student-t(2): 1). The median instead of the mean ignores the few huge terms of spikes and of the
    gap between two separated bulks. Marchenko-Pastur noise gives ``zeta ~ 0.2-0.6``; a
    deterministic power law ``s_j = j^{-a}`` (no Poisson spread) gives ``2 a / log 2``.

    ``zeta`` is scale-invariant (``W -> a W`` leaves it unchanged) and does not depend on ``N``. For
    exponential terms the sample median has a relative standard error of ``1 / (log 2 sqrt(p / 4))``:
    13% at ``p = 512``, 18% at ``p = 256``; so Student-t(1.5) entries (``zeta ~ 1.33``) fall below
    :data:`HEAVY_TAIL_SLOPE` now and then. A PDB spectrum can also have a steep top quarter (a minority
    high-variance bulk merging into the majority, plus spikes); :func:`heavy_tailed` therefore also asks
    that the fit be poor.

    Args:
      eigs: eigenvalues of ``W^T W``, shape ``(..., p)``, any order (sorted descending here).

    Returns:
      ``zeta`` with the batch shape ``eigs.shape[:-1]``; NaN where ``p < 8``, an eigenvalue is not
      finite, or ``lambda_{m+1} <= 0`` (rank below ``p / 4``).

    References:
      Hill (1975), Ann. Statist. 3(5); Renyi (1953); Auffinger, Ben Arous & Peche (2009);
      Martin & Mahoney (2021), JMLR 22(165), whose power-law exponent of the eigenvalue density is
      ``alpha_MM = 1 + 1 / zeta`` (well-trained layers: ``2 <= alpha_MM <= 6``).
    """
    eigs = jnp.asarray(eigs)
    check_eigs(eigs, eigs.shape[-1] if eigs.ndim else 0)
    return tail_slope_batched(as_work(eigs), jnp.full(eigs.shape[:-1], eigs.shape[-1], jnp.int32))


def heavy_tailed(eigs: jax.typing.ArrayLike, N: int | np.ndarray, fit: Fit, quality: Quality | None = None) -> Array:
    r"""Whether a spectrum is heavy-tailed beyond what the bulk model and real layers show, batched.

    ``tail_slope(eigs) > HEAVY_TAIL_SLOPE`` and ``fit_quality(eigs, N, fit).ks > HEAVY_TAIL_KS``: the
    top quarter falls faster in rank than in any real layer measured, and the fitted bulk law does not
    describe the bulk. Measured (``benchmarks/results/heavy_tails.md``): every ok fit of i.i.d. Cauchy
    entries and of power-law singular values ``s_j = j^{-a}``, ``a`` in {0.5, 0.75, 1}, is flagged;
    Student-t(1.5) entries 16 of 20 (the other four have ``zeta`` 1.06-1.20); Student-t(2) entries
    never (not separable from trained layers); no real layer and no simulated PDB matrix is flagged, 14
    spikes beyond the reference's spike window ``floor(6 N^0.1)`` included (5 of 20 were, while the fit's
    window stayed fixed and left spikes in its bulk).

    Args:
      eigs: eigenvalues, shape ``(..., p)``.
      N: larger matrix dimension (as in :func:`fit_quality`).
      fit: the :class:`~pdbjax.fits.PDBFit` (or :class:`~pdbjax.fits.PUBFit`) of ``eigs``.
      quality: ``fit_quality(eigs, N, fit)`` if already computed.

    Returns:
      Boolean array with the batch shape of ``eigs``; False where the fit is not ok (its ``reason``
      already says why).
    """
    quality = fit_quality(eigs, N, fit) if quality is None else quality
    return heavy_tail_rule(tail_slope(eigs), quality.ks)


def heavy_tail_rule(zeta: Array, ks: Array) -> Array:
    """The rule of :func:`heavy_tailed` on its two figures: ``zeta > HEAVY_TAIL_SLOPE`` and ``ks > HEAVY_TAIL_KS``
    (NaN, for a fit that is not ok, gives False)."""
    return (zeta > HEAVY_TAIL_SLOPE) & (ks > HEAVY_TAIL_KS)
