r"""Eigenvalue input shared by every estimator (:mod:`pdbjax.estimate`, :mod:`pdbjax.pub`, :mod:`pdbjax.quality`).

Convention: ``eigs`` holds the eigenvalues of ``W^T W`` (squared singular values, no ``1/N``) sorted in
DESCENDING order on the last axis, shape ``(..., p)`` with any leading batch axes; ``N`` is the larger
matrix dimension: a Python int, or an integer array broadcasting to the batch shape (one ``N`` per
spectrum). ``N`` is passed to the compiled estimators as data, so spectra of one length ``p`` from
matrices of different ``N`` share one batched call and one compilation.

Padded spectra: the compiled cores (``fit_pdb_batched``, ``fit_pub_batched``, ``quality_batched``, ...) also
take each spectrum's ``length`` ``p`` as data, so spectra of several lengths share one program at a common
padded length ``P >= p`` (:func:`pdbjax.api.padded_length`): the eigenvalues sit in the first ``p`` entries,
descending, and the ``P - p`` entries after them are zeros that every estimator masks out (:func:`valid`).
The result is the fit of the unpadded spectrum, to rounding (tests/test_padded.py).

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

__all__ = ["check_eigs", "screen", "screen_rtol", "svd_screen_rtol", "source_rtol", "placeholder", "median", "median_units",
           "valid", "bulk", "sort_valid"]

Array = jax.Array


def check_eigs(eigs: Array, N: int | np.ndarray, length: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` unless ``eigs`` is ``(..., p)`` with ``p >= 1`` and ``N`` concrete integers ``>= p``
    broadcasting to the batch shape ``eigs.shape[:-1]``; for padded spectra, ``1 <= length <= p`` and
    ``N >= length`` row by row."""
    if eigs.ndim < 1:
        raise ValueError("eigs must have shape (..., p); got a scalar")
    if jnp.issubdtype(eigs.dtype, jnp.complexfloating):
        raise ValueError(f"eigs must be real eigenvalues of W^T W; got {eigs.dtype} (take the real part if that is what you mean)")
    p = eigs.shape[-1]
    if p < 1:
        raise ValueError("eigs must hold at least one eigenvalue per matrix; got p = 0")
    if is_traced(N) or isinstance(N, (bool, np.bool_)):
        raise ValueError(f"N must be an int >= p = {p}; got N={N!r} (a concrete value: N is data of the compiled fit, not a tracer)")
    n = np.asarray(N)
    try:
        rows = np.broadcast_to(n, eigs.shape[:-1])
    except ValueError:
        raise ValueError(f"N of shape {n.shape} does not broadcast to the batch shape {eigs.shape[:-1]}") from None
    integer = np.issubdtype(n.dtype, np.integer)
    least = p if length is None else np.broadcast_to(np.asarray(length), eigs.shape[:-1])  # the smallest N of each row
    if length is not None and (np.any((least < 1) | (least > p)) or (integer and np.any(rows < least))):
        raise ValueError(f"padded spectra need 1 <= length <= {p} and N >= length per row; got length={length!r}, N={N!r}")
    if not integer or n.size == 0 or np.any(rows < least):
        raise ValueError(f"N must be an int >= p = eigs.shape[-1] = {p}; got N={N!r} (an integer array, one N per spectrum, also works)")


def screen(eigs: Array, rtol: float | None = None, length: Array | None = None) -> Array:
    """Status code (:class:`Reason`) of each eigenvalue vector before fitting (int32, batched).

    NaN/Inf -> ``NON_FINITE``; an eigenvalue below ``-rtol * max |lambda|`` -> ``NEGATIVE`` (tiny
    negative rounding values are tolerated); all zero -> ``ALL_ZERO``; ``p < 8`` -> ``TOO_SMALL``; more
    than 5% of the eigenvalues below ``rtol * lambda_1`` (rank deficient) or a zero median ->
    ``NO_BULK``. ``rtol`` defaults to ``100 eps`` of ``eigs``' dtype; the estimators pass the value of
    the caller's dtype, so a float32 spectrum is judged alike whether it is fitted in float32 or float64.
    ``length``: the number ``p`` of eigenvalues of each padded vector (:func:`valid`; default: all).
    """
    p = eigs.shape[-1] if length is None else length
    rtol = screen_rtol(eigs.dtype) if rtol is None else rtol
    mask = valid(eigs, length)
    finite = jnp.all(jnp.isfinite(eigs) | ~mask, axis=-1)
    clean = jnp.where(jnp.isfinite(eigs) & mask, eigs, 0.0)
    top = jnp.max(clean, axis=-1)
    negative = jnp.any(clean < -rtol * jnp.max(jnp.abs(clean), axis=-1, keepdims=True), axis=-1)
    tiny = rtol * top[..., None]
    n_zero = count_zeros(eigs, rtol, length)
    code = jnp.select(
        [~finite, negative, top <= 0, jnp.broadcast_to(p < 8, finite.shape),
         (n_zero > 0.05 * p) | (median(clean, length) <= tiny[..., 0])],
        [Reason.NON_FINITE, Reason.NEGATIVE, Reason.ALL_ZERO, Reason.TOO_SMALL, Reason.NO_BULK],
        Reason.OK,
    )
    return code.astype(jnp.int32)


def count_zeros(eigs: Array, rtol: float, length: Array | None = None) -> Array:
    """How many of each vector's eigenvalues are zeros: at most ``rtol`` times its largest finite one
    (tiny negative rounding values included), among its first ``length``."""
    mask = valid(eigs, length)
    top = jnp.max(jnp.where(jnp.isfinite(eigs) & mask, eigs, 0.0), axis=-1, keepdims=True)
    return jnp.sum((eigs <= rtol * top) & mask, axis=-1)


def screen_rtol(dtype: jax.typing.DTypeLike) -> float:
    """:func:`screen`'s default ``rtol`` for eigenvalues of ``dtype``: ``100 eps`` of its working dtype."""
    return float(100 * jnp.finfo(work_dtype(dtype)).eps)


def svd_screen_rtol(dtype: jax.typing.DTypeLike) -> float:
    """:func:`screen`'s ``rtol`` for eigenvalues ``s**2`` of singular values ``s`` of ``dtype`` from an SVD: ``(100 eps)^2``.

    The SVD's singular values carry absolute errors of about ``eps s_1``, so a zero one comes out below
    ``100 eps s_1`` and its square below ``(100 eps)^2 lambda_1``; a tolerance of ``100 eps lambda_1`` on the
    eigenvalues (right for a Gram matrix's, whose errors are ``eps lambda_1``) would count every singular value
    below ``sqrt(100 eps) s_1`` (float32: 3.4e-3 s_1) as zero and call a full-rank matrix with one strong component
    (a constant offset, a dominant direction) rank deficient.
    """
    return screen_rtol(dtype) ** 2


def source_rtol(dtype: jax.typing.DTypeLike, source: str) -> float:
    """:func:`screen`'s ``rtol`` for eigenvalues of ``dtype`` computed as ``source`` says: ``"svd"`` (squares of
    singular values, as :func:`pdbjax.eigenvalues` returns them: :func:`svd_screen_rtol`) or ``"gram"`` (eigenvalues
    of ``W^T W`` itself, ``eigenvalues(W, solver="gram")``: :func:`screen_rtol`)."""
    if source not in ("svd", "gram"):
        raise ValueError(f"source must be 'svd' (squared singular values) or 'gram' (eigenvalues of W^T W); got {source!r}")
    return svd_screen_rtol(dtype) if source == "svd" else screen_rtol(dtype)


def placeholder(eigs: Array, code: Array, length: Array | None = None) -> Array:
    """Replace unusable spectra by a harmless one (``2 - j / (p - 1)``, ``j < p``; zeros in the padding) so that
    a batch computes finite values everywhere."""
    p = jnp.asarray(eigs.shape[-1] if length is None else length)[..., None]
    j = jnp.arange(eigs.shape[-1], dtype=eigs.dtype)
    dummy = jnp.where(valid(eigs, length), 2.0 - j / jnp.maximum(p - 1, 1).astype(eigs.dtype), 0.0)
    return jnp.where((code == Reason.OK)[..., None], eigs, dummy)


def median(eigs: Array, length: Array | None = None) -> Array:
    """The upper median ``lambda_{floor(p/2)+1}`` of descending ``eigs`` (batched; ``p = length``, default all)."""
    if length is None:
        return eigs[..., eigs.shape[-1] // 2]
    return jnp.take_along_axis(eigs, (jnp.asarray(length) // 2)[..., None], axis=-1)[..., 0]


def median_units(eigs: Array, length: Array | None = None) -> tuple[Array, Array]:
    """``(eigs / 2^e, e)`` with the median of the result in ``[1/2, 1)`` (``frexp``): an exact rescaling
    (no rounding, and no reciprocal of a huge median flushed to zero: XLA CPU flushes subnormals), so
    that ``lambda^3`` and the like cannot overflow. Multiply results back with ``jnp.ldexp(x, e)``."""
    exponent = jnp.frexp(median(eigs, length))[1]
    return jnp.ldexp(eigs, -exponent[..., None]), exponent


def valid(eigs: Array, length: Array | None) -> Array:
    """Mask of the eigenvalues of padded vectors ``eigs`` ``(..., P)``: ``j < length`` (all True when ``length`` is None)."""
    j = jnp.arange(eigs.shape[-1])
    if length is None:
        return jnp.broadcast_to(True, eigs.shape)
    return j < jnp.asarray(length)[..., None]


def bulk(eigs: Array, K: Array, length: Array | None) -> Array:
    """Mask of the bulk ``lambda_{K+1..p}`` of descending, possibly padded vectors ``eigs`` ``(..., P)``: ``K <= j < length``."""
    return (jnp.arange(eigs.shape[-1]) >= jnp.asarray(K)[..., None]) & valid(eigs, length)


def sort_valid(eigs: Array, length: Array | None) -> Array:
    """``eigs`` sorted descending within each vector's first ``length`` entries, the padding kept at the end as zeros."""
    if length is None:
        return -jnp.sort(-eigs, axis=-1)
    mask = valid(eigs, length)
    ordered = -jnp.sort(-jnp.where(mask, eigs, -jnp.inf), axis=-1)
    return jnp.where(mask, ordered, 0.0)
