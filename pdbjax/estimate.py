r"""Estimation of the PDB model from the eigenvalues of weight matrices (Algorithm 1, PDBLS).

Input: descending eigenvalues of ``W^T W`` and the larger dimension ``N`` (an int or one per spectrum),
the convention of every estimator (:mod:`pdbjax.inputs`).

Two modes:

* ``mode="scaled"`` (default): the eigenvalues are divided by their median before the spike count and
  the fit, and the fitted variances are multiplied back. The reference algorithm is not
  scale-invariant (its grid starts at a fixed ``-10`` and its spike count exponentiates raw
  eigenvalue gaps); after this normalisation, multiplying ``W`` by ``a`` multiplies ``sigma1_sq``,
  ``sigma2_sq``, ``lambda_plus`` by ``a^2`` and leaves ``t`` and ``K`` unchanged. The least squares is
  started from the reference's box midpoint and from 12 asymmetric points in one batched call and
  keeps the lowest cost: at the midpoint ``sigma1_sq = sigma2_sq``, ``t = 1/2`` the Jacobian
  columns of ``sigma1_sq`` and ``sigma2_sq`` coincide (a saddle of the two-atom problem, which the
  solver escapes along negative curvature; :mod:`pdbjax.lsq`), and several starts guard against
  other local minima. The row is ``NOT_CONVERGED`` unless the best start converged.
  Where the spike count ``K0`` reaches the edge of its EDA/EDB window ``w`` and at least ``K0``
  eigenvalues lie above the fitted ``lambda_+`` (the criterion's minimum may lie beyond the window, and the
  bulk the fit saw held outliers), the spectrum is fitted again with the window doubled, up to
  ``max(w, p // 2)`` (:func:`widest_window`), until ``K0`` stops short of the window or the fitted edge
  leaves fewer than ``K0`` eigenvalues above it; a widened fit that is not ok is dropped and the last ok
  one stands. With 16 spikes at 1024 x 512 (``w = 12``) the fixed window's ``lambda_+`` is 4.1x the
  model's (reference mode); widened, ``K0 = 16`` and it is within 2% (``benchmarks/results/fit_limits.md``).
  Gaussian noise, whose ``K0`` can fill the window of a tall matrix, leaves fewer than ``K0`` eigenvalues
  above its edge and is fitted once.
* ``mode="reference"``: the official code's algorithm on raw eigenvalues, one start at the midpoint,
  and its ``-200`` penalty at ``t = 1``; for comparisons.

References:
  Wu, Zhu & Li (2025), ICML, Algorithm 1; reference code ``estimation.py`` (``removebike``,
  ``curve_fit``).
  Bai, Choi & Fujikoshi (2018), "Consistency of AIC and BIC in estimating the number of significant
  components in high-dimensional principal component analysis", Ann. Statist. 46 (EDA/EDB).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pdbjax import exported
from pdbjax._validate import is_traced
from pdbjax.fits import PDBFit, Reason, demote, fit_result
from pdbjax.inputs import bulk, check_eigs, count_zeros, median, placeholder, screen, sort_valid, source_rtol, svd_screen_rtol, valid
from pdbjax.linalg import raw_eigenvalues, spectrum
from pdbjax.lsq import least_squares_box
from pdbjax.precision import Precision, as_work, check_precision, float64, work_dtype
from pdbjax.spectral import PDB, critical_points, edges, silverstein_z, silverstein_z_derivatives

__all__ = ["eigenvalues", "spike_count", "spike_window", "widest_window", "fit_pdb"]

Mode = Literal["scaled", "reference"]
Array = jax.Array

_GRID_POINTS = 20
#: Largest residual of the Silverstein equation accepted as a PDB fit (``PDBFit.residual``: RMS of
#: ``u - z(s)`` with each grid segment relative to its own RMS ``u``). Measured (benchmarks/solver.py):
#: <= 1.4e-3 on 44 simulated PDB matrices (4 shapes), <= 7.5e-4 on 16 i.i.d. noise matrices, <= 3.8e-3
#: on 18 trained FCNN hidden kernels and 36 MiniLM encoder matrices; 0.53 and 2.1 on power-law singular
#: values s_j = j^-0.75 and j^-0.5, and 0.8 to 3.8 at the spurious local minima where the previous solver
#: stopped (reference mode, unit scale). Student-t(1.5) entries give 5e-3 to 1.2e-2 (not flagged).
POOR_FIT_RESIDUAL = 2e-2
#: The ``(0, l_min / 2)`` grid segment of the PDBLS residual is used only where ``N (1 - sqrt(c_K))`` is at least
#: this: there the bulk's lower edge ``~ (1 - sqrt c)^2`` is a soft edge, its relative Tracy-Widom fluctuation
#: ``(N (1 - sqrt c))^(-2/3)`` at most 0.16. Nearer ``p = N`` the segment measures the few smallest eigenvalues'
#: noise: with it, float32 Gaussian noise was POOR_FIT in 7 of 8 draws at 105 x 100 and 205 x 200, 8 of 8 at
#: 202 x 200, 3 of 8 at 420 x 400, and two bulks with a spike in 7 of 8 at 210 x 200 (the official code drops it
#: only at ``p = N`` exactly); without it none is, and ``lambda_+`` is the same wherever this still uses it
#: (``python benchmarks/near_square.py``, ``benchmarks/results/near_square.md``).
LOWER_SEGMENT_MIN = 16.0
#: One bulk or two (spec section 10): the two-atom population is used only when the bulk's standardised
#: sphericity statistic (``_sphericity``, ~N(0, 1) for one bulk) and the fitted population's own
#: dispersion both exceed this z-level (one-sided, p = 3e-7 for Gaussian noise). Measured
#: (benchmarks/results/bulks.md): 320 i.i.d. noise matrices (Gaussian, uniform, Rademacher, Laplace,
#: Student-t(5); 8 shapes) give at most 2.54; simulated two-bulk PDB matrices 5.6 (t = 0.5, variances
#: 1 and 1.3, 400 x 200) to 542.
BULKS_Z = 5.0
#: Fewest bulk eigenvalues (p - K0) a fit needs; fewer (e.g. a 350 x 10 output layer) is NO_BULK.
_MIN_BULK = 8
# Starting points in unit-box coordinates (t, s1, s2): the reference midpoint first, then asymmetric
# pairs s1 < s2 of fractions of [l_min, l_max] with a majority and a minority weight on s1.
_PAIRS = ((0.05, 0.15), (0.05, 0.3), (0.15, 0.3), (0.15, 0.5), (0.3, 0.5), (0.05, 0.5))
_STARTS = np.array([(0.5, 0.5, 0.5)] + [(t, a, b) for t in (0.3, 0.7) for a, b in _PAIRS])


# --------------------------------------------------------------------------------------------------
# Eigenvalues


def eigenvalues(
    W: jax.typing.ArrayLike, *, precision: Precision | None = None, solver: Literal["svd", "gram"] = "svd"
) -> Array:
    r"""Descending eigenvalues ``lambda_j = s_j^2`` of a stack of matrices ``W`` of shape ``(..., a, b)``.

    ``solver="svd"`` (default) is the decomposition :func:`pdbjax.analyze` and :func:`pdbjax.compress`
    use (:func:`pdbjax.linalg.spectrum`: each matrix divided by a power of two, values-only SVD, QR
    first for very elongated matrices, so memory stays ``O(N p)``); ``"gram"``: one batched symmetric
    eigendecomposition ``eigh`` of the smaller Gram matrix (``W^T W`` or ``W W^T``, ``p x p``), whose
    float32 eigenvalues carry absolute errors ``~eps * lambda_1``. ``precision`` is the working
    precision (:mod:`pdbjax.precision`): ``"float64"`` computes under a local ``jax.enable_x64`` (when
    the smallest eigenvalues matter); ``None`` is float32 (float64 inside ``jax.enable_x64``),
    whatever the storage dtype. Complex input is rejected. Eigenvalues of a matrix with NaN/Inf
    entries are NaN (the estimators flag them).

    >>> import numpy as np, pdbjax
    >>> W = np.diag([3.0, 2.0, 1.0])
    >>> pdbjax.eigenvalues(W, precision="float64", solver="gram").round(6).tolist()
    [9.0, 4.0, 1.0]
    """
    if solver not in ("gram", "svd"):
        raise ValueError(f"solver must be 'gram' or 'svd'; got {solver!r}")
    precision = check_precision(precision)
    W = W if isinstance(W, jax.Array) else np.asarray(W)  # host input stays on the host: jnp would wrap int64 entries
    if np.ndim(W) < 2 or 0 in np.shape(W)[-2:]:
        raise ValueError(f"eigenvalues needs matrices of shape (..., a, b) with a, b >= 1; got shape {np.shape(W)}")
    if np.iscomplexobj(W):
        raise ValueError(f"eigenvalues needs real matrices; got dtype {W.dtype}")
    if solver == "svd":
        lam = raw_eigenvalues(spectrum(W, precision=precision))
        if is_traced(lam):
            return lam
        if precision == "float64":
            with float64():
                return jnp.asarray(lam, jnp.float64)
        return jnp.asarray(lam, jnp.float32)
    if precision == "float64" and not is_traced(W):
        with float64():
            return _gram_eigenvalues(jnp.asarray(W, jnp.float64))
    return _gram_eigenvalues(W.astype(work_dtype(W.dtype) if precision == "float32" else jnp.float64))


@jax.jit
def _gram_eigenvalues(W: Array) -> Array:
    a, b = W.shape[-2:]
    gram = jnp.swapaxes(W, -1, -2) @ W if b <= a else W @ jnp.swapaxes(W, -1, -2)
    lam = jnp.linalg.eigh(gram)[0][..., ::-1]
    return jnp.maximum(lam, 0.0)


# --------------------------------------------------------------------------------------------------
# Spike count (EDA / EDB)


def spike_window(N: int, p: int) -> int:
    """The EDA/EDB search window ``w = floor(6 N^0.1)`` of the reference, kept below ``p - 1``: the spike
    count ``K`` never exceeds it, and outliers beyond it stay in the bulk the fit sees.

    >>> spike_window(1024, 512), spike_window(384, 384)
    (12, 10)
    """
    return max(1, min(int(6 * N**0.1), p - 2))


def fit_inputs(eigs: np.ndarray | Array, N: int | np.ndarray, length: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``N``, the spike window :func:`spike_window` and the length ``p`` of each spectrum, flattened over the batch
    (host ints): the data :func:`fit_pdb_batched` takes, so that neither ``N`` nor ``p`` enters a compiled
    program as a constant. ``length``: each spectrum's ``p`` when ``eigs`` is padded (default: all of it)."""
    batch = eigs.shape[:-1]
    n = np.broadcast_to(np.asarray(N, np.int64), batch).reshape(-1)
    p = np.broadcast_to(np.asarray(eigs.shape[-1] if length is None else length, np.int32), batch).reshape(-1)
    windows = {(int(v), int(q)): spike_window(int(v), int(q)) for v, q in set(zip(n.tolist(), p.tolist()))}
    return n, np.array([windows[int(v), int(q)] for v, q in zip(n, p)], np.int32).reshape(n.shape), p


def _spike_count_one(lam: Array, N: Array, window: Array, length: Array) -> Array:
    r"""EDA/EDB spike count of one descending vector (reference ``removebike``), in log space.

    ``log theta~_k = logsumexp(2 (lambda_i - lambda_{i+1}), i > k) - log(p - k - 1)``, which equals the
    reference's ``log(mean(exp(...)))`` wherever that is finite. ``N`` (float), the window
    ``w = `` :func:`spike_window` and the length ``p`` (of ``lam``'s first entries; the rest is padding) are
    data: the criteria are evaluated for ``k = 1..P-2`` and searched over ``k <= w <= p - 2``.
    """
    size = lam.shape[-1]
    if size < _MIN_BULK:  # TOO_SMALL spectra: no window to search (and no gaps to index when p < 3)
        return jnp.zeros((), jnp.int32)
    p = length.astype(lam.dtype)
    i = jnp.arange(size - 1)
    gaps2 = jnp.where(i < length - 1, 2 * (lam[:-1] - lam[1:]), -jnp.inf)  # 2 (lambda_i - lambda_{i+1}), i = 1..p-1
    tail_lse = lax.cumlogsumexp(gaps2, reverse=True)  # tail_lse[j] = LSE(gaps2[j:])
    k = jnp.arange(1, size - 1)
    n_tail = jnp.maximum(length - k - 1, 1)
    log_theta = tail_lse[k] - jnp.log(n_tail.astype(lam.dtype))
    drop = lam[0] - lam[k]  # lambda_1 - lambda_{k+1}
    fit = N * n_tail * log_theta
    eda = -N * drop + fit + 2 * p * k
    edb = -N * jnp.log(p) * drop + fit + p * k * jnp.log(N)
    searched = lambda crit: jnp.argmin(jnp.where(k <= window, crit, jnp.inf))  # noqa: E731
    return jnp.maximum(searched(eda), searched(edb)).astype(jnp.int32) + 1


def spike_count(eigs: jax.typing.ArrayLike, N: int | np.ndarray, *, mode: Mode = "scaled") -> Array:
    r"""Initial spike count ``K0`` by the EDA/EDB criteria (spec section 6, step 1), batched.

    ``w = floor(6 N^0.1)``, ``theta_i = exp(2 (lambda_i - lambda_{i+1}))``,
    ``EDA(k) = -N (lambda_1 - lambda_{k+1}) + N (p - k - 1) log theta~_k + 2 p k``,
    ``EDB(k) = -N log(p) (lambda_1 - lambda_{k+1}) + N (p - k - 1) log theta~_k + p k log N``,
    ``K0 = max(argmin EDA, argmin EDB)`` in ``1..w`` (the count before :func:`fit_pdb`'s widening of the window
    in scaled mode). ``mode="scaled"`` evaluates it on
    ``lambda / median(lambda)`` (scale-invariant); ``"reference"`` on the raw eigenvalues.
    Unusable spectra (see :func:`screen`) give ``K0 = 0``.
    """
    eigs = jnp.asarray(eigs)
    check_eigs(eigs, N)
    check_mode(mode)
    n, window, length = fit_inputs(eigs, N)
    return _spike_count_batched(as_work(eigs), n, window, length, mode)


@functools.partial(jax.jit, static_argnames="mode")
def _spike_count_batched(eigs: Array, N: Array, window: Array, length: Array, mode: str) -> Array:
    batch, p = eigs.shape[:-1], eigs.shape[-1]
    flat = eigs.reshape(-1, p)
    code = screen(flat, length=length)
    lam = placeholder(flat, code, length)
    if mode == "scaled":
        lam = lam / median(lam, length)[..., None]
    count = jax.vmap(_spike_count_one)(lam, N.astype(lam.dtype), window, length)
    return jnp.where(code == Reason.OK, count, 0).reshape(batch)


# --------------------------------------------------------------------------------------------------
# PDBLS


def _part(a: Array, b: Array, n: int) -> Array:
    """The ``n`` interior points ``a + i (b - a) / (n + 1)``, ``i = 1..n``."""
    i = jnp.arange(1, n + 1, dtype=jnp.result_type(a, b))
    return a + i * (b - a) / (n + 1)


def _fit_one(lam: Array, K: Array, N: Array, length: Array, mode: str, n_iter: int):
    r"""PDBLS on one descending vector ``lam`` with ``K`` spikes removed.

    Returns ``(theta, residual, c_K, converged)``: the lowest-cost start's ``(t, s1, s2)``, its residual
    ``sqrt(mean_i ((u_i - z(s_i)) / U_i)^2)`` with ``U_i`` the RMS of ``u`` over the grid segment of
    ``u_i`` (each segment measured on its own scale, so the ``(5 l_max, 10 l_max)`` segment cannot hide
    a misfit of the others), and whether the least squares converged from that start. The
    ``(0, l_min / 2)`` segment is computed always and masked out of the residual when
    ``p = N`` (as the official code) or, except for ``mode="reference"``, ``N (1 - sqrt(c_K)) <``
    :data:`LOWER_SEGMENT_MIN` (``p`` near ``N``), so ``N`` stays data; so is ``p = length`` (the entries of ``lam`` after it are padding).
    """
    p = length
    dtype = lam.dtype
    in_bulk = bulk(lam, K, length)
    n_bulk = (p - K).astype(dtype)
    c_k = n_bulk / N
    l_max = jnp.take(lam, K)
    l_min = jnp.take(lam, p - 1)
    grids = [
        _part(jnp.asarray(-10.0, dtype), jnp.asarray(0.0, dtype), _GRID_POINTS),
        _part(jnp.zeros((), dtype), 0.5 * l_min, _GRID_POINTS),
        _part(5 * l_max, 10 * l_max, _GRID_POINTS),
    ]
    lower = p != N
    if mode != "reference":  # and only where the lower edge is soft
        lower = lower & (N * (1 - jnp.sqrt(c_k)) >= LOWER_SEGMENT_MIN)
    used = jnp.repeat(jnp.stack([jnp.asarray(True), lower, jnp.asarray(True)]), _GRID_POINTS)
    u = jnp.concatenate(grids)
    u = jnp.where(used, u, -1.0)  # a harmless point where the (0, l_min / 2) segment is not used
    u_scale = jnp.concatenate([jnp.full(g.shape, jnp.sqrt(jnp.mean(g**2))) for g in grids])
    # Empirical companion transform m_n(u) = -(1 - (p - K)/N)/u + (1/N) sum_{j > K} 1/(lambda_j - u).
    s = -(1 - c_k) / u + jnp.sum(jnp.where(in_bulk, 1 / (lam[None, :] - u[:, None]), 0.0), axis=-1) / N

    def residual(theta):
        z = silverstein_z(s, theta[0], theta[1], theta[2], c_k)
        if mode == "reference":
            z = jnp.where(1 - theta[0] > 0, z, -200.0)
        return jnp.where(used, u - z, 0.0)

    def derivatives(theta):
        """The residual's Jacobian and second derivatives (``-`` those of ``z``, closed forms)."""
        jac, curv = silverstein_z_derivatives(s, theta[0], theta[1], theta[2], c_k)
        keep = used & (1 - theta[0] > 0) if mode == "reference" else used  # the reference's -200 is constant
        return jnp.where(keep[:, None], -jac, 0.0), jnp.where(keep[:, None, None], -curv, 0.0)

    lb = jnp.stack([jnp.zeros((), dtype), l_min, l_min])
    ub = jnp.stack([jnp.ones((), dtype), l_max, l_max])
    starts = jnp.asarray(_STARTS[:1] if mode == "reference" else _STARTS, dtype)
    x0 = lb + starts * (ub - lb)
    sols = jax.vmap(lambda x: least_squares_box(residual, x, lb, ub, n_iter, derivatives=derivatives))(x0)
    best = jnp.argmin(jnp.where(jnp.isfinite(sols.cost), sols.cost, jnp.inf))
    theta = sols.x[best]
    rms = jnp.sqrt(jnp.sum(jnp.where(used, residual(theta) / u_scale, 0.0) ** 2) / jnp.sum(used))
    return theta, rms, c_k, sols.converged[best]


def _sphericity(lam: Array, K: Array, N: Array, length: Array) -> Array:
    r"""John's sphericity statistic of the bulk ``lambda_{K+1..p}``, standardised (spec section 10).

    With ``n = p - K`` and the bulk moments ``gamma_k = (1/n) sum_{j>K} lambda_j^k``,
    ``U = gamma_2 / gamma_1^2 - 1`` and ``T = (N U - n - 1) / 2``. For one bulk
    (``Sigma = sigma^2 I``, Gaussian entries) ``N U - n -> N(1, 4)`` as ``n, N -> inf`` with any ratio
    (Ledoit & Wolf 2002), so ``T`` is approximately standard normal; for a two-atom population
    ``U -> v + c`` with ``v = t (1 - t) (s1 - s2)^2 / h_1^2``, so ``T ~ N v / 2`` grows with ``N``.
    i.i.d. entries of excess kurtosis ``kappa`` shift ``N U - n - 1`` by ``kappa`` (a fixed offset, not growing
    with ``N``): :func:`_fit_pdb_one` subtracts ``kappa / 2`` (:func:`pdbjax.linalg.column_kurtosis`).
    Scale-invariant; computed on ``lambda / gamma_1`` so it cannot overflow. ``p = length`` (data).
    """
    in_bulk = bulk(lam, K, length)
    n = (length - K).astype(lam.dtype)
    g1 = jnp.sum(jnp.where(in_bulk, lam, 0.0)) / n
    r = jnp.where(in_bulk, lam / g1, 0.0)
    return (N * (jnp.sum(r * r) / n - 1) - n - 1) / 2


def _two_bulks(stat: Array, t: Array, s1: Array, s2: Array, K: Array, p: Array, N: Array) -> Array:
    """Whether the two-atom population is identified (spec section 10): the bulk is not one
    Marchenko-Pastur bulk (``stat > BULKS_Z``), the fitted population's own dispersion would be
    detected at the same level (``(N v - 1) / 2 > BULKS_Z``), and the minority atom holds at least
    one eigenvalue (``min(t, 1 - t) (p - K) >= 1``)."""
    h1 = t * s1 + (1 - t) * s2
    v = t * (1 - t) * (s1 - s2) ** 2 / h1**2
    return (stat > BULKS_Z) & ((N * v - 1) / 2 > BULKS_Z) & (jnp.minimum(t, 1 - t) * (p - K) >= 1)


#: Default iteration cap of the PDBLS least squares (:func:`fit_pdb`'s ``n_iter``; :mod:`pdbjax.figures` too).
N_ITER = 200


def check_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is a PDBLS mode (:data:`Mode`)."""
    if mode not in ("scaled", "reference"):
        raise ValueError(f"mode must be 'scaled' or 'reference'; got {mode!r}")


def fit_pdb(
    eigs: jax.typing.ArrayLike,
    N: int | np.ndarray,
    *,
    mode: Mode = "scaled",
    n_iter: int = N_ITER,
    precision: Literal["float64", "input"] = "float64",
    kurtosis: jax.typing.ArrayLike | None = None,
    source: Literal["svd", "gram"] = "svd",
) -> PDBFit:
    r"""Fit the PDB model by PDBLS (Algorithm 1 of the paper; spec section 6), batched.

    1. ``K0`` = :func:`spike_count` (EDA/EDB in the window ``w = floor(6 N^0.1)``). ``mode="scaled"``: where it
       reaches ``w`` with at least ``K0`` eigenvalues above the fitted ``lambda_+`` (step 4), steps 1-4 are
       repeated with the window doubled, up to :func:`widest_window`, and a widened fit replaces the last
       only when it is ok (module docstring).
    2. Grid ``u``: 20 points in ``(-10, 0)``, 20 in ``(0, l_min / 2)`` (when ``p < N`` and the lower edge
       is soft, :data:`LOWER_SEGMENT_MIN`; ``mode="reference"``: when ``p < N``) and 20 in
       ``(5 l_max, 10 l_max)``, with ``l_min, l_max`` the extreme bulk eigenvalues
       ``lambda_{K0+1..p}``; ``s_i = m_n(u_i)``, the empirical companion Stieltjes transform of the bulk.
    3. Least squares ``min sum_i (u_i - z(s_i; t, s1, s2))^2`` over ``t in [0, 1]``,
       ``s1, s2 in [l_min, l_max]`` (Silverstein equation), by a projected Levenberg-Marquardt
       iterated to scipy's tolerances (at most ``n_iter`` steps) from several starts (:mod:`pdbjax.lsq`).
    4. Relabel so that ``t >= 0.5``; support edges, critical points and ``lambda_+`` from
       :mod:`pdbjax.spectral` with ``c_K = (p - K0) / N``.
    5. A residual (RMS of ``u_i - z(s_i)``, each grid segment relative to its own RMS ``u``) above
       :data:`POOR_FIT_RESIDUAL` flags the row ``Reason.POOR_FIT``
       (no bulk the model can describe, e.g. power-law singular values).
    6. One bulk or two (spec section 10): John's sphericity statistic of the bulk ``T`` (standardised,
       ``~N(0, 1)`` for one Marchenko-Pastur bulk of Gaussian entries; minus ``kurtosis / 2``, the shift
       that entries of excess kurtosis ``kurtosis`` give it) and the fitted population's own dispersion must both
       exceed :data:`BULKS_Z`, and the minority atom must hold at least one eigenvalue; otherwise the
       row has ``bulks = 1`` and the population ``t = 1``, ``sigma1_sq = sigma2_sq = gamma_1`` (the
       mean bulk eigenvalue, which equals ``h_1`` under the model), whose edges and ``lambda_+`` are
       Marchenko-Pastur's. Pure i.i.d. noise is the canonical one-bulk case. A spherical bulk does not
       need the two-atom least squares to converge (it is not identified there); a non-spherical one
       does, or the row is ``NOT_CONVERGED``.

    Args:
      eigs: eigenvalues, shape ``(..., p)`` (sorted descending here if they are not).
      N: larger matrix dimension: an int, or integer array broadcasting to ``eigs.shape[:-1]`` (a
        concrete value, passed to the compiled fit as data: one compilation serves every ``N``).
      mode: ``"scaled"`` (scale-invariant, multi-start; default) or ``"reference"`` (the official
        code's algorithm, see the module docstring).
      n_iter: step cap of the least squares (a start that reaches it has not converged).
      precision: ``"float64"`` computes under a local ``jax.enable_x64`` (results are cast back to
        the input's float dtype); ``"input"`` computes in the input dtype (used automatically when
        called under ``jit``).
      kurtosis: the excess kurtosis of the matrices' entries (:func:`pdbjax.linalg.column_kurtosis` of ``W``,
        broadcasting to the batch shape), by which step 6 corrects the sphericity statistic; ``None`` (0)
        assumes Gaussian entries. ``analyze`` and ``compress`` pass it; sparse or heavy-tailed i.i.d. noise
        fitted without it can pass for two bulks.
      source: how ``eigs`` were computed, which says which of them are zeros (a rank-deficient matrix's):
        ``"svd"`` (default; squares of singular values, as :func:`eigenvalues` returns them: zero below
        ``(100 eps)^2 lambda_1``) or ``"gram"`` (an eigendecomposition of ``W^T W``, ``eigenvalues(W,
        solver="gram")``: zero below ``100 eps lambda_1``, the Gram matrix's rounding);
        :func:`pdbjax.inputs.source_rtol`.

    Returns:
      :class:`~pdbjax.fits.PDBFit` with leading batch axes, in the input's float dtype as JAX holds it (float32
      for float64 input unless 64-bit mode is on); rows with ``ok = False`` are NaN and carry
      a :class:`~pdbjax.fits.Reason`.

    Example (two noise bulks, variances 1 and 8 with weights 0.6 / 0.4, and two spikes):

    >>> import jax, pdbjax
    >>> W = pdbjax.simulate(jax.random.PRNGKey(0), 800, 400, pdbjax.PDB(0.6, 1.0, 8.0), spikes=[60.0, 30.0])
    >>> fit = pdbjax.fit_pdb(pdbjax.eigenvalues(W), 800)
    >>> int(fit.bulks), round(float(fit.t), 1), round(float(fit.sigma1_sq)), round(float(fit.sigma2_sq))
    (2, 0.6, 1, 8)
    >>> pdbjax.reason_text(fit.reason)
    'ok'
    """
    eigs = jnp.asarray(eigs) if is_traced(eigs) else np.asarray(eigs)
    check_eigs(eigs, N)
    check_mode(mode)
    if precision not in ("float64", "input"):
        raise ValueError(f"precision must be 'float64' or 'input'; got {precision!r}")
    try:  # as check_eigs does for N
        np.broadcast_to(np.empty(np.shape(0.0 if kurtosis is None else kurtosis)), eigs.shape[:-1])
    except ValueError:
        raise ValueError(f"kurtosis of shape {np.shape(kurtosis)} does not broadcast to the batch shape {eigs.shape[:-1]}") from None
    if kurtosis is not None and not is_traced(kurtosis) and not np.all(np.isfinite(np.asarray(kurtosis, np.float64))):
        # a NaN statistic would read as "one bulk" and give an ok fit of the wrong population
        raise ValueError(f"kurtosis must be finite; got {kurtosis!r}")
    rtol = source_rtol(eigs.dtype, source)
    out_dtype = jax.dtypes.canonicalize_dtype(work_dtype(eigs.dtype))  # float64 NumPy input: float32 unless x64
    n, window, length = fit_inputs(eigs, N)
    kappa = jnp.broadcast_to(jnp.asarray(0.0 if kurtosis is None else kurtosis), eigs.shape[:-1])
    if precision == "float64" and not is_traced(eigs):
        with float64():
            fit = fit_pdb_batched(jnp.asarray(eigs, jnp.float64), n, window, length, mode, n_iter, rtol,
                                  kappa.astype(jnp.float64))
            return _held(jax.tree_util.tree_map(lambda x: x.astype(out_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, fit))
    return fit_pdb_batched(jnp.asarray(eigs, out_dtype), n, window, length, mode, n_iter, rtol, kappa.astype(out_dtype))


def _held(fit: PDBFit) -> PDBFit:
    """``fit`` (cast to the input's dtype) with the rows whose variances or ``lambda_+`` the cast lost (underflow to 0,
    overflow to inf) turned into ``Reason.OUT_OF_RANGE``, their population NaN (never an ``ok`` row of zeros)."""
    held = (fit.sigma1_sq > 0) & (fit.sigma2_sq > 0) & (fit.lambda_plus > 0) & jnp.isfinite(fit.lambda_plus) & \
        jnp.isfinite(fit.sigma1_sq) & jnp.isfinite(fit.sigma2_sq)
    lost = fit.ok & ~held
    if not bool(jnp.any(lost)):
        return fit
    nan = lambda x: jnp.where(lost.reshape(lost.shape + (1,) * (x.ndim - lost.ndim)), jnp.nan, x)  # noqa: E731
    return fit._replace(
        **{name: nan(getattr(fit, name)) for name in ("t", "sigma1_sq", "sigma2_sq", "c", "edges", "critical", "lambda_plus",
                                                       "residual")},
        bulks=jnp.where(lost, 0, fit.bulks), ok=fit.ok & ~lost, reason=demote(fit.reason, lost, Reason.OUT_OF_RANGE))


@exported.jit(static_argnames=("mode",), cpu_compiler_options=exported.FAST_COMPILE)
def fit_pdb_singular_values(s: Array, N: Array, window: Array, length: Array, kurtosis: Array | None = None, *,
                            mode: str) -> PDBFit:
    """:func:`fit_pdb_batched` of the eigenvalues ``s**2`` of singular values ``s`` ``(..., P)``, :data:`N_ITER`
    steps: the one program in which ``analyze`` (:mod:`pdbjax.figures`) and ``compress``
    (:func:`pdbjax.filter.fit_spectrum`) fit a spectrum, so a model analysed first is not compiled again
    when it is compressed. ``N``, ``window`` and ``length`` from :func:`fit_inputs`, ``kurtosis`` the spectrum's
    (:attr:`pdbjax.linalg.Spectrum.kurtosis`; None: 0). Zeros are screened at ``svd_screen_rtol`` of ``s``' dtype
    (the values come from an SVD).

    >>> import jax, pdbjax
    >>> W = pdbjax.simulate(jax.random.PRNGKey(0), 800, 400, pdbjax.PDB(0.6, 1.0, 8.0), spikes=[60.0, 30.0])
    >>> s = pdbjax.linalg.spectrum(W[None]).s  # singular values of W / scale, a batch of one
    >>> n, window, length = fit_inputs(s, 800)
    >>> fit = fit_pdb_singular_values(s, n, window, length, mode="scaled")
    >>> int(fit.bulks[0]), round(float(fit.t[0]), 1), pdbjax.reason_text(fit.reason[0])
    (2, 0.6, 'ok')
    """
    return fit_pdb_batched(s**2, N, window, length, mode, N_ITER, svd_screen_rtol(s.dtype), kurtosis)


@exported.jit(static_argnames=("mode", "n_iter", "rtol"), cpu_compiler_options=exported.FAST_COMPILE)
def fit_pdb_batched(eigs: Array, N: Array, window: Array, length: Array, mode: str, n_iter: int, rtol: float,
                    kurtosis: Array | None = None) -> PDBFit:
    """The compiled core of :func:`fit_pdb`: unchecked work-dtype ``eigs`` ``(..., P)``, padded after each
    spectrum's ``length`` entries (:mod:`pdbjax.inputs`), ``N``, ``window`` and ``length`` from
    :func:`fit_inputs`, ``rtol`` = ``screen_rtol`` of the caller's dtype, ``kurtosis`` the entries' excess
    kurtosis per spectrum (None: 0) (traceable)."""
    batch, p = eigs.shape[:-1], eigs.shape[-1]
    length = length.reshape(-1)
    flat = sort_valid(eigs.reshape(-1, p), length)  # descending, whatever order the caller used
    kappa = jnp.zeros(flat.shape[0], flat.dtype) if kurtosis is None else jnp.asarray(kurtosis, flat.dtype).reshape(-1)
    fit = jax.vmap(lambda v, n, w, q, k: _fit_pdb_one(v, n, w, q, k, mode, n_iter, rtol))(
        flat, N.astype(flat.dtype), window, length, kappa)
    return jax.tree_util.tree_map(lambda x: x.reshape(batch + x.shape[1:]), fit)


def _fit_pdb_one(eigs: Array, N: Array, window: Array, length: Array, kurtosis: Array, mode: str, n_iter: int,
                 rtol: float) -> PDBFit:
    code = screen(eigs, rtol, length)
    screened = code == Reason.OK  # K and the sphericity describe the spectrum, fit or not
    lam = placeholder(eigs, code, length)
    # The few exact zeros the screen lets through (up to 5%: e.g. all-zero columns, which leave an N x (p - z)
    # matrix) are left out like padding: a zero smallest eigenvalue would put a point of the fit's grid
    # (0, l_min / 2) on a pole of the transform (a NOT_CONVERGED two-bulk matrix, a NaN residual on noise).
    # Only where Marchenko-Pastur puts no eigenvalue near 0: the zero threshold below a tenth of its lower edge
    # (1 - sqrt(p / N))^2 at the median's scale; near c = 1 the bulk itself reaches 0, and stays whole.
    top = jnp.max(jnp.where(valid(lam, length), lam, 0.0))
    lower = median(lam, length) * (1 - jnp.sqrt(length / N)) ** 2
    drop = screened & (rtol * top < 0.1 * lower)
    cap = widest_window(window, length)  # of the whole spectrum: api judges beyond_window by p, zeros or not
    length = length - jnp.where(drop, count_zeros(eigs, rtol, length), 0).astype(length.dtype)
    scale = median(lam, length) if mode == "scaled" else jnp.ones((), lam.dtype)
    lam = lam / scale
    at = functools.partial(_fit_at_window, lam, scale, code, screened, N, length, kurtosis, mode, n_iter)
    if mode == "reference":
        return at(window)
    # Widen the window while K0 sits on its edge with every spike above the fitted edge (module docstring):
    # one traced fit in a loop whose first pass is the reference window. A widened fit that is not ok is
    # dropped (the last ok fit stands) and ends the loop.

    def again(state):
        w, fit, first, refused = state
        above = jnp.sum(valid(lam, length) & (lam * scale > fit.lambda_plus))
        return first | (~refused & (fit.reason == Reason.OK) & (fit.K >= w) & (above >= fit.K) & (w < cap))

    def widen(state):
        w, fit, first, _ = state
        wider = jnp.where(first, window, jnp.minimum(2 * w, cap))
        new = at(wider)
        keep = first | (new.reason == Reason.OK)
        fit = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, fit)
        return jnp.where(keep, wider, w), fit, jnp.zeros((), bool), ~keep

    start = (window, _empty_fit(lam.dtype, code.dtype), jnp.ones((), bool), jnp.zeros((), bool))
    return lax.while_loop(again, widen, start)[1]


def widest_window(window: Array | int, length: Array | int) -> Array | int:
    """The widest spike window of ``mode="scaled"``, ``max(w, p // 2)`` for the reference window ``w =``
    :func:`spike_window` and ``p = length`` (host ints give an int, arrays an array).

    >>> widest_window(spike_window(1024, 512), 512), widest_window(spike_window(160, 16), 16)
    (256, 9)
    """
    if isinstance(window, (int, np.integer)) and isinstance(length, (int, np.integer)):
        return max(int(window), int(length) // 2)
    return jnp.maximum(window, length // 2)


def _empty_fit(dtype, code_dtype) -> PDBFit:
    """A placeholder :class:`PDBFit` of one spectrum (the widening loop's state before its first pass)."""
    zero, edge, count = jnp.zeros((), dtype), jnp.zeros(4, dtype), jnp.zeros((), jnp.int32)
    return PDBFit(K=count, t=zero, sigma1_sq=zero, sigma2_sq=zero, c=zero, edges=edge, critical=edge, lambda_plus=zero,
                  residual=zero, bulks=count, sphericity=zero, ok=jnp.zeros((), bool), reason=jnp.zeros((), code_dtype))


def _fit_at_window(lam: Array, scale: Array, code: Array, screened: Array, N: Array, length: Array, kurtosis: Array,
                   mode: str, n_iter: int, window: Array) -> PDBFit:
    """The PDBLS fit of one screened, scaled spectrum ``lam`` (eigenvalues / ``scale``) with spike window ``window``."""
    K = _spike_count_one(lam, N, window, length)
    theta, rms, c_k, converged = _fit_one(lam, K, N, length, mode, n_iter)
    t, s1, s2 = theta[0], theta[1], theta[2]
    t, s1, s2 = jnp.where(t < 0.5, 1 - t, t), jnp.where(t < 0.5, s2, s1), jnp.where(t < 0.5, s1, s2)
    stat = _sphericity(lam, K, N, length) - kurtosis / 2
    two = _two_bulks(stat, t, s1, s2, K, length, N)
    # One bulk: Marchenko-Pastur with sigma^2 = gamma_1, the bulk's mean eigenvalue (gamma_1 = h_1 exactly
    # under the model, and no solver is involved: a degenerate two-atom least squares cannot spoil it).
    gamma1 = jnp.sum(jnp.where(bulk(lam, K, length), lam, 0.0)) / (length - K)
    t, s1, s2 = jnp.where(two, t, 1.0), jnp.where(two, s1, gamma1), jnp.where(two, s2, gamma1)
    pop = PDB(t, s1, s2)
    beta = edges(pop, c_k) * scale
    alpha = critical_points(pop, c_k) * scale
    lam_plus = jnp.nanmax(beta)
    # The two-atom solution is used only when the bulk is not spherical; only then must it have converged.
    solved = (converged | (stat <= BULKS_Z)) & jnp.all(jnp.isfinite(theta)) & jnp.isfinite(lam_plus) & (s1 > 0) & (s2 > 0)
    code = demote(code, ~solved, Reason.NOT_CONVERGED)
    code = demote(code, rms > POOR_FIT_RESIDUAL, Reason.POOR_FIT)
    code = demote(code, length - K < _MIN_BULK, Reason.NO_BULK)
    return fit_result(
        PDBFit, code,
        dict(t=t, sigma1_sq=s1 * scale, sigma2_sq=s2 * scale, c=c_k, edges=beta, critical=alpha, lambda_plus=lam_plus,
             residual=rms),
        K=jnp.where(screened, K, 0).astype(jnp.int32),
        bulks=jnp.where(code == Reason.OK, jnp.where(two, 2, 1), 0).astype(jnp.int32),
        sphericity=jnp.where(screened, stat, jnp.nan),
    )
