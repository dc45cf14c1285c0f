r"""PUB baselines: single-bulk (Marchenko-Pastur) fits of a spectrum by BEMA and by a kernel estimate.

The PUB model (spec ``shared/spec/pdb-model.md`` sections 2 and 8) is
``Sigma = diag(alpha_1..alpha_K, sigma^2 I_{p-K})``: the bulk eigenvalues follow the Marchenko-Pastur
law with variance ``sigma^2`` and ratio ``c``, whose upper edge ``lambda_+ = sigma^2 (1 + sqrt c)^2``
separates noise from the ``K`` spikes. Both estimators take the input convention of
:mod:`pdbjax.estimate`: ``eigs`` are the eigenvalues of ``W^T W`` (squared singular values, no
``1/N``) on the last axis of a ``(..., p)`` array, ``N`` the larger matrix dimension (a Python int),
``c = p / N``.

* ``estimator="bema"``: bulk eigenvalue matching analysis (Ke, Ma & Lin 2023) in its equal-variance
  (Marchenko-Pastur) form, the PUB-BEMA baseline of Wu, Zhu & Li (2025). The
  ``k``-th largest eigenvalue is matched with the Marchenko-Pastur quantile (``sigma^2 = 1``, ratio
  ``c = p / N``) at CDF level ``1 - (k - 1/2) / p`` (the mid-point plotting position), for the trimmed
  ranks ``alpha p < k < (1 - alpha) p``, and ``sigma^2`` is the least-squares slope through the origin,

  .. math::  \hat\sigma^2 = \sum_k q_k \lambda_k \Big/ \sum_k q_k^2 .

  ``K`` counts the eigenvalues above the Tracy-Widom corrected edge
  ``sigma^2 [(1 + sqrt c)^2 + q_{TW1}(1 - beta) N^{-2/3} c^{-1/6} (1 + sqrt c)^{4/3}]``.
* ``estimator="kernel"``: kernel density matching, the PUB-Kernel baseline of Wu, Zhu & Li (2025). The
  bulk is the spectrum below the BEMA threshold: ``n = p - K0`` eigenvalues, ratio ``c0 = n / N``. Its
  Gaussian kernel density estimate ``f_h`` (Silverman's bandwidth ``h = 1.06 sd n^{-1/5}``, ``sd`` the
  standard deviation of the bulk) is compared, on 128 equispaced points spanning the bulk, with the
  Marchenko-Pastur density ``MP(sigma^2, c0)`` *smoothed by the same kernel*,

  .. math::  (f_{MP} * \phi_h)(x) = \int \phi_h(x - \sigma^2 y)\, dF_{MP(1, c_0)}(y)
             \approx \sum_i w_i\, \phi_h(x - \sigma^2 y_i),

  with ``y_i = 1 + c0 - 2 sqrt(c0) cos u_i`` at the 256 mid-points ``u_i`` of ``[0, pi]`` and weights
  ``w_i`` proportional to the density times ``dy/du``, in closed form ``sin^2 u_i / y_i`` (smooth in ``u``, also
  at ``c0 = 1``; just below 1 it dips over a width ``~1 - sqrt(c0)`` at ``u = 0`` that 256 nodes do not resolve:
  the law's mean is then off by up to 1.1e-3 and ``sigma^2`` by up to 4e-4 relative, at 1024 x 1024, a bug hunt's
  oracle with 4,000-100,000 nodes; its sampling spread there is about 1%). ``sigma^2`` minimises the sum of
  squared differences: a 1-D box least
  squares in ``log sigma^2`` on ``[mean / 4, 4 mean]`` of the bulk, started at the bulk mean
  (:func:`pdbjax.lsq.least_squares_scalar`: safeguarded Newton, at most 40 steps; a solve that does not
  converge is ``NOT_CONVERGED``). Smoothing the model like the data removes the
  kernel's bias, which matters most for square layers (``c`` near 1): their density diverges like
  ``x^{-1/2}`` at 0, where no kernel estimate can follow it, and an unsmoothed match overestimates
  ``sigma^2`` about threefold there. ``lambda_+ = sigma^2 (1 + sqrt c0)^2`` is the threshold: ``K``
  counts the eigenvalues above it.

BEMA's quantiles invert the closed-form Marchenko-Pastur distribution function on the host. Both fits are
scale-equivariant: the eigenvalues are scaled by the power of 2 that brings their median into
``[1/2, 1)`` before fitting and ``sigma^2`` is scaled back, so scaling ``W`` by ``a`` multiplies
``sigma^2`` by ``a^2`` and leaves ``K`` unchanged. Unusable spectra (:func:`pdbjax.estimate.screen`:
NaN/Inf, all zero, ``p < 8``, rank deficient; also a bulk without spread, such as an orthogonal matrix,
and for the kernel method fewer than 8 eigenvalues below the BEMA threshold) give ``ok = False`` with a
:class:`~pdbjax.fits.Reason` and NaN fields, inside a batch and under ``jit``.

References:
  Ke, Ma & Lin (2023), "Estimation of the number of spiked eigenvalues in a covariance matrix by bulk
  eigenvalue matching analysis", J. Amer. Statist. Assoc. (arXiv:2006.00436).
  Wu, Zhu & Li (2025), "Weight matrices compression based on PDB model in deep neural networks",
  ICML (PUB-BEMA and PUB-Kernel baselines).
  Staats, Thamm & Rosenow (2023), "Boundary between noise and information applied to filtering neural
  network weight matrices", Phys. Rev. E 108, L022302 (PUB filtering).
  Johnstone (2001), "On the distribution of the largest eigenvalue in principal components analysis",
  Ann. Statist. 29 (Tracy-Widom scaling ``N^{-2/3} c^{-1/6} (1 + sqrt c)^{4/3}``).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax import exported
from pdbjax.fits import PUBFit, Reason, demote, fit_result
from pdbjax.inputs import bulk, check_eigs, median_units, placeholder, screen, sort_valid, source_rtol
from pdbjax.lsq import least_squares_scalar
from pdbjax.precision import as_work

__all__ = ["fit_pub", "TW1_QUANTILES"]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Estimator = Literal["bema", "kernel"]

ALPHA = 0.2
"""Default BEMA trimming of :func:`fit_pub` (ranks ``alpha p < k < (1 - alpha) p`` are matched)."""
BETA = 0.1
"""Default Tracy-Widom level of :func:`fit_pub`'s BEMA threshold."""
TW1_QUANTILES = {0.10: 0.4501, 0.05: 0.9793, 0.01: 2.0234}
"""Upper ``beta`` quantiles ``q_TW1(1 - beta)`` of the Tracy-Widom law of order 1, keyed by ``beta``."""

_MIN_BULK = 8  # fewest eigenvalues a fit accepts (the TOO_SMALL limit of screen)
_KDE_POINTS = 128  # grid on which the kernel estimate and the smoothed model are compared
_MODEL_NODES = 256  # quadrature nodes representing the Marchenko-Pastur law in the smoothed model
_SEARCH_FACTOR = 4.0  # sigma^2 is searched in [mean / 4, 4 mean] of the bulk
_LSQ_ITERS = 40


# --------------------------------------------------------------------------------------------------
# Marchenko-Pastur quantiles


def _mp_cdf(x: np.ndarray, c: float) -> np.ndarray:
    r"""Distribution function of ``MP(sigma^2 = 1, c)``, ``0 < c <= 1``, in closed form (float64 NumPy).

    With ``a, b = (1 -+ sqrt c)^2`` and ``r = sqrt((b - x)(x - a))``, integrating the density
    ``r / (2 pi c x)`` gives, on ``[a, b]``,

    .. math::

        F(x) = \frac12 + \frac{1}{2 \pi c}\Big[r + (1 + c) \arcsin\frac{2x - a - b}{b - a}
               - (1 - c) \arcsin\frac{(a + b) x - 2ab}{x (b - a)}\Big],

    (``(a + b)/2 = 1 + c``, ``sqrt(ab) = 1 - c``), 0 below ``a`` and 1 above ``b``.
    """
    x = np.asarray(x, np.float64)
    a, b = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    xc = np.clip(x, a, b)
    r = np.sqrt(np.maximum((b - xc) * (xc - a), 0.0))
    first = np.arcsin(np.clip((2 * xc - a - b) / (b - a), -1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        second = np.arcsin(np.clip(((a + b) * xc - 2 * a * b) / (xc * (b - a)), -1, 1))
    second = np.where(xc > 0, second, -np.pi / 2)  # c = 1: its weight 1 - c is 0 anyway
    F = 0.5 + (r + (1 + c) * first - (1 - c) * second) / (2 * math.pi * c)
    return np.where(x <= a, 0.0, np.where(x >= b, 1.0, np.clip(F, 0.0, 1.0)))


def _mp_quantile(level: np.ndarray, c: float) -> np.ndarray:
    """Quantiles ``F^{-1}(level)`` of ``MP(1, c)`` (:func:`_mp_cdf`), by bisection to float64 resolution.

    ``c = p / N`` and the levels are static, so the quantiles are host constants of the compiled fit:
    nothing is compiled for them.
    """
    level = np.asarray(level, np.float64)
    lo = np.full(level.shape, (1 - math.sqrt(c)) ** 2)
    hi = np.full(level.shape, (1 + math.sqrt(c)) ** 2)
    for _ in range(60):  # the bracket (width <= 4) halves each step: 4 / 2^60 < 1e-17
        mid = (lo + hi) / 2
        below = _mp_cdf(mid, c) < level
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


# --------------------------------------------------------------------------------------------------
# The two estimators, on one descending vector with its median scaled into [1/2, 1)


def _tw_quantile(beta: float) -> float:
    """``q_TW1(1 - beta)`` from :data:`TW1_QUANTILES`; ``ValueError`` for an untabulated ``beta``."""
    for key, value in TW1_QUANTILES.items():
        if math.isclose(beta, key):
            return value
    raise ValueError(f"beta must be one of {sorted(TW1_QUANTILES)} (tabulated Tracy-Widom quantiles); got {beta!r}")


def _spread_floor(lam: Array) -> float:
    """Spread below which a (median-normalised) bulk counts as a single atom: ``100 eps``."""
    return 100 * float(jnp.finfo(lam.dtype).eps)


def _matched_ranks(p: int, alpha: float) -> np.ndarray:
    """The 1-based ranks ``k`` with ``alpha p < k < (1 - alpha) p`` that BEMA matches."""
    k = np.arange(1, p + 1)
    return k[(k > alpha * p) & (k < (1 - alpha) * p)]


@exported.register
class BemaTable(NamedTuple):
    """What BEMA needs of ``MP(1, c = p / N)`` for one spectrum, tabulated on the host so that ``N`` is
    data of the compiled fit: the quantiles ``q`` of the matched ranks, their 0-based ``index`` in the
    spectrum, and the Tracy-Widom corrected edge
    ``(1 + sqrt c)^2 + q_TW1(1 - beta) N^{-2/3} c^{-1/6} (1 + sqrt c)^{4/3}``. A spectrum padded to a length
    ``P`` (:mod:`pdbjax.inputs`) has its own ranks, padded to those of ``P`` with ``q = 0`` and the last index."""

    q: np.ndarray
    edge: np.ndarray
    index: np.ndarray


def pub_inputs(eigs: np.ndarray | Array, N: int | np.ndarray, alpha: float, beta: float,
               length: np.ndarray | None = None) -> tuple[np.ndarray, BemaTable, np.ndarray]:
    """``N`` and the length ``p`` per spectrum (flattened, host ints) and the :class:`BemaTable` rows
    :func:`fit_pub_batched` takes (MP quantiles computed on the host per distinct ``(N, p)``, so the fit
    compiles no solver). ``length``: each spectrum's ``p`` when ``eigs`` is padded (default: all of it)."""
    _tw_quantile(beta)
    size, batch = eigs.shape[-1], eigs.shape[:-1]
    n = np.broadcast_to(np.asarray(N, np.int64), batch).reshape(-1)
    p = np.broadcast_to(np.asarray(size if length is None else length, np.int32), batch).reshape(-1)
    if size < _MIN_BULK:
        return n, BemaTable(np.zeros((n.size, 0)), np.zeros(n.size), np.zeros((n.size, 0), np.int32)), p
    return n, _bema_tables(n, p, size, float(alpha), float(beta)), p


def _bema_tables(N: np.ndarray, p: np.ndarray, size: int, alpha: float, beta: float) -> BemaTable:
    """:class:`BemaTable` rows for the per-spectrum ``N`` and ``p`` (one table per distinct pair), ``size`` the
    padded length: every row holds as many ranks as a spectrum of that length has."""
    width = max(len(_matched_ranks(q, alpha)) for q in {size, *p.tolist()})
    rows = {}
    for n, q in set(zip(N.tolist(), p.tolist())):
        ranks = _matched_ranks(q, alpha)
        if q < _MIN_BULK or ranks.size == 0:  # screen reports TOO_SMALL: no table
            rows[n, q] = (np.zeros(width), 0.0, np.zeros(width, np.int32))
            continue
        c = q / n
        edge = (1 + math.sqrt(c)) ** 2 + _tw_quantile(beta) * n ** (-2 / 3) * c ** (-1 / 6) * (1 + math.sqrt(c)) ** (4 / 3)
        quantiles = _mp_quantile(1 - (ranks - 0.5) / q, c)
        pad = width - ranks.size
        rows[n, q] = (np.pad(quantiles, (0, pad)), edge, np.pad(ranks - 1, (0, pad), mode="edge").astype(np.int32))
    if not rows:  # an empty batch
        return BemaTable(np.zeros((0, width)), np.zeros(0), np.zeros((0, width), np.int32))
    q, edge, index = zip(*(rows[key] for key in zip(N.tolist(), p.tolist())))
    return BemaTable(np.stack(q), np.array(edge), np.stack(index))


def _bema(lam: Array, table: BemaTable) -> tuple[Array, Array, Array]:
    """BEMA on descending ``lam`` (median in [1/2, 1)): returns ``(sigma_sq, threshold, usable)``.

    ``usable`` is False when the matched ranks have no spread (e.g. an orthogonal matrix): a single
    atom is not a Marchenko-Pastur bulk.
    """
    matched = lam[table.index]
    q = table.q.astype(lam.dtype)
    sigma_sq = jnp.sum(q * matched) / jnp.sum(q**2)
    usable = matched[0] - matched[-1] > _spread_floor(lam)
    return sigma_sq, sigma_sq * table.edge.astype(lam.dtype), usable


def _gaussian(u: Array) -> Array:
    return jnp.exp(-0.5 * u**2) / math.sqrt(2 * math.pi)


def _mp_nodes(c0: Array) -> tuple[Array, Array]:
    r"""``MP(1, c0)`` as :data:`_MODEL_NODES` weighted nodes: ``y_i = 1 + c0 - 2 sqrt(c0) cos u_i`` at the
    mid-points ``u_i`` of ``[0, pi]``, weights ``w_i`` summing to 1.

    The density ``r / (2 pi c0 y)`` has ``r = sqrt((b - y)(y - a)) = 2 sqrt(c0) sin u`` at ``y(u)``, and
    ``dy / du = 2 sqrt(c0) sin u``, so ``w_i`` is proportional to ``sin^2 u_i / y_i`` (the mid-point rule
    in ``u``; the integrand is smooth, also at ``c0 = 1`` where the density diverges at 0).
    """
    u = (jnp.arange(_MODEL_NODES, dtype=c0.dtype) + 0.5) * (jnp.pi / _MODEL_NODES)
    node = 1 + c0 - 2 * jnp.sqrt(c0) * jnp.cos(u)
    mass = jnp.sin(u) ** 2 / node
    return node, mass / jnp.sum(mass)


def _kernel(lam: Array, N: Array, table: BemaTable, length: Array) -> tuple[Array, Array, Array]:
    """Kernel density matching on descending ``lam`` (median in [1/2, 1); ``p = length``, the rest padding):
    returns ``(sigma_sq, c0, usable)``.

    ``usable`` is False when BEMA's is, when fewer than 8 eigenvalues remain below the BEMA threshold,
    or when they have no spread.
    """
    p = length
    _, bema_threshold, bema_usable = _bema(lam, table)
    K0 = jnp.sum(lam > bema_threshold)
    n = jnp.maximum(p - K0, 1).astype(lam.dtype)
    weight = jnp.where(bulk(lam, K0, length), 1 / n, 0.0)
    mean = jnp.sum(weight * lam)
    sd = jnp.sqrt(jnp.sum(weight * (lam - mean) ** 2))
    usable = bema_usable & (p - K0 >= _MIN_BULK) & (sd > _spread_floor(lam) * mean)
    h = jnp.where(usable, 1.06 * sd * n**-0.2, 1.0)
    lo, hi = jnp.take(lam, p - 1), jnp.take(lam, jnp.minimum(K0, p - 1))
    x = lo + (hi - lo) * (jnp.arange(_KDE_POINTS, dtype=lam.dtype) + 0.5) / _KDE_POINTS
    kde = jnp.sum(weight * _gaussian((x[:, None] - lam) / h), axis=-1) / h
    c0 = n / N
    node, mass = _mp_nodes(c0)

    def residual(log_s: Array) -> Array:
        model = jnp.sum(mass * _gaussian((x[:, None] - jnp.exp(log_s) * node) / h), axis=-1) / h
        return kde - model

    center = jnp.log(jnp.where(usable, mean, 1.0))
    width = math.log(_SEARCH_FACTOR)
    sol = least_squares_scalar(residual, center, center - width, center + width, _LSQ_ITERS)
    # sigma^2 at a bound of [mean / 4, 4 mean] is no fit (the bulk's mean is sigma^2 under MP): NOT_CONVERGED too
    inside = jnp.abs(sol.x - center) < width * (1 - 1e-3)
    return jnp.where(sol.converged & inside, jnp.exp(sol.x), jnp.nan), c0, usable  # NaN: NOT_CONVERGED


def _fit_pub_one(eigs: Array, N: Array, table: BemaTable, length: Array, estimator: str, rtol: float | None) -> PUBFit:
    """One spectrum (its first ``length`` entries): screen (at ``rtol``), sort, scale the median into [1/2, 1), fit,
    count, scale back, flag."""
    eigs = sort_valid(eigs, length)
    code = screen(eigs, rtol, length)
    lam = placeholder(eigs, code, length)
    lam, exponent = median_units(lam, length)
    if eigs.shape[-1] < _MIN_BULK:  # screen reports TOO_SMALL: there is nothing to fit (or to compile)
        sigma_sq = c = lam_plus = threshold = jnp.full((), jnp.nan, lam.dtype)
        usable = jnp.zeros((), bool)
    elif estimator == "bema":
        sigma_sq, threshold, usable = _bema(lam, table)
        c = length / N
        lam_plus = sigma_sq * (1 + jnp.sqrt(c)) ** 2
    else:
        sigma_sq, c, usable = _kernel(lam, N, table, length)
        lam_plus = threshold = sigma_sq * (1 + jnp.sqrt(c)) ** 2
    code = demote(code, ~usable, Reason.NO_BULK)
    K = jnp.sum(lam > threshold)
    sigma_sq, lam_plus, threshold = (jnp.ldexp(v, exponent) for v in (sigma_sq, lam_plus, threshold))
    solved = jnp.isfinite(threshold) & (sigma_sq > 0)
    code = demote(code, ~solved, Reason.NOT_CONVERGED)
    return fit_result(PUBFit, code, dict(sigma_sq=sigma_sq, c=c, lambda_plus=lam_plus, threshold=threshold),
                      K=jnp.where(code == Reason.OK, K, 0).astype(jnp.int32))


@exported.jit(static_argnames=("estimator", "rtol"), cpu_compiler_options=exported.FAST_COMPILE)
def fit_pub_batched(eigs: Array, N: Array, table: BemaTable, length: Array, estimator: str,
                    rtol: float | None = None) -> PUBFit:
    """The compiled core of :func:`fit_pub`: unchecked work-dtype ``eigs`` ``(..., P)``, padded after each
    spectrum's ``length`` entries (:mod:`pdbjax.inputs`), ``N``, ``table`` and ``length`` from :func:`pub_inputs`
    (traceable; BEMA's trimming ``alpha`` is in the table's ranks); ``rtol``: :func:`~pdbjax.inputs.screen`'s
    tolerance (its default for ``eigs``' dtype when None; ``svd_screen_rtol`` for the squares of an SVD's values)."""
    batch, p = eigs.shape[:-1], eigs.shape[-1]
    flat = eigs.reshape(-1, p)
    fit = jax.vmap(lambda v, n, tab, q: _fit_pub_one(v, n, tab, q, estimator, rtol))(flat, N.astype(flat.dtype), table, length.reshape(-1))
    return jax.tree_util.tree_map(lambda v: v.reshape(batch), fit)


def fit_pub(
    eigs: ArrayLike,
    N: int | np.ndarray,
    estimator: Estimator = "bema",
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    source: Literal["svd", "gram"] = "svd",
) -> PUBFit:
    r"""Fit the PUB (Marchenko-Pastur) model to a batch of spectra by BEMA or kernel matching.

    See the module docstring for the two estimators. Computes in the input's float dtype (float32 for
    integer and half-precision inputs); pass float64 eigenvalues inside ``jax.enable_x64(True)`` for
    double precision.

    Args:
      eigs: eigenvalues of ``W^T W``, shape ``(..., p)``, descending (an unsorted vector is sorted).
      N: larger matrix dimension, ``N >= p``: an int or an integer array broadcasting to
        ``eigs.shape[:-1]`` (concrete; data of the compiled fit, so every ``N`` shares one compilation).
      estimator: ``"bema"`` or ``"kernel"`` (static; the filter methods ``"pub-bema"`` and
        ``"pub-kernel"`` of :func:`pdbjax.filter_matrix` use them).
      alpha: BEMA trimming: ranks ``alpha p < k < (1 - alpha) p`` are matched, ``0 <= alpha < 1/2``.
        The kernel method uses it for its initial BEMA threshold.
      beta: Tracy-Widom level of the BEMA threshold: ``0.1``, ``0.05`` or ``0.01``.
      source: how ``eigs`` were computed: ``"svd"`` (default, squared singular values) or ``"gram"``
        (eigenvalues of ``W^T W``), as for :func:`pdbjax.fit_pdb` (which of them are zeros).

    Returns:
      :class:`~pdbjax.fits.PUBFit` with the leading batch axes of ``eigs``;
      ``lambda_plus = sigma^2 (1 + sqrt c)^2`` with ``c = p / N`` for BEMA and the bulk ratio
      ``c = (p - K0) / N`` for the kernel method; ``threshold`` is the Tracy-Widom corrected edge for
      BEMA and ``lambda_plus`` for the kernel method. Rows with ``ok = False`` have NaN fields,
      ``K = 0`` and a :class:`~pdbjax.fits.Reason`.

    Example (a single bulk cannot describe two noise bulks: BEMA calls much of the upper one spikes):

    >>> import jax, pdbjax
    >>> W = pdbjax.simulate(jax.random.PRNGKey(0), 800, 400, pdbjax.PDB(0.6, 1.0, 8.0), spikes=[60.0, 30.0])
    >>> fit = pdbjax.fit_pub(pdbjax.eigenvalues(W), 800, "bema")
    >>> int(fit.K) > 10, pdbjax.reason_text(fit.reason)
    (True, 'ok')
    """
    eigs = jnp.asarray(eigs)
    check_eigs(eigs, N)
    if estimator not in ("bema", "kernel"):
        raise ValueError(f"estimator must be 'bema' or 'kernel'; got {estimator!r}")
    p = eigs.shape[-1]
    if not 0 <= alpha < 0.5 or (p >= _MIN_BULK and _matched_ranks(p, alpha).size == 0):
        raise ValueError(
            f"alpha must lie in [0, 0.5) and leave ranks alpha p < k < (1 - alpha) p; got {alpha} for p={p}"
        )
    rtol = source_rtol(eigs.dtype, source)
    n, table, length = pub_inputs(eigs, N, alpha, beta)
    return fit_pub_batched(as_work(eigs), n, table, length, estimator, rtol)
