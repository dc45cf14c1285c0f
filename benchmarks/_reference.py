r"""PDBLS written the reference code's way, in NumPy/SciPy: the oracle of ``tests/test_estimate.py``
and the per-matrix baseline of ``benchmarks/estimation.py``.

It follows the official code (``estimation.py`` of github xlwu571/PDBLS) as described in
``shared/spec/pdb-model.md`` section 6, one matrix at a time:

* :func:`removebike`: the EDA/EDB spike count with ``theta = exp(2 (l_i - l_{i+1}))`` and
  ``theta~_k = sum(theta[k:]) / (p - k - 1)`` (overflows for gaps above ~355, as the reference does);
  :func:`removebike_lse` is the same criterion with ``log theta~`` by ``scipy.special.logsumexp``.
* :func:`grid` / :func:`companion`: the grid ``u`` and ``s = m_n(u)``.
* :func:`curve_fit_pdb`: ``scipy.optimize.curve_fit`` (trust-region reflective, ``maxfev=10000``) of
  ``u ~ z(s; t, d1, d2)`` on the box ``[0, 1] x [l_min, l_max]^2``, from one or several starts.
* :func:`edges_np`: support edges from the real roots of the quartic ``g'(alpha) = 0`` by
  ``numpy.roots`` (spec section 4).

Nothing here is imported by the library; it is deliberately a separate, plain implementation.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import logsumexp

__all__ = [
    "window",
    "removebike",
    "removebike_lse",
    "grid",
    "companion",
    "func",
    "curve_fit_pdb",
    "relabel",
    "edges_np",
    "RefFit",
    "pdbls",
]

MIDPOINT = np.array([[0.5, 0.5, 0.5]])


def window(N: int) -> int:
    """Spike-count window ``w = int(6 N^0.1)`` of the reference."""
    return int(6 * N**0.1)


def _criteria(lam: np.ndarray, N: int, log_theta: np.ndarray, k: np.ndarray):
    p = lam.size
    drop = lam[0] - lam[k]
    eda = -N * drop + N * (p - k - 1) * log_theta + 2 * p * k
    edb = -N * np.log(p) * drop + N * (p - k - 1) * log_theta + p * k * np.log(N)
    return eda, edb


def removebike(lam, N: int):
    """Reference spike count on descending ``lam``: ``(K0, EDA, EDB)``; EDA/EDB may hold ``inf``/``nan``."""
    lam = np.asarray(lam, np.float64)
    p = lam.size
    w = window(N)
    k = np.arange(1, w + 1)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        theta = np.exp(2 * (lam[:-1] - lam[1:]))
        tilde = np.array([np.sum(theta[j:]) / (p - j - 1) for j in k])
        eda, edb = _criteria(lam, N, np.log(tilde), k)
    return int(max(np.argmin(eda), np.argmin(edb)) + 1), eda, edb


def removebike_lse(lam, N: int):
    """:func:`removebike` with ``log theta~_k = logsumexp(2 gaps[k:]) - log(p - k - 1)`` (never overflows)."""
    lam = np.asarray(lam, np.float64)
    p = lam.size
    w = window(N)
    k = np.arange(1, w + 1)
    gaps2 = 2 * (lam[:-1] - lam[1:])
    log_theta = np.array([logsumexp(gaps2[j:]) for j in k]) - np.log(p - k - 1)
    eda, edb = _criteria(lam, N, log_theta, k)
    return int(max(np.argmin(eda), np.argmin(edb)) + 1), eda, edb


def _part(a: float, b: float, n: int = 20) -> np.ndarray:
    return a + np.arange(1, n + 1) * (b - a) / (n + 1)


def grid(lam_bulk: np.ndarray, N: int, p: int) -> np.ndarray:
    """The fitting grid ``u`` (60 points, 40 when ``p == N``)."""
    l_min, l_max = lam_bulk.min(), lam_bulk.max()
    parts = [_part(-10, 0)]
    if p != N:
        parts.append(_part(0, 0.5 * l_min))
    parts.append(_part(5 * l_max, 10 * l_max))
    return np.concatenate(parts)


def companion(u: np.ndarray, lam_bulk: np.ndarray, N: int, p: int) -> np.ndarray:
    """Empirical companion transform ``m_n(u) = -(1 - (p-K)/N)/u + (1/N) sum 1/(lambda_j - u)``."""
    n_bulk = lam_bulk.size
    return -(1 - n_bulk / N) / u + np.sum(1 / (lam_bulk[None, :] - u[:, None]), axis=1) / N


def func(s, t, d1, d2, c, penalty: bool = True):
    """``z(s) = -1/s + c [t d1/(1 + d1 s) + (1 - t) d2/(1 + d2 s)]``; ``-200`` where ``1 - t <= 0`` (reference)."""
    if penalty and not 1 - t > 0:
        return np.full_like(s, -200.0)
    return -1 / s + t * c * d1 / (1 + d1 * s) + (1 - t) * c * d2 / (1 + d2 * s)


class RefFit(NamedTuple):
    K: int
    t: float
    sigma1_sq: float
    sigma2_sq: float
    c: float
    cost: float  # 0.5 sum (u - z)^2 at the optimum, on the grid actually fitted
    converged: bool  # curve_fit returned (no RuntimeError) from at least one start
    edges: np.ndarray  # ascending, NaN-padded to 4 (np.roots)
    lambda_plus: float


def curve_fit_pdb(lam_bulk, N: int, p: int, starts=MIDPOINT, penalty: bool = True, maxfev: int = 10000):
    """``curve_fit`` of the Silverstein equation from each start (unit-box coordinates ``(t, s1, s2)``).

    Returns ``(theta, cost, converged)`` of the lowest-cost start, in the fitted units, NOT relabelled.
    """
    lam_bulk = np.asarray(lam_bulk, np.float64)
    u = grid(lam_bulk, N, p)
    s = companion(u, lam_bulk, N, p)
    c = lam_bulk.size / N
    lo = np.array([0.0, lam_bulk.min(), lam_bulk.min()])
    hi = np.array([1.0, lam_bulk.max(), lam_bulk.max()])
    f = lambda s_, t, d1, d2: func(s_, t, d1, d2, c, penalty)  # noqa: E731
    best = (np.full(3, np.nan), np.inf, False)
    for start in np.atleast_2d(starts):
        x0 = lo + np.asarray(start) * (hi - lo)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                theta, _ = curve_fit(f, s, u, p0=x0, bounds=(lo, hi), maxfev=maxfev)
        except RuntimeError:
            continue
        cost = 0.5 * np.sum((u - f(s, *theta)) ** 2)
        if cost < best[1]:
            best = (theta, cost, True)
    return best


def relabel(t: float, s1: float, s2: float):
    """Reference labelling: ``t >= 0.5``."""
    return (1 - t, s2, s1) if t < 0.5 else (t, s1, s2)


def edges_np(t: float, s1: float, s2: float, c: float) -> np.ndarray:
    """Support edges ``g(alpha)`` at the real roots of the quartic ``g'(alpha) = 0`` (``numpy.roots``)."""
    a, b = np.poly1d([1.0, -s1]), np.poly1d([1.0, -s2])
    quartic = a**2 * b**2 - c * t * s1**2 * b**2 - c * (1 - t) * s2**2 * a**2
    roots = np.roots(quartic.coeffs)
    alpha = np.sort(roots[np.abs(roots.imag) <= 1e-9 * np.abs(roots).max()].real)
    alpha = alpha[(np.abs(alpha - s1) > 0) & (np.abs(alpha - s2) > 0)]
    beta = alpha + c * alpha * (t * s1 / (alpha - s1) + (1 - t) * s2 / (alpha - s2))
    out = np.full(4, np.nan)
    out[: beta.size] = np.sort(beta)[:4]
    return out


def pdbls(
    lam, N: int, *, starts=MIDPOINT, scaled: bool = False, penalty: bool | None = None, K: int | None = None
) -> RefFit:
    """PDBLS on one descending eigenvalue vector, the reference's way.

    ``scaled=False`` with the default single midpoint start is the official algorithm; ``scaled=True``
    divides by the median ``lam[p // 2]`` first and multiplies the variances back (pdbjax's default
    mode, with ``starts = pdbjax.estimate._STARTS`` and ``penalty=False``). ``K`` overrides the spike
    count.
    """
    lam = np.asarray(lam, np.float64)
    p = lam.size
    scale = lam[p // 2] if scaled else 1.0
    lam = lam / scale
    penalty = (not scaled) if penalty is None else penalty
    K = removebike(lam, N)[0] if K is None else int(K)
    bulk = lam[K:]
    theta, cost, converged = curve_fit_pdb(bulk, N, p, starts, penalty)
    c = (p - K) / N
    t, s1, s2 = relabel(*theta)
    beta = edges_np(t, s1, s2, c) * scale
    return RefFit(K, t, s1 * scale, s2 * scale, c, cost, converged, beta, float(np.nanmax(beta)) if converged else np.nan)
