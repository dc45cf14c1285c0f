r"""Storage budgets: how many components each matrix keeps when the whole model has a parameter budget.

Problem. Matrices ``i = 1..M`` of shapes ``(m_i, n_i)``, ``p_i = min(m_i, n_i)``, with singular values
``s_i1 >= ... >= s_ip_i`` and a fit of their noise bulk whose upper edge is ``lambda_+^(i)``. Keeping the
first ``k_i`` components as factors ``A = U_k diag(s'_k)^(1/2)``, ``B = diag(s'_k)^(1/2) V_k^T`` stores ``k_i (m_i + n_i)``
numbers. Given a fraction ``f`` in ``(0, 1]`` of the dense count ``D = sum_i m_i n_i``, choose the
``k_i`` so that

.. math::  \sum_{i \text{ allocated}} k_i (m_i + n_i) + F \le \lfloor f D \rfloor,

where ``F`` is the storage of the matrices that are not allocated (their fit is not ok: they stay as
they are and are counted at ``m_i n_i``, see :func:`allocate`). The cap ``floor(f D)`` is computed in
exact integer arithmetic, so the achieved ratio ``stored / D`` never exceeds ``f``.

Score (:func:`component_scores`). Component ``j`` of matrix ``i`` scores

.. math::  \rho_{ij} = s_{ij}^2 / \lambda_+^{(i)}

(``score="edge"``, the default): how far it stands above its own layer's noise edge, dimensionless, so
multiplying a layer by any constant leaves its scores unchanged (scale-invariant per layer); ``> 1``
exactly for the outliers of the strict boundary (the ``"spikes"`` rule of
:func:`pdbjax.filter.keep_count`). Why this and not the population strength: it is defined for every
component (above and below the edge, so one number orders both), needs no root finding, and is monotone
in ``s`` within a layer. The alternative ``score="spike"`` is ``alpha_ij / alpha_max^(i)``, the
population spike ``alpha = g^{-1}(lambda)`` of :func:`pdbjax.spectral.spike_inverse` relative to the
critical point at the edge (``g(alpha_max) = lambda_+``), with ``rho_ij`` below the edge where no spike
exists; it is ``> 1`` for the same components. ``benchmarks/budget.py`` measures both on an 8-layer
model with a known signal: the same keep counts at half and twice the true ranks' storage, and at that
storage a summed error of 1.495 (spike) against 1.513 (edge) with ``shrink="optimal"``, a difference
well inside the standard error (0.054) over 3 seeds.

Greedy fill (:func:`greedy`). Components are visited best first by score per stored parameter,
``rho_ij / (m_i + n_i)``, in two tiers: every component above its edge (``rho > 1``) before any below it.
Each component is taken when it fits in what is left of the budget and skipped otherwise (a cheaper
component of another layer may still fit), until all are visited. Within a matrix the scores do not
increase with ``j`` and every component costs the same, so the kept set of each matrix is a prefix and
``k_i`` a count. The second tier (``fill=True``, the default) spends a budget that the outliers leave
unused on the largest bulk components: on trained networks keeping only the outliers costs accuracy
(the ``spikes`` rule in the README's "Choosing the rank"), so a caller who grants a budget gets it used.
For denoising, ``fill=False`` keeps only outliers (or use ``shrink="optimal"``, which sets every
component at or below the edge to 0). Measured in ``benchmarks/results/budget.md`` (signal plus PDB
noise, budget twice the true ranks' storage; at or below that storage the outliers take the whole
budget and the fill changes nothing): the fill raises the summed error from 2.14 to 41.3 with
``shrink="spikes"`` and leaves it at 1.495 with ``"optimal"``.

This is the greedy for a knapsack whose items are ordered within each matrix: with the skip rule it
ends with no component left that would fit, and the total score of the components it keeps above their
edges is at least the best integer allocation's minus one component's score (the first tier is visited
in plain score-per-parameter order, the fractional-knapsack order); ``tests/test_budget.py`` checks
both against brute force and against a one-component-at-a-time implementation.

Everything is vectorised over all components of all matrices (NumPy on the host: a sort, and one
cumulative sum per distinct cost ``m + n`` that a skip rules out, so at most ``#{m_i + n_i} + 1``
passes); no loop visits components one by one.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Literal, NamedTuple, Sequence, Union

import jax.numpy as jnp
import numpy as np

from pdbjax.fits import PDBFit, PUBFit
from pdbjax.precision import float64
from pdbjax.spectral import PDB, critical_points, spike_inverse

__all__ = ["Allocation", "check_budget", "component_scores", "greedy", "allocate", "SCORES"]

Fit = Union[PDBFit, PUBFit]
Score = Literal["edge", "spike"]
SCORES = ("edge", "spike")


class Allocation(NamedTuple):
    """Result of :func:`allocate` (NumPy arrays, one entry per matrix).

    Attributes:
      keep: components kept per matrix (int64); 0 for matrices that are not allocated.
      params: parameters each matrix is counted at: ``keep (m + n)``, or its fixed storage when it is
        not allocated.
      cap: ``floor(f D)``, the parameters the budget allows.
      dense: ``D = sum m n``.
    """

    keep: np.ndarray
    params: np.ndarray
    cap: int
    dense: int

    @property
    def ratio(self) -> float:
        """Achieved ratio ``sum(params) / dense`` (``<= f`` by construction)."""
        return int(np.sum(self.params)) / self.dense


def check_budget(budget: float) -> float:
    """``budget`` as a float in ``(0, 1]``; ``TypeError`` for a non-number, ``ValueError`` outside the range."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real):
        raise TypeError(f"budget must be a number in (0, 1], the fraction of the dense parameter count; got {budget!r}")
    value = float(budget)
    if not 0.0 < value <= 1.0:  # also False for NaN
        raise ValueError(f"budget must lie in (0, 1] (a fraction of the selected matrices' dense parameter count); got {budget!r}")
    return value


def component_scores(eigs: np.ndarray, fit: Fit, score: Score = "edge") -> np.ndarray:
    r"""Score of every component: how far it stands above its own matrix's noise edge (module docstring).

    ``"edge"``: ``lambda_j / lambda_+``. ``"spike"``: ``alpha_j / alpha_max`` for ``lambda_j > lambda_+``
    (``alpha_j = g^{-1}(lambda_j)``, :func:`pdbjax.spectral.spike_inverse`, with the fit's population
    and ``c``; ``alpha_max`` the largest critical point, ``g(alpha_max) = lambda_+``) and
    ``lambda_j / lambda_+`` at or below the edge. Both are invariant under ``lambda -> k^2 lambda`` with
    the fit rescaled alike, and ``> 1`` exactly above the edge.

    Args:
      eigs: eigenvalues ``s^2`` ``(..., p)`` in the units of ``fit`` (e.g.
        :func:`pdbjax.linalg.raw_eigenvalues`); NaN entries (padding, non-finite matrices) stay NaN.
      fit: a :class:`~pdbjax.fits.PDBFit` or :class:`~pdbjax.fits.PUBFit` with batch shape ``eigs.shape[:-1]``.
      score: ``"edge"`` or ``"spike"``.

    Returns:
      float64 scores of the shape of ``eigs``; NaN for rows whose fit is not ok.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    eigs = np.asarray(eigs, np.float64)
    ok = np.asarray(fit.ok, bool)[..., None]
    edge = np.asarray(fit.lambda_plus, np.float64)[..., None]
    safe_edge = np.where(ok & (edge > 0), edge, 1.0)
    rho = np.where(ok & (edge > 0), eigs / safe_edge, np.nan)
    if score == "edge":
        return rho
    with float64():
        pop = [np.asarray(v, np.float64) for v in fit.population]
        good = np.asarray(fit.ok, bool)
        pop = PDB(*(np.where(good, v, 1.0) for v in pop))  # a valid stand-in where the fit is not ok
        c = np.where(good, np.asarray(fit.c, np.float64), 0.5)
        a_max = np.asarray(jnp.nanmax(critical_points(pop, c), axis=-1))[..., None]
        above = rho > 1
        probe = np.where(above, eigs, 2 * safe_edge)  # a valid point above the edge where no spike is asked for
        alpha = np.asarray(spike_inverse(probe, PDB(*(v[..., None] for v in pop)), c[..., None]))
    return np.where(above, alpha / a_max, rho)


def greedy(scores: np.ndarray, cost: np.ndarray, cap: int, *, fill: bool = True, above: np.ndarray | None = None) -> np.ndarray:
    """Greedy allocation of ``cap`` parameters to the components of ``M`` matrices (module docstring).

    Args:
      scores: ``(M, P)`` component scores, non-increasing along each row; NaN or ``<= 0`` entries are
        never taken (padding, unfitted matrices, zero singular values).
      cost: ``(M,)`` positive parameters per component of each matrix (``m + n``).
      cap: parameters available (``>= 0``).
      fill: also take components with score ``<= 1`` (below the noise edge) once every component above
        its edge has been visited.
      above: ``(M, P)`` bool, which components are above their edge (the first tier), a prefix of each row;
        default ``scores > 1``.

    Returns:
      ``(M,)`` int64 keep counts ``k`` with ``sum k cost <= cap``. Visiting order: tier (``score > 1``
      first), then score per parameter descending, then matrix, then component index; a component is
      taken when it fits in what is left.
    """
    scores = np.asarray(scores, np.float64)
    cost = np.asarray(cost, np.int64)
    if scores.ndim != 2 or cost.shape != scores.shape[:1]:
        raise ValueError(f"expected scores (M, P) and cost (M,); got {scores.shape} and {cost.shape}")
    if np.any(cost <= 0):
        raise ValueError("every component cost must be positive")
    if cap < 0:
        raise ValueError(f"cap must be >= 0; got {cap}")
    above = scores > 1 if above is None else np.broadcast_to(np.asarray(above, bool), scores.shape)
    valid = np.isfinite(scores) & (scores > 0)
    if not fill:
        valid &= above
    row, col = np.nonzero(valid)
    sc, c = scores[row, col], cost[row]
    order = np.lexsort((col, row, -(sc / c), ~above[row, col]))
    row, c = row[order], c[order]
    taken = np.zeros(row.size, bool)
    alive = np.ones(row.size, bool)
    left, start = int(cap), 0
    while True:  # one pass per cost class ruled out by a skip (at most #distinct costs + 1 passes)
        idx = start + np.flatnonzero(alive[start:])
        if idx.size == 0:
            break
        total = np.cumsum(c[idx])
        n_fit = int(np.searchsorted(total, left, side="right"))  # the longest prefix that fits
        taken[idx[:n_fit]] = True
        if n_fit == idx.size:
            break
        left -= int(total[n_fit - 1]) if n_fit else 0
        stop = idx[n_fit]  # the first component that does not fit: nothing costing more than `left` ever will
        alive[stop:] &= c[stop:] <= left
        start = stop + 1
    return np.bincount(row[taken], minlength=scores.shape[0]).astype(np.int64)


def _least_budget(needed: int, dense: int) -> str | None:
    """The least budget of 6 significant digits whose cap ``floor(f D)`` holds ``needed`` (as text), None above 1.

    >>> _least_budget(3200, 15400)  # 3200 / 15400 = 0.2077922...: 0.207792 would allow 3199
    '0.207793'
    """
    digits = 5 - math.floor(math.log10(needed / dense)) if needed else 6
    units = math.ceil(Fraction(needed, dense) * 10**digits)  # rounded up, in units of 10^-digits
    while math.floor(Fraction(float(Fraction(units, 10**digits))) * dense) < needed:  # as the float budget caps it
        units += 1
    least = Fraction(units, 10**digits)
    return None if least > 1 else f"{float(least):.{max(digits, 0)}f}".rstrip("0").rstrip(".")


def allocate(
    scores: np.ndarray,
    shapes: np.ndarray | Sequence[tuple[int, int]],
    budget: float,
    *,
    allocatable: np.ndarray | None = None,
    fixed_params: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    fill: bool = True,
    layers: np.ndarray | None = None,
    above: np.ndarray | None = None,
    least: np.ndarray | None = None,
) -> Allocation:
    r"""Keep counts per matrix for a budget of ``f`` times the dense count (module docstring).

    Args:
      scores: ``(M, P)`` component scores (:func:`component_scores`), rows padded with NaN.
      shapes: ``(M, 2)`` matrix shapes ``(m, n)``.
      budget: ``f`` in ``(0, 1]``.
      allocatable: ``(M,)`` bool, False for matrices that cannot be truncated (fit not ok); default:
        every row with a finite score.
      fixed_params: ``(M,)`` storage counted for the matrices that are not allocatable (default ``m n``,
        the dense matrix they stay as).
      names: matrix names for the error message.
      fill: see :func:`greedy`.
      layers: ``(M,)`` how many matrices of shape ``(m, n)`` each row stands for (default 1): a stack of
        ``L`` layers stored as factors as wide as its widest keep, allocated as one: a column costs
        ``L (m + n)``, its dense count is ``L m n``, its score the sum of the layers' scores (so score per
        parameter is their mean's) and every layer keeps the row's count.
      above: ``(M, P)`` which components are above their edge (:func:`greedy`; default ``scores > 1``; for
        a row of several layers, whether any layer's is).
      least: ``(M,)`` components each allocatable row keeps whatever the budget (0 or 1; default 0): factors
        stored with at least one column (Orbax cannot store an empty array) spend it on the first component.

    Returns:
      An :class:`Allocation` with ``sum(params) <= cap = floor(f D)`` (``params`` per row).

    Raises:
      ValueError: ``f`` outside ``(0, 1]``, or the matrices that are not allocatable and the ``least``
        components need more than ``floor(f D)`` by themselves (the message names the matrices that
        are not allocatable and says which budget would suffice).
    """
    f = check_budget(budget)
    scores = np.asarray(scores, np.float64)
    shapes = np.asarray(shapes, np.int64).reshape(-1, 2)
    if scores.shape[0] != shapes.shape[0]:
        raise ValueError(f"scores hold {scores.shape[0]} matrices but shapes {shapes.shape[0]}")
    m, n = shapes[:, 0], shapes[:, 1]
    count = np.ones(len(m), np.int64) if layers is None else np.asarray(layers, np.int64).reshape(-1)
    dense_each, cost = count * m * n, count * (m + n)
    dense = int(np.sum(dense_each))
    cap = math.floor(Fraction(f) * dense)  # exact: stored <= cap implies stored / dense <= f
    if allocatable is None:
        allocatable = np.any(np.isfinite(scores), axis=-1)
    allocatable = np.asarray(allocatable, bool)
    fixed = dense_each if fixed_params is None else np.asarray(fixed_params, np.int64)
    fixed = np.where(allocatable, 0, fixed)
    first = np.zeros(len(m), np.int64) if least is None else np.where(allocatable, np.asarray(least, np.int64), 0)
    needed = int(np.sum(fixed)) + int(np.sum(first * cost))
    if needed > cap:
        bad = np.flatnonzero(~allocatable)
        listed = [names[i] if names is not None else f"matrix {i}" for i in bad]
        shown = ", ".join(listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")
        least_f = _least_budget(needed, dense)
        use = f"use a budget of at least {least_f}, or" if least_f is not None else "no budget up to 1 holds them;"
        which = (f"the matrices that stay dense (their fit is not ok, or, factored, a layer of their stacked leaf's "
                 f"is): {shown}"
                 if bad.size else "nothing")
        also = f", and one column of factors for each of the {int(np.sum(first > 0))} others" if first.any() else ""
        raise ValueError(
            f"budget {f} allows {cap:,} of the selected matrices' {dense:,} parameters, but {needed:,} are taken "
            f"before any allocation by {which}{also}; {use} leave matrices out with where="
        )
    usable = np.where(allocatable[:, None], scores, np.nan)
    shift = lambda x: np.where(first[:, None] > 0, np.pad(x, ((0, 0), (0, 1)), constant_values=np.nan)[:, 1:], x)  # noqa: E731
    tier = None if above is None else shift(np.asarray(above, float)) == 1.0
    keep = first + greedy(shift(usable), cost, cap - needed, fill=fill, above=tier)
    params = np.where(allocatable, keep * cost, fixed)
    return Allocation(keep, params.astype(np.int64), cap, dense)
