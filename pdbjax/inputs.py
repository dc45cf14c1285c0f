r"""Eigenvalue input shared by every estimator (:mod:`pdbjax.estimate`, :mod:`pdbjax.pub`, :mod:`pdbjax.quality`).

Convention: ``eigs`` holds the eigenvalues of ``W^T W`` (squared singular values, no ``1/N``) sorted in
DESCENDING order on the last axis, shape ``(..., p)`` with any leading batch axes; ``N`` is the larger
matrix dimension: a Python int, or an integer array broadcasting to the batch shape (one ``N`` per
spectrum). ``N`` is passed to the compiled estimators as data, so spectra of one length ``p`` from
matrices of different ``N`` share one batched call and one compilation.

This module holds what every estimator does to that input before its own fit: :func:`check_eigs`
validates it, :func:`screen` gives each spectrum its status code before fitting (:class:`pdbjax.Reason`),
:func:`placeholder` replaces the unusable ones so that a batch computes finite numbers everywhere, and
:func:`median_units` rescales a spectrum exactly by a power of two (the one unit change of the
estimators; PDBLS's ``mode="scaled"`` divides by :func:`median` itself, because its spike count is
defined on ``lambda / median``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax._validate import is_traced
from pdbjax.fits import Reason
from pdbjax.precision import work_dtype

__all__ = ["check_eigs", "screen", "screen_rtol", "placeholder", "median", "median_units"]

Array = jax.Array


def check_eigs(eigs: Array, N: int | np.ndarray) -> None:
    """Raise ``ValueError`` unless ``eigs`` is ``(..., p)`` with ``p >= 1`` and ``N`` concrete integers ``>= p``
    broadcasting to the batch shape ``eigs.shape[:-1]``."""
    if eigs.ndim < 1:
        raise ValueError("eigs must have shape (..., p); got a scalar")
    p = eigs.shape[-1]
    if p < 1:
        raise ValueError("eigs must hold at least one eigenvalue per matrix; got p = 0")
    if is_traced(N) or isinstance(N, (bool, np.bool_)):
        raise ValueError(f"N must be an int >= p = {p}; got N={N!r} (a concrete value: N is data of the compiled fit, not a tracer)")
    n = np.asarray(N)
    if not np.issubdtype(n.dtype, np.integer) or n.size == 0 or np.any(n < p):
        raise ValueError(f"N must be an int >= p = eigs.shape[-1] = {p}; got N={N!r} (an integer array, one N per spectrum, also works)")
    try:
        np.broadcast_to(n, eigs.shape[:-1])
    except ValueError:
        raise ValueError(f"N of shape {n.shape} does not broadcast to the batch shape {eigs.shape[:-1]}") from None


def screen(eigs: Array, rtol: float | None = None) -> Array:
    """Status code (:class:`Reason`) of each eigenvalue vector before fitting (int32, batched).

    NaN/Inf -> ``NON_FINITE``; an eigenvalue below ``-rtol * max |lambda|`` -> ``NEGATIVE`` (tiny
    negative rounding values are tolerated); all zero -> ``ALL_ZERO``; ``p < 8`` -> ``TOO_SMALL``; more
    than 5% of the eigenvalues below ``rtol * lambda_1`` (rank deficient) or a zero median ->
    ``NO_BULK``. ``rtol`` defaults to ``100 eps`` of ``eigs``' dtype; the estimators pass the value of
    the caller's dtype, so a float32 spectrum is judged alike whether it is fitted in float32 or float64.
    """
    p = eigs.shape[-1]
    rtol = screen_rtol(eigs.dtype) if rtol is None else rtol
    finite = jnp.all(jnp.isfinite(eigs), axis=-1)
    clean = jnp.where(jnp.isfinite(eigs), eigs, 0.0)
    top = jnp.max(clean, axis=-1)
    negative = jnp.any(clean < -rtol * jnp.max(jnp.abs(clean), axis=-1, keepdims=True), axis=-1)
    tiny = rtol * top[..., None]
    n_zero = jnp.sum(eigs <= tiny, axis=-1)
    code = jnp.select(
        [~finite, negative, top <= 0, jnp.full_like(finite, p < 8), (n_zero > 0.05 * p) | (median(clean) <= tiny[..., 0])],
        [Reason.NON_FINITE, Reason.NEGATIVE, Reason.ALL_ZERO, Reason.TOO_SMALL, Reason.NO_BULK],
        Reason.OK,
    )
    return code.astype(jnp.int32)


def screen_rtol(dtype: jax.typing.DTypeLike) -> float:
    """:func:`screen`'s default ``rtol`` for eigenvalues of ``dtype``: ``100 eps`` of its working dtype."""
    return float(100 * jnp.finfo(work_dtype(dtype)).eps)


def placeholder(eigs: Array, code: Array) -> Array:
    """Replace unusable spectra by a harmless one so that a batch computes finite values everywhere."""
    p = eigs.shape[-1]
    dummy = jnp.linspace(2.0, 1.0, p, dtype=eigs.dtype)
    return jnp.where((code == Reason.OK)[..., None], eigs, dummy)


def median(eigs: Array) -> Array:
    """The upper median ``lambda_{floor(p/2)+1}`` of descending ``eigs`` (batched)."""
    return eigs[..., eigs.shape[-1] // 2]


def median_units(eigs: Array) -> tuple[Array, Array]:
    """``(eigs / 2^e, e)`` with the median of the result in ``[1/2, 1)`` (``frexp``): an exact rescaling
    (no rounding, and no reciprocal of a huge median flushed to zero: XLA CPU flushes subnormals), so
    that ``lambda^3`` and the like cannot overflow. Multiply results back with ``jnp.ldexp(x, e)``."""
    exponent = jnp.frexp(median(eigs))[1]
    return jnp.ldexp(eigs, -exponent[..., None]), exponent
