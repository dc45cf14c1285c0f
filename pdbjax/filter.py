r"""Noise filtering of weight matrices: PDB/PUB Algorithm 2 and the SVD baselines (spec sections 7-8).

Conventions (``shared/spec/pdb-model.md`` section 1). A weight ``W`` of shape ``(..., a, b)`` in any
orientation (a Flax ``Dense`` kernel is ``(in, out)``); ``p = min(a, b)``, ``N = max(a, b)``. Its thin
SVD is ``W = U diag(s) V^T`` with ``U`` ``(..., a, p)``, ``V^T`` ``(..., p, b)`` and ``s`` descending; the
eigenvalues are ``lambda_j = s_j^2`` (no ``1/N``), the descending input of the estimators
:func:`pdbjax.estimate.fit_pdb` and :func:`pdbjax.pub.fit_pub`. Leading axes are a batch of
equal-shape matrices; a fit for a batch carries the same leading axes.

Algorithm 2 (Wu, Zhu & Li 2025), per matrix, given a fit of the bulk population ``H``:

1. :func:`outlier_mask`: ``lambda_j > lambda_+``, and for two separated bulks also
   ``beta_2 < lambda_j < beta_3`` (every gap eigenvalue; the reference code drops the lowest one).
2. :func:`shrink_spikes`: each outlier ``lambda_j`` becomes its population value
   ``alpha_j = g^{-1}(lambda_j)`` (:func:`pdbjax.spectral.spike_inverse`); the new singular value is
   ``sqrt(alpha_j)``. Bulk eigenvalues are left as they are.
3. Keep the first ``keep`` components (:func:`keep_count`) and zero the rest:
   ``W' = U diag(s') V^T``. Components are truncated by their position in the SVD of ``W`` (the
   ``m`` smallest *sample* singular values go), as in the reference code
   (``svals_shifted[-nRemove:] = 0``); shrinking does not reorder them.

Step 2 is a choice (``shrink``): ``"spikes"`` is the paper's covariance-spike replacement above,
``"optimal"`` the additive signal-plus-noise shrinker ``w = -2 D / D'`` of
:func:`pdbjax.shrink.shrink_optimal` (spec section 11; every component at or below ``sqrt(lambda_+)``
becomes 0), ``"none"`` keeps the sample singular values (truncation only).

Static shapes. Keep counts differ between the matrices of a batch, so truncation is a mask on the
full thin SVD and every output has a fixed shape: ``filter_matrix`` runs under ``jit`` with static
``method``/``rank``/``shrink``, and a batch gives the keep counts of a loop over its matrices and its
weights to the working precision's rounding, not bit for bit (a batched SVD rounds differently; tested at
2e-5 of unit-scale float32 weights).

References:
  Wu, Zhu & Li (2025), "Weight matrices compression based on PDB model in deep neural networks",
  ICML, Algorithm 2; reference code ``noise_filter.py``, ``neural.recover_and_remove_svals``.
  Staats, Thamm & Rosenow (2023), "Boundary between noise and information applied to filtering
  neural network weight matrices", Phys. Rev. E 108, L022302 (PUB filtering).
  Swaminathan, Garg, Kannan & Andres (2020), "Sparse low rank factorization for deep neural network
  compression", Neurocomputing 398, 185-196 (SLR).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Literal, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax import exported
from pdbjax._validate import is_traced
from pdbjax.estimate import Mode, check_mode, fit_inputs, fit_pdb, fit_pdb_singular_values
from pdbjax.fits import PDBFit, PUBFit, Reason
from pdbjax.inputs import check_eigs, svd_screen_rtol, valid
from pdbjax.linalg import Factors, Spectrum, factors, raw_eigenvalues, spectrum
from pdbjax.precision import Precision, float64, scope
from pdbjax.pub import ALPHA, BETA, fit_pub, fit_pub_batched, pub_inputs
from pdbjax.shrink import shrink_optimal
from pdbjax.spectral import PDB, critical_points, spike_inverse

__all__ = ["FilterInfo", "svd", "outlier_mask", "shrink_spikes", "keep_count", "filter_matrix"]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Fit = Union[PDBFit, PUBFit]
#: A keep rule: an ``int`` rank, a ``float`` removed fraction, a rule name, or an integer array of keep
#: counts, one per matrix of the batch (:func:`filter_matrix`).
Rank = Union[int, float, str, np.ndarray, jax.Array]
Method = Literal["pdb", "pub-bema", "pub-kernel", "svd", "slr"]
Shrink = Literal["spikes", "optimal", "none"]

METHODS = ("pdb", "pub-bema", "pub-kernel", "svd", "slr")
RULES = ("spikes", "upper-bulk", "auto")
SHRINKS = ("spikes", "optimal", "none")
_SHRINKING = ("pdb", "pub-bema", "pub-kernel")


@exported.register
class FilterInfo(NamedTuple):
    """What :func:`filter_matrix` did to each matrix (a pytree; every field has the batch shape).

    Attributes:
      keep: number of components kept (int32); ``p`` where the matrix is not filtered (``ok`` False). With ``shrink="optimal"``, which
        sets every component at or below the edge to 0, at most the components above ``lambda_+`` (the
        rank's count when it is smaller): the non-zero ones, so factored output is no wider.
      n_outliers: components the shrinkage moves (int32), counted before the truncation to ``keep`` (a rank
        below it truncates some of them): Algorithm 2's outliers (:func:`outlier_mask`) for ``shrink="spikes"``,
        the components above ``lambda_+`` for ``"optimal"``; 0 for ``"none"`` (the default of
        ``"svd"``/``"slr"``) and bad fits.
      params_before: ``a * b`` (int32).
      params_after: stored parameters of the output (int32). Dense output: ``a * b``. Factored:
        ``keep * (a + b)`` (``A = U_k diag(s'_k)^(1/2)``, ``B = diag(s'_k)^(1/2) V_k^T``); SLR: ``nnz(U_k) + k + nnz(V_k^T)``
        with the structural non-zeros of the sparsified factors (Swaminathan et al.'s count).
      rel_change: ``||W' - W||_F / ||W||_F`` of the returned weight (after the cast to the input
        dtype; for factored output ``W' = A @ B``), measured on ``W / scale`` so it cannot overflow;
        0 for an all-zero ``W`` and for a matrix that was not filtered.
      ok: whether the weight was filtered; False where the fit is not ok, the matrix is not finite, or the
        rule ``"auto"`` leaves a one-bulk matrix as it is (weight returned unchanged).
      reason: why not: the fit's :class:`~pdbjax.fits.Reason` code (``Reason.OK`` when no fit is used),
        ``NON_FINITE``, ``ONE_BULK`` (``"auto"`` on an ok fit with one bulk) or ``OUT_OF_RANGE``.
    """

    keep: Array
    n_outliers: Array
    params_before: Array
    params_after: Array
    rel_change: Array
    ok: Array
    reason: Array


# --------------------------------------------------------------------------------------------------
# SVD convention


def svd(W: ArrayLike, *, precision: Precision | None = None) -> tuple[Array, Array, Array]:
    r"""Thin SVD ``W = U diag(s) V^T`` of a stack of matrices ``(..., a, b)``, any orientation.

    Returns ``(U, s, Vh)`` with shapes ``(..., a, p)``, ``(..., p)`` (descending) and ``(..., p, b)``,
    ``p = min(a, b)``; the eigenvalues of the spec are ``s**2``. Computed by the one decomposition path
    (:mod:`pdbjax.linalg`: normalised by a power of two; ``precision`` ``"float32"``, ``"float64"``
    or ``None``, JAX's default float). Singular values of a non-finite matrix are NaN.
    """
    f = factors(_as_matrices(W), precision=precision)
    s = jnp.where(f.finite[..., None], f.s * f.scale[..., None], jnp.nan)
    return f.U, s, f.Vh


def _as_matrices(W: ArrayLike) -> Array:
    W = jnp.asarray(W)
    if W.ndim < 2:
        raise ValueError(f"expected matrices of shape (..., a, b); got shape {W.shape}")
    if not jnp.issubdtype(W.dtype, jnp.floating):
        raise TypeError(f"expected a real floating-point weight; got dtype {W.dtype}")
    return W


# --------------------------------------------------------------------------------------------------
# Algorithm 2, steps 1-2


def _ok(fit: Fit, batch: tuple[int, ...]) -> Array:
    return jnp.broadcast_to(jnp.asarray(fit.ok, bool), batch)


def _above_edge(lam: Array, fit: Fit) -> Array:
    """``lambda_j > lambda_+`` where the fit is ok (the strict noise boundary)."""
    return (lam > jnp.asarray(fit.lambda_plus)[..., None]) & _ok(fit, lam.shape[:-1])[..., None]


@jax.jit
def outlier_mask(eigs: ArrayLike, fit: Fit) -> Array:
    r"""Outliers of Algorithm 2, step 1: a boolean mask of the shape of ``eigs``.

    ``lambda_j > lambda_+``; for a :class:`~pdbjax.fits.PDBFit` with four finite edges (two separated
    bulks ``[beta_1, beta_2] U [beta_3, beta_4]``) also every ``lambda_j`` with
    ``beta_2 < lambda_j < beta_3``, including the lowest gap eigenvalue (the reference code's slice
    drops it; spec section 7). A :class:`~pdbjax.fits.PUBFit` uses its ``lambda_plus``
    (``sigma^2 (1 + sqrt c)^2``), not BEMA's Tracy-Widom ``threshold``. All False where the fit is
    not ok.

    Args:
      eigs: eigenvalues ``s^2``, shape ``(..., p)`` (descending order is not required).
      fit: fit whose fields have the batch shape ``eigs.shape[:-1]`` (or broadcast to it).
    """
    mask = _above_edge(eigs, fit)
    if isinstance(fit, PDBFit):
        beta = jnp.asarray(fit.edges)
        separated = jnp.all(jnp.isfinite(beta), axis=-1)[..., None]
        in_gap = (eigs > beta[..., 1:2]) & (eigs < beta[..., 2:3])
        mask = mask | (separated & in_gap & _ok(fit, eigs.shape[:-1])[..., None])
    return mask


@jax.jit
def shrink_spikes(eigs: ArrayLike, fit: Fit) -> Array:
    r"""Algorithm 2, step 2: replace every outlier ``lambda_j`` by its population spike ``alpha_j``.

    ``alpha_j`` is the admissible root of ``g(alpha) = lambda_j`` (spec section 4), computed by
    :func:`pdbjax.spectral.spike_inverse` with the fit's population and ``c``: above ``alpha_max`` for
    outliers above ``lambda_+``, in ``(alpha_2, alpha_3)`` for gap outliers. PUB closed form:
    ``alpha = (lambda + sigma^2 (1 - c) + sqrt((lambda + sigma^2 (1 - c))^2 - 4 lambda sigma^2)) / 2``.
    An outlier that rounding places inside the support (within float error of an edge ``beta_i``)
    gets the limit ``alpha_i`` at that edge. Non-outliers are returned unchanged, in place (no
    re-sorting); the new singular values are ``sqrt`` of the result.

    Args:
      eigs: eigenvalues ``s^2``, shape ``(..., p)``.
      fit: :class:`~pdbjax.fits.PDBFit` or :class:`~pdbjax.fits.PUBFit` with batch shape ``eigs.shape[:-1]``.

    Returns:
      Eigenvalues of the shape and dtype of ``eigs``.
    """
    pop = PDB(*(jnp.asarray(v)[..., None] for v in fit.population))
    alpha = spike_inverse(eigs, pop, jnp.asarray(fit.c)[..., None])
    alpha = jnp.where(jnp.isnan(alpha), _edge_limit(eigs, fit), alpha)
    return jnp.where(outlier_mask(eigs, fit), alpha.astype(eigs.dtype), eigs)


def _edge_limit(lam: Array, fit: Fit) -> Array:
    """``g^{-1}`` at the support edge next to each outlier: ``alpha_max`` above ``lambda_+``, ``alpha_2``
    or ``alpha_3`` (the nearer of ``beta_2``, ``beta_3``) in the gap; the limit of the spike map there."""
    if isinstance(fit, PDBFit):
        crit, beta = jnp.asarray(fit.critical), jnp.asarray(fit.edges)
        nearer_low = jnp.abs(lam - beta[..., 1:2]) < jnp.abs(lam - beta[..., 2:3])
        in_gap = jnp.where(nearer_low, crit[..., 1:2], crit[..., 2:3])
    else:
        crit = critical_points(fit.population, fit.c)
        in_gap = jnp.full_like(lam, jnp.nan)
    return jnp.where(_above_edge(lam, fit), jnp.nanmax(crit, axis=-1)[..., None], in_gap)


# --------------------------------------------------------------------------------------------------
# How many components to keep


def _check_rank(rank: Rank) -> Rank:
    """Validate ``rank`` and normalise NumPy scalars to Python ones (an ``int``/``float``/rule is a static
    choice); an integer array of keep counts is returned as an array (checked for ``>= 0`` when concrete)."""
    if isinstance(rank, str):
        if rank not in RULES:
            raise ValueError(f"rank rule must be one of {RULES}; got {rank!r}")
        return rank
    if isinstance(rank, (bool, np.bool_)):
        raise TypeError("rank must be an int, a float removed fraction or a rule string; got a bool")
    if isinstance(rank, (np.ndarray, jax.Array)):
        if not jnp.issubdtype(rank.dtype, jnp.integer):
            raise TypeError(f"an array rank holds integer keep counts (one per matrix); got dtype {rank.dtype}")
        if rank.ndim == 0 and not is_traced(rank):
            return _check_rank(int(rank))
        if not is_traced(rank) and np.any(np.asarray(rank) < 0):
            raise ValueError(f"keep counts must be >= 0; got {np.asarray(rank).min()}")
        return rank
    if isinstance(rank, numbers.Integral):
        if rank < 0:
            raise ValueError(f"an int rank must be >= 0; got {rank}")
        return int(rank)
    if isinstance(rank, numbers.Real):
        if not 0.0 <= rank <= 1.0:
            raise ValueError(f"a float rank is the removed fraction, in [0, 1]; got {rank}")
        return float(rank)
    raise TypeError(f"rank must be an int, a float removed fraction, an integer array of keep counts or one of {RULES}; got {rank!r}")


def _fixed_keep(rank: int | float | Array, p: int | np.ndarray, batch: tuple[int, ...] = ()) -> Array:
    """Keep counts ``(*batch,)`` (int32) of an ``int`` rank (``min(rank, p)``), a ``float`` removed
    fraction (``round((1 - rank) p)``) or an integer array of keep counts (``min(k_i, p)``, broadcast to
    ``batch``; a clear error if it does not broadcast). ``p``: an int, or host integers broadcasting to
    ``batch`` (the lengths of padded spectra)."""
    p = np.broadcast_to(np.asarray(p, np.int64), batch)
    if isinstance(rank, (np.ndarray, jax.Array)):
        try:
            fits = np.broadcast_shapes(rank.shape, batch) == batch
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"keep counts of shape {rank.shape} do not broadcast to the batch shape {batch} of the weights")
        return jnp.broadcast_to(jnp.minimum(jnp.asarray(rank).astype(jnp.int32), p.astype(np.int32)), batch)
    # On the host in float64, half to even: Python's round of (1 - rank) p, row by row.
    keep = np.minimum(min(rank, np.iinfo(np.int64).max), p) if isinstance(rank, int) else np.round((1.0 - rank) * p)
    return jnp.asarray(keep.astype(np.int32))


def held(fit: Fit | None, batch: tuple[int, ...], rule: str | None) -> Array:
    """Matrices the rule ``"auto"`` leaves as they are: an ok PDB fit with one bulk (``bulks == 1``)."""
    if rule != "auto" or not isinstance(fit, PDBFit):
        return jnp.zeros(batch, bool)
    return _ok(fit, batch) & (jnp.broadcast_to(jnp.asarray(fit.bulks), batch) == 1)


def _upper_weight(fit: Fit) -> Array:
    """Bulk share of the larger-variance component: ``t`` if ``s1 > s2``, ``1 - t`` if ``s2 > s1``,
    0 for a single bulk (``s1 == s2`` or a PUB fit)."""
    if isinstance(fit, PUBFit):
        return jnp.zeros_like(jnp.asarray(fit.sigma_sq))
    t, s1, s2 = (jnp.asarray(v) for v in fit.population)
    return jnp.where(s1 > s2, t, jnp.where(s2 > s1, 1 - t, 0.0))


@functools.partial(jax.jit, static_argnames="rule")
def keep_count(eigs: ArrayLike, fit: Fit | None, rule: Rank, length: ArrayLike | None = None) -> Array:
    r"""Number of singular values to keep per matrix (int32, shape ``eigs.shape[:-1]``).

    * ``int`` ``r``: ``min(r, p)``.
    * ``float`` ``f`` in ``[0, 1]``, the removed fraction: ``round((1 - f) p)`` (half to even).
    * ``"spikes"``: the outliers above the strict boundary, ``#{j : lambda_j > lambda_+}`` (gap
      outliers of separated bulks are not kept: they sit below the upper bulk).
    * ``"upper-bulk"``: all ``K`` outliers (:func:`outlier_mask`) plus ``round(w_high (p - K))``, the
      share of the bulk owned by the larger-variance component (``w_high = t`` if
      ``sigma1_sq > sigma2_sq``, ``1 - t`` if ``sigma2_sq > sigma1_sq``, 0 for one bulk), i.e. the
      low-variance component is treated as the noise. For a PUB fit this equals ``"spikes"``.
    * ``"auto"`` (the default of :func:`pdbjax.compress`): ``"upper-bulk"`` where a PDB fit finds two
      bulks, ``p`` (keep everything) where it finds one: a one-bulk layer's bulk is a single
      Marchenko-Pastur law that no spectral rule splits into signal and noise, so it is left as it is
      (:func:`filter_matrix` returns it unchanged, ``reason`` ``ONE_BULK``). For a PUB fit this equals
      ``"spikes"``.

    Rules need a fit and give ``p`` (keep everything) where it is not ok; ``int``/``float`` ignore it.
    ``rule`` is a static (hashable) argument here; :func:`filter_matrix` also takes an integer array of
    per-matrix keep counts. ``length``: with a rule, the number ``p`` of eigenvalues of each row of
    zero-padded ``eigs`` (:mod:`pdbjax.inputs`; default: all of them).
    """
    rule = _check_rank(rule)
    batch = eigs.shape[:-1]
    p = eigs.shape[-1] if length is None else jnp.asarray(length)
    if not isinstance(rule, str):
        if length is not None:
            raise ValueError("keep_count takes length with a rule string only (a fixed rank's count is decided on the host)")
        return _fixed_keep(rule, p, batch)
    if fit is None:
        raise ValueError(f"rank rule {rule!r} needs a fit")
    if rule == "spikes":
        keep = jnp.sum(_above_edge(eigs, fit), axis=-1)
    else:
        k = jnp.sum(outlier_mask(eigs, fit), axis=-1)
        keep = k + jnp.round(_upper_weight(fit) * (p - k)).astype(k.dtype)
    keep = jnp.where(held(fit, batch, rule), p, keep)
    return jnp.where(_ok(fit, batch), keep, p).astype(jnp.int32)


# --------------------------------------------------------------------------------------------------
# filter_matrix


def filter_matrix(
    W: ArrayLike,
    method: Method = "pdb",
    rank: Rank = "spikes",
    *,
    fit: Fit | None = None, spec: Spectrum | None = None,
    shrink: Shrink | None = None,
    factored: bool = False,
    mode: Mode = "scaled",
    slr_sr: float = 0.5, slr_rr: float = 0.5,
    precision: Precision | None = None,
) -> tuple[Array | tuple[Array, Array], FilterInfo]:
    r"""Filter (compress) a stack of weight matrices ``W`` of shape ``(..., a, b)``.

    Methods:

    * ``"pdb"`` (Algorithm 2 of Wu, Zhu & Li 2025) and ``"pub-bema"`` / ``"pub-kernel"`` (the same
      algorithm with a single Marchenko-Pastur bulk, Staats et al. 2023): SVD, fit the bulk
      (``fit`` if given, else :func:`pdbjax.estimate.fit_pdb` / :func:`pdbjax.pub.fit_pub` on
      ``lambda = s^2``), :func:`shrink_spikes`, keep the first :func:`keep_count` components and
      rebuild ``W' = U diag(s') V^T``.
    * ``"svd"``: naive truncated SVD to the same keep count, nothing shifted.
    * ``"slr"`` (Swaminathan et al. 2020): truncated SVD to rank ``k`` = the keep count, then the
      ``floor(slr_sr * a)`` rows of ``U_k`` with the smallest norm (least important inputs of a Flax
      ``(in, out)`` kernel) and the ``floor(slr_sr * b)`` columns of ``V_k^T`` with the smallest norm
      (outputs) keep only their first ``floor(slr_rr * k)`` components.

    For ``"svd"``/``"slr"`` an ``int``/``float`` ``rank`` needs no fit; a rule string is evaluated with
    ``fit`` if given (a PDB or PUB fit: e.g. truncation at BEMA's count), else with
    :func:`pdbjax.estimate.fit_pdb`.

    Shrinkage of the kept singular values (``shrink``; ``None`` is the method's own: ``"spikes"`` for
    ``"pdb"``/``"pub-*"``, ``"none"`` for ``"svd"``/``"slr"``):

    * ``"spikes"``: Algorithm 2, step 2 (:func:`shrink_spikes`): outliers become ``sqrt(alpha_j)``.
    * ``"optimal"``: every singular value becomes the Frobenius-optimal ``w(s_j) = -2 D(s_j) / D'(s_j)``
      under the fitted noise (:func:`pdbjax.shrink.shrink_optimal`, spec section 11): the PDB fit for
      ``"pdb"``, the Marchenko-Pastur fit for ``"pub-*"``, the rule's fit for ``"svd"``/``"slr"``
      (which then need a rule ``rank`` or a ``fit``: with an ``int``/``float`` rank and no fit this
      raises ``ValueError``). Components at or below ``sqrt(lambda_+)`` become 0, so the effective
      rank is at most the ``"spikes"`` count whatever ``rank`` keeps.
    * ``"none"``: the sample singular values (truncation only).

    Decompositions follow :mod:`pdbjax.linalg`: each matrix is divided by a power of two, the fit and
    every keep decision use the values-only SVD (the same numbers :func:`pdbjax.analyze` sees, so a
    rule keeps the same count in both), the rebuild uses the vectors of the Gram matrix
    (:func:`pdbjax.linalg.factors` with ``via="gram"``: a projection of ``W`` as close to it as the SVD
    truncation); a fixed keep count without shrinkage (``"svd"``/``"slr"`` with an ``int``/``float``/array
    rank) decides nothing from the values and takes that decomposition alone. ``W`` and ``2^k W`` are
    filtered identically and no scale from ``1e-30`` to ``1e30`` overflows.

    A matrix that is not filtered is returned unchanged: the dense output is ``W`` itself (bitwise),
    ``info.ok`` is False, ``info.reason`` says why (the fit's code, ``NON_FINITE`` for a matrix with
    NaN/Inf entries, for every method, or ``ONE_BULK`` for a one-bulk matrix under the rule ``"auto"``),
    ``info.keep = p``. The estimator runs eagerly (in float64, see
    its ``precision``) unless the caller traces this function; everything after the fit is one
    ``jit``-compiled computation.

    Args:
      W: weights ``(..., a, b)``, any orientation and float dtype (the outputs have the dtype of
        ``W``). NumPy inputs are not written to.
      method: one of ``"pdb"``, ``"pub-bema"``, ``"pub-kernel"``, ``"svd"``, ``"slr"`` (static).
      rank: ``int`` rank, ``float`` removed fraction in ``[0, 1]``, ``"spikes"`` /
        ``"upper-bulk"`` / ``"auto"`` (see :func:`keep_count`), or an integer array of keep counts ``k`` that
        broadcasts to the batch shape ``W.shape[:-2]`` (matrix ``i`` keeps ``min(k_i, p)``; e.g. the
        per-matrix allocation of :func:`pdbjax.budget.allocate`; it may be traced under ``jit``). A
        rule is compiled in; an ``int``/``float``/array is passed to the compiled computation as
        numbers, so a sweep over ranks or allocations compiles once.
      fit: a precomputed fit of the eigenvalues ``s**2`` of ``W`` (in ``W``'s units) with batch shape
        ``W.shape[:-2]`` (a :class:`~pdbjax.fits.PDBFit` for ``"pdb"``, a :class:`~pdbjax.fits.PUBFit`
        for ``"pub-*"``, either for rule ranks or shrinkage of ``"svd"``/``"slr"``; ignored by
        ``"svd"``/``"slr"`` with an ``int``/``float`` rank and ``shrink="none"``).
      spec: ``W``'s values-only spectrum, :func:`pdbjax.linalg.spectrum` in the same ``precision``, when the
        caller has it already (:func:`pdbjax.compress` keeps it from its first pass): the keep decisions
        are taken from it, and one decomposition is saved. Its batch shape must be ``W.shape[:-2]``.
      shrink: ``"spikes"``, ``"optimal"``, ``"none"`` or ``None`` (the method's default), static.
      factored: return factors ``(A, B)`` with ``W' = A @ B`` instead of ``W'``.
      mode: PDBLS mode when the fit is estimated here (:func:`pdbjax.fit_pdb`).
      slr_sr: SLR sparsity rate: fraction of rows (columns) that are sparsified.
      slr_rr: SLR reduction rate: fraction of the ``k`` components those rows (columns) keep.
      precision: working precision of the decomposition, ``"float32"``, ``"float64"`` or ``None``
        (JAX's default float: float64 only inside ``jax.enable_x64``).

    Returns:
      ``(W_new, info)`` or ``((A, B), info)`` and a :class:`FilterInfo`. Factored output has the
      static full width ``p``, balanced: ``A = U diag(s')^(1/2)`` ``(..., a, p)`` and ``B = diag(s')^(1/2) V^T``
      ``(..., p, b)`` (no entry of either exceeds ``sqrt(s'_1)``, so factors fit a dtype wherever ``W'`` about does)
      with columns of ``A`` / rows of ``B`` from ``info.keep`` on exactly zero (for SLR also the
      sparsified entries), so ``A[..., :r], B[..., :r, :]`` with ``r = int(info.keep.max())`` is the
      compact form with the same product. A matrix whose fit is not ok gets its full factors
      (``A @ B = W`` up to rounding; zeros for a non-finite matrix).
    """
    shrink = resolve_shrink(method, shrink)
    rank = _check_rank(rank)
    for name, value in (("slr_sr", slr_sr), ("slr_rr", slr_rr)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got {value}")
    W = _as_matrices(W)
    if spec is None and not needs_fit(method, rank, shrink):
        # A fixed keep count without shrinkage decides nothing from the values: one decomposition, the rebuild's.
        keep = _fixed_keep(rank, min(W.shape[-2:]), W.shape[:-2])
        return _rebuild_tall(_rebuild_fixed, W, keep, method, factored=factored, slr_sr=slr_sr, slr_rr=slr_rr,
                             precision=precision)
    if spec is None:
        spec = spectrum(W, precision=precision)
    elif jnp.shape(spec.s) != W.shape[:-2] + (min(W.shape[-2:]),):
        raise ValueError(f"spec holds singular values of shape {jnp.shape(spec.s)}; W of shape {W.shape} needs "
                         f"{W.shape[:-2] + (min(W.shape[-2:]),)}")
    if not needs_fit(method, rank, shrink):
        fit = None
    elif fit is None:
        if method not in _SHRINKING and not isinstance(rank, str):
            raise ValueError(
                f"shrink={shrink!r} with method {method!r} needs a fit of the noise: pass fit= (a PDBFit or "
                f"PUBFit) or a rule rank such as 'spikes'; got rank={rank!r} and no fit"
            )
        fit = fit_spectrum(spec, max(W.shape[-2:]), method, mode)
    else:
        _check_fit(fit, method, W.shape[:-2])
    decision = decide(spec, fit, rank, shrink)
    return apply_decision(W, decision, method, factored=factored, slr_sr=slr_sr, slr_rr=slr_rr, precision=precision)


def decide(spec: Spectrum, fit: Fit | None, rank: Rank, shrink: str, length: np.ndarray | None = None) -> _Decision:
    """Steps 2-3 of :func:`filter_matrix` for the matrices of ``spec`` (their values-only spectrum): keep counts,
    outliers and the new singular values, from ``spec`` and ``fit`` (in ``W``'s units, or None where the
    method needs none) alone, in one program per (padded) spectrum length and batch (:func:`_decide`).

    :func:`pdbjax.compress` decides once per padded length for the whole model, then rebuilds each shape
    group with :func:`apply_decision`. ``rank`` as in :func:`filter_matrix` (checked), ``shrink`` resolved.
    ``length``: the number ``p`` of singular values of each row of a zero-padded ``spec`` (host integers;
    default: all); the decision's ``shrunk`` and ``replace`` keep the padded length.
    """
    rank = _check_rank(rank)
    batch = spec.s.shape[:-1]
    length = np.broadcast_to(np.asarray(spec.s.shape[-1] if length is None else length, np.int32), batch)
    # Fixed keep counts are a traced argument (a sweep over ranks or budgets compiles once); rules are static.
    rule = rank if isinstance(rank, str) else None
    fixed = np.zeros(batch, np.int32) if rule else _fixed_keep(rank, length, batch)
    with scope(spec):
        fit_n = None if fit is None else normalised_fit(fit, spec)
        return _decide(spec.s, spec.finite, fit_n, fixed, length, shrink=shrink, rule=rule)


def apply_decision(
    W: Array, decision: _Decision, method: Method, *, factored: bool = False, slr_sr: float = 0.5, slr_rr: float = 0.5,
    precision: Precision | None = None,
) -> tuple[Array | tuple[Array, Array], FilterInfo]:
    """Step 4 of :func:`filter_matrix`: ``W`` ``(..., a, b)`` (matrices, as :func:`filter_matrix` takes them)
    rebuilt as :func:`decide` decided (its batch shape is ``W``'s), from the factors of its Gram matrix
    (:func:`pdbjax.linalg.factors` with ``via="gram"``: the kept components span a subspace that fits ``W`` as
    well as the SVD's; the decisions, from :func:`decide`, never use the Gram matrix's values)."""
    return _rebuild_tall(_rebuild, W, decision, method, factored=factored, slr_sr=slr_sr, slr_rr=slr_rr,
                         precision=precision)


def _rebuild_tall(
    program: Callable[..., tuple[Array | tuple[Array, Array], FilterInfo]], W: Array, decided: Any, method: Method, *,
    factored: bool, slr_sr: float, slr_rr: float, precision: Precision | None,
) -> tuple[Array | tuple[Array, Array], FilterInfo]:
    """``program(M, factors(M, via="gram"), decided, ...)`` (:func:`_rebuild` or :func:`_rebuild_fixed`) with ``M`` the
    tall orientation of ``W``: a wide ``W`` is rebuilt as its transpose and the output transposed back
    (``W' = (A B)^T = B^T A^T``), so both orientations of a shape share the decomposition's and the rebuild's
    compiled programs (MiniLM: 1536 x 384 and 384 x 1536). Every decision, count and ``rel_change`` is the
    transpose's (SLR sparsifies ``floor(sr m)`` rows of each side alike)."""
    slr = (float(slr_sr), float(slr_rr)) if method == "slr" else None
    wide = W.shape[-2] < W.shape[-1]
    M = jnp.swapaxes(W, -1, -2) if wide else W
    f = factors(M, precision=precision, via="gram")
    with scope(f):
        out, info = program(M, f, decided, factored=bool(factored), slr=slr)
    if not wide:
        return out, info
    if factored:
        A, B = out
        return (jnp.swapaxes(B, -1, -2), jnp.swapaxes(A, -1, -2)), info
    return jnp.swapaxes(out, -1, -2), info


def resolve_shrink(method: str, shrink: Shrink | None) -> Shrink:
    """The shrinkage ``filter_matrix`` applies: ``shrink`` itself, or for ``None`` the method's own
    (``"spikes"`` for pdb/pub-*, ``"none"`` for svd/slr); a clear error for an unknown method or shrink."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if shrink is None:
        return "spikes" if method in _SHRINKING else "none"
    if shrink not in SHRINKS:
        raise ValueError(f"shrink must be one of {SHRINKS} or None; got {shrink!r}")
    return shrink


def needs_fit(method: str, rank: Rank, shrink: Shrink) -> bool:
    """Whether filtering with ``method``, ``rank`` and the resolved ``shrink`` uses a fit of the bulk."""
    return method in _SHRINKING or isinstance(rank, str) or shrink != "none"


def normalised_fit(fit: Fit, spec: Spectrum) -> Fit:
    """A fit of the eigenvalues of ``W`` expressed in the units of ``spec.s**2`` (``W / scale``), in
    ``spec.s``'s dtype: the rescaling by ``scale^-2`` is exact (a power of four) and done in float64
    on concrete inputs, so no intermediate overflows or underflows."""
    if is_traced(fit, spec):
        factor, xp = spec.scale.astype(spec.s.dtype) ** -2, jnp
    else:  # on the host: a NumPy cast compiles nothing (jnp.asarray of a NumPy array runs a copy program)
        factor, xp = np.asarray(spec.scale, np.float64) ** -2, np
        fit = jax.tree_util.tree_map(np.asarray, fit)

    def cast(x):
        x = xp.asarray(x)
        return x.astype(spec.s.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, fit.rescale(factor))


def keep_counts(spec: Spectrum, fit: Fit, rule: Rank) -> Array:
    """:func:`keep_count` as :func:`filter_matrix` evaluates it: on the normalised values ``spec.s**2``
    with :func:`normalised_fit`, so :func:`pdbjax.analyze` reports exactly what ``compress`` keeps."""
    with scope(spec):
        return keep_count(spec.s**2, normalised_fit(fit, spec), rule)


def _dispatch(eigs: Array, N: int | np.ndarray, method: str, mode: Mode, kurtosis: Array | None = None) -> Fit:
    """The estimator that belongs to ``method`` (``fit_pdb`` for svd/slr rules), in ``eigs``' own precision."""
    if method.startswith("pub-"):
        return fit_pub(eigs, N, method.removeprefix("pub-"))
    return fit_pdb(eigs, N, mode=mode, precision="input", kurtosis=kurtosis)


def estimate_fit(lam: Array, N: int | np.ndarray, method: str, mode: Mode = "scaled", kurtosis: Array | None = None) -> Fit:
    """Fit raw eigenvalues ``lam`` with the estimator that belongs to ``method`` (``kurtosis``: the entries' excess
    kurtosis, for the PDB fit's one-or-two-bulks test, :func:`pdbjax.fit_pdb`).

    Concrete eigenvalues are fitted in float64 (raw eigenvalues may span 1e-60..1e60: see
    :mod:`pdbjax.linalg`); traced ones in the caller's precision. The pipeline (:func:`filter_matrix`,
    :func:`pdbjax.analyze`, :func:`pdbjax.compress`) fits spectra with :func:`fit_spectrum` instead.
    """
    if is_traced(lam):
        return _dispatch(lam, N, method, mode, kurtosis)
    with float64():
        kappa = None if kurtosis is None else jnp.asarray(kurtosis, jnp.float64)
        return jax.tree_util.tree_map(np.asarray, _dispatch(jnp.asarray(lam, jnp.float64), N, method, mode, kappa))


def fit_spectrum(spec: Spectrum, N: int | np.ndarray, method: str, mode: Mode = "scaled",
                 length: np.ndarray | None = None) -> Fit:
    """Fit the normalised eigenvalues ``spec.s**2`` in the spectrum's own precision; the fit in ``W``'s units.

    The fit runs where and how the decomposition ran (float32 on any device by default, float64 when
    the caller asked for ``precision="float64"``): ``spec.s`` belongs to ``W / scale``, whose entries
    lie in ``[-1, 1]``, so ``s**2`` cannot overflow float32 whatever the weights' units, and every
    estimator is scale-equivariant (``mode="scaled"``; PUB always), so this is the fit of the raw
    eigenvalues. The result is multiplied back by ``scale^2`` (an exact power of four) on the host in
    float64 when concrete (:meth:`PDBFit.rescale`), in the caller's precision under its ``jit``.
    ``mode="reference"`` is not scale-equivariant and is fitted on the raw eigenvalues in float64.
    ``length``: the number ``p`` of singular values of each row of a zero-padded ``spec`` (host integers,
    :mod:`pdbjax.inputs`; default: all); ``mode="reference"`` takes unpadded spectra only.
    """
    check_eigs(spec.s, N, length)
    check_mode(mode)
    if mode == "reference" and method == "pdb":
        if length is not None and np.any(np.asarray(length) < spec.s.shape[-1]):
            raise ValueError("mode='reference' fits unpadded spectra only")
        return estimate_fit(raw_eigenvalues(spec), N, method, mode, spec.kurtosis)
    with scope(spec):
        if method.startswith("pub-"):
            n, table, length = pub_inputs(spec.s, N, ALPHA, BETA, length)
            fit = fit_pub_batched(spec.s**2, n, table, length, method.removeprefix("pub-"), svd_screen_rtol(spec.s.dtype))
        else:  # the PDB fit in analyze's own program (s**2 inside it): compiled once for both
            n, window, length = fit_inputs(spec.s, N, length)
            fit = fit_pdb_singular_values(spec.s, n, window, length, spec.kurtosis, mode=mode)
        if is_traced(fit, spec):
            return fit.rescale(spec.scale.astype(spec.s.dtype) ** 2)
    return jax.tree_util.tree_map(np.asarray, fit).rescale(np.asarray(spec.scale, np.float64) ** 2)


def _check_fit(fit: Fit, method: str, batch: tuple[int, ...]) -> None:
    want = {"pdb": PDBFit, "pub-bema": PUBFit, "pub-kernel": PUBFit}.get(method, (PDBFit, PUBFit))
    if not isinstance(fit, want):
        name = getattr(want, "__name__", "PDBFit or PUBFit")
        raise TypeError(f"method {method!r} needs a {name}; got {type(fit).__name__}")
    shape = jnp.shape(fit.lambda_plus)
    if np.broadcast_shapes(shape, batch) != batch:
        raise ValueError(f"fit has batch shape {shape}, which does not broadcast to the weights' {batch}")


def _least_important(factor: Array, live: Array, n: int) -> Array:
    """Mask of the ``n`` rows of ``factor`` ``(..., m, p)`` with the smallest norm over the live
    components (ties: lower index first)."""
    norms = jnp.linalg.norm(jnp.where(live[..., None, :], factor, 0.0), axis=-1)
    order = jnp.argsort(jnp.argsort(norms, axis=-1, stable=True), axis=-1, stable=True)
    return order < n


def _slr_masks(U: Array, Vh: Array, keep: Array, sr: float, rr: float) -> tuple[Array, Array]:
    """Structural masks of SLR's ``U_k`` ``(..., a, p)`` and ``V_k^T`` ``(..., p, b)``."""
    a, b, p = U.shape[-2], Vh.shape[-1], U.shape[-1]
    comp = jnp.arange(p)
    live = comp < keep[..., None]
    short = comp < jnp.floor(rr * keep).astype(keep.dtype)[..., None]

    def side(factor: Array, n_rows: int) -> Array:
        sparse = _least_important(factor, live, n_rows)
        return live[..., None, :] & (~sparse[..., :, None] | short[..., None, :])

    mask_v = side(jnp.swapaxes(Vh, -1, -2), math.floor(sr * b))
    return side(U, math.floor(sr * a)), jnp.swapaxes(mask_v, -1, -2)


@exported.register
class _Decision(NamedTuple):
    """What :func:`filter_matrix` does to each matrix, decided from its values-only spectrum and fit alone."""

    keep: Array  # (...,) components kept; p where not ok
    shrunk: Array  # (..., p) the new singular values (normalised units) where ``replace``
    replace: Array  # (..., p) which singular values of the rebuild's factors are replaced
    ok: Array  # (...,)
    reason: Array  # (...,) Reason code
    n_outliers: Array  # (...,) FilterInfo.n_outliers


@exported.jit(static_argnames=("shrink", "rule"), cpu_compiler_options=exported.FAST_COMPILE)
def _decide(s_val: Array, finite: Array, fit: Fit | None, fixed: Array, length: Array, *, shrink: str,
            rule: str | None) -> _Decision:
    """Steps 2-3 of Algorithm 2 (or the baselines) on the normalised values-only spectrum ``s_val`` ``(..., P)``,
    zero-padded after each row's ``length`` ``p`` (:mod:`pdbjax.inputs`): keep counts, outliers and shrinkage
    targets (``shrink``: ``"spikes"``, ``"optimal"`` or ``"none"``), as in ``analyze``. Compiled per padded length
    and batch, whatever the matrices' shape (:func:`_rebuild` is the per-shape part)."""
    p, batch = length, s_val.shape[:-1]
    lam = s_val**2
    if fit is None:
        ok, reason = jnp.ones(batch, bool), jnp.full(batch, Reason.OK, jnp.int32)
    else:
        ok, reason = _ok(fit, batch), jnp.broadcast_to(jnp.asarray(fit.reason, jnp.int32), batch)
    reason = jnp.where(finite, reason, Reason.NON_FINITE)
    ok = ok & finite
    hold = ok & held(fit, batch, rule)  # "auto" on one bulk: left as it is, like a matrix that is not filtered
    reason, ok = jnp.where(hold, Reason.ONE_BULK, reason), ok & ~hold
    keep = jnp.broadcast_to(fixed, batch) if rule is None else keep_count(lam, fit, rule, length)
    keep = jnp.where(ok, keep, p)
    if shrink == "spikes":
        replace = outlier_mask(lam, fit)
        shrunk = jnp.sqrt(shrink_spikes(lam, fit))
        n_outliers = jnp.sum(replace, axis=-1, dtype=jnp.int32)
    elif shrink == "optimal":
        replace = jnp.broadcast_to(ok[..., None], s_val.shape)
        shrunk = shrink_optimal(s_val, fit)
        n_outliers = jnp.sum(_above_edge(lam, fit), axis=-1, dtype=jnp.int32)
        # Everything at or below the edge shrinks to 0: the kept components that carry weight are the first
        # n_outliers, and keep counts those (the factors' width, params_after), not columns of zeros.
        keep = jnp.where(ok, jnp.minimum(keep, n_outliers), keep)
    else:
        replace, shrunk = jnp.zeros(s_val.shape, bool), s_val
        n_outliers = jnp.zeros(batch, jnp.int32)
    replace = replace & valid(s_val, length) & ok[..., None]  # neither the padding after p nor a row left as it is
    return _Decision(keep.astype(jnp.int32), shrunk, replace, ok, reason, jnp.where(ok, n_outliers, 0))


@exported.jit(static_argnames=("factored", "slr"), cpu_compiler_options=exported.FAST_COMPILE)
def _rebuild_fixed(
    W: Array, f: Factors, keep: Array, *, factored: bool, slr: tuple[float, float] | None
) -> tuple[Array | tuple[Array, Array], FilterInfo]:
    """:func:`_rebuild` of a fixed keep count ``keep`` ``(...,)`` without shrinkage, decided by :func:`_decide` in
    the same program (ok where finite, ``p`` kept otherwise): with no fit, no rule and no shrinkage nothing
    needs the values-only spectrum, so the factors' own ``s`` stands in for it."""
    d = _decide(f.s, f.finite, None, keep, jnp.full(keep.shape, f.s.shape[-1], jnp.int32), shrink="none", rule=None)
    return _rebuild(W, f, d, factored=factored, slr=slr)


@exported.jit(static_argnames=("factored", "slr"), cpu_compiler_options=exported.FAST_COMPILE)
def _rebuild(
    W: Array, f: Factors, d: _Decision, *, factored: bool, slr: tuple[float, float] | None
) -> tuple[Array | tuple[Array, Array], FilterInfo]:
    """The weights from the factors ``f`` (:class:`pdbjax.linalg.Factors`) and the decision ``d`` of
    :func:`_decide`, with the scale multiplied back; rows that are not ok are returned unchanged."""
    a, b = W.shape[-2:]
    U, Vh, scale = f.U, f.Vh, f.scale
    p, batch = f.s.shape[-1], f.s.shape[:-1]
    s = jnp.where(d.replace, d.shrunk, f.s)
    ok, keep = d.ok, d.keep
    live = jnp.arange(p) < keep[..., None]
    mask_a, mask_b = live[..., None, :], live[..., :, None]
    if slr is not None:
        mask_a, mask_b = _slr_masks(U, Vh, keep, *slr)
        mask_a, mask_b = mask_a | ~ok[..., None, None], mask_b | ~ok[..., None, None]
    dims = jnp.asarray(a * b, jnp.int32)
    up = scale[..., None, None]
    limit = min(float(jnp.finfo(W.dtype).max), float(jnp.finfo(U.dtype).max))  # the rebuild runs in U's dtype
    if factored:  # balanced: A = U diag(sqrt s'), B = diag(sqrt s') V^T, each entry at most sqrt(s'_1) in size
        half = jnp.sqrt(up)
        stored = lambda s_: ((U * jnp.sqrt(jnp.maximum(s_, 0.0))[..., None, :] * half).astype(W.dtype),  # noqa: E731
                             (jnp.sqrt(jnp.maximum(s_, 0.0))[..., :, None] * Vh * half).astype(W.dtype))
        A, B = stored(s)
        A, B = jnp.where(mask_a, A, 0), jnp.where(mask_b, B, 0)
        W_hat = (A.astype(U.dtype) / half) @ (B.astype(U.dtype) / half)  # in units of W / scale, as stored
        over = ok & ~(jnp.max(jnp.abs(W_hat), axis=(-2, -1)) <= limit / scale)  # W' = A B outside W's dtype
        full = stored(f.s)  # a matrix left as it is keeps its full factors
        out = tuple(jnp.where(over[..., None, None], x, y) for x, y in zip(full, (A, B)))
        if slr is not None:
            params = jnp.sum(mask_a, axis=(-2, -1)) + keep + jnp.sum(mask_b, axis=(-2, -1))
        else:
            params = keep * (a + b)
    else:
        W_hat = jnp.where(mask_a, U * s[..., None, :], 0.0) @ jnp.where(mask_b, Vh, 0.0)  # in units of W / scale
        over = ok & ~(jnp.max(jnp.abs(W_hat), axis=(-2, -1)) <= limit / scale)
        out = jnp.where((ok & ~over)[..., None, None], (W_hat * up).astype(W.dtype), W)
        W_hat = out.astype(U.dtype) / up
        params = jnp.broadcast_to(dims, batch)
    # A weight whose rebuild would overflow its dtype (e.g. float16 near 65504) is left as it is: OUT_OF_RANGE.
    ok, keep = ok & ~over, jnp.where(over, p, keep)
    params = jnp.where(over, p * (a + b), params) if factored else params
    W_n = jnp.where(f.finite[..., None, None], W.astype(U.dtype), 0.0) / up  # change measured at unit scale
    W_hat = jnp.where(f.finite[..., None, None], W_hat, 0.0)
    norm = jnp.linalg.norm(W_n, axis=(-2, -1))
    change = jnp.linalg.norm(W_hat - W_n, axis=(-2, -1))
    info = FilterInfo(
        keep=keep,
        n_outliers=jnp.where(over, 0, d.n_outliers),
        params_before=jnp.broadcast_to(dims, batch),
        params_after=params.astype(jnp.int32),
        rel_change=jnp.where(ok & (norm > 0), change / jnp.where(norm > 0, norm, 1.0), 0.0),
        ok=ok,
        reason=jnp.where(over, Reason.OUT_OF_RANGE, d.reason).astype(d.reason.dtype),
    )
    return out, info
