r"""The one decomposition path of pdbjax: normalise, then a batched float32 (or float64) SVD.

Every figure pdbjax reports about a matrix starts here, in :func:`pdbjax.analyze`,
:func:`pdbjax.compress`, :func:`pdbjax.filter_matrix` and :func:`pdbjax.eigenvalues` alike, so that a
rank rule gives the same keep count whichever entry point evaluated it.

1. **Normalise.** Each matrix of a stack ``(..., a, b)`` is divided by the power of two
   ``scale = 2^e`` nearest above its largest absolute entry (``frexp``), so the working matrix
   ``W_n = W / scale`` has entries in ``[-1, 1]``. Division by a power of two is exact in floating point,
   so ``W`` and ``2^k W`` give bitwise the same ``W_n``; the eigenvalues ``lambda_j = scale^2 s_j(W_n)^2``
   are then formed in float64 on the host, where ``W * 1e30`` (float32) does not overflow. Non-finite
   matrices are replaced by zeros for the decomposition (no LAPACK errors inside a batch) and flagged
   by ``finite = False``.
2. **Decompose** ``W_n`` in the working precision, whatever the storage dtype: ``"float32"`` (the
   default, the dtype of GPUs and TPUs) or ``"float64"`` (computed under a local ``jax.enable_x64``).
   ``precision=None`` means float64 when the caller has enabled 64-bit JAX (``jax.enable_x64``) and
   float32 otherwise, as ``jax.numpy`` chooses its default float.
   :func:`spectrum` is the values-only SVD (``svd(compute_uv=False)``); :func:`factors` the thin SVD
   with vectors (``via="svd"``) or the same factors from the Gram matrix (``via="gram"``, below).
   LAPACK's value-only and vector paths differ in the last bits (about ``1e-6 s_1`` in float32), so a
   caller that needs both (``compress``) takes its decisions from :func:`spectrum` and its vectors from
   :func:`factors`. Every singular value pdbjax reports or decides on comes from the SVD, never from the
   Gram matrix: a float32 Gram matrix ``W^T W`` has absolute eigenvalue errors ``~eps lambda_1``, which on
   a layer whose top spike is ``10^4`` times its smallest bulk eigenvalue moves that eigenvalue by 2%
   (measured); the SVD keeps it within ``1e-5``. Neither path needs ``N x N`` memory: a matrix with
   ``N > QR_ASPECT p`` is first reduced to the triangular factor of its QR decomposition (same singular
   values), because the value-only SVD's workspace on CPU is ``N x N``.
3. **Vectors for a rebuild** (``factors(W, via="gram")``, what :func:`pdbjax.filter_matrix` and
   ``compress`` use): with ``M`` the tall orientation of ``W_n`` (``n x p``, ``n >= p``), the eigenvectors
   ``V`` of ``G = M^T M`` (``eigh``, descending), ``A = M V = U diag(s)``, ``s_j = ||A e_j||`` and
   ``U = A diag(s)^-1`` (zero columns where ``s_j = 0``). A rebuild keeping the first ``k`` components,
   ``M V_k V_k^T``, is then an orthogonal projection of ``M`` onto a ``k``-dimensional subspace whatever
   the rounding, and its approximation error ``||M - M V_k V_k^T||_F^2 = ||M||_F^2 - ||M V_k||_F^2``
   exceeds the optimum (Eckart-Young, ``sum_{j>k} s_j^2``) only to second order in the subspace's
   error ``theta ~ eps lambda_1 / (lambda_k - lambda_{k+1})``. Where ``lambda_k`` and ``lambda_{k+1}`` lie
   within a few ``eps lambda_1`` of each other (a cut inside a dense bulk), which of the two components is
   kept is decided by rounding, as it is in the SVD within ``eps s_1 / (s_k - s_{k+1})``: the rebuilt
   matrix then differs from the float64 SVD truncation by up to ``theta s_k`` while fitting ``W`` as well.
   ``G`` and the products are formed at ``Precision.HIGHEST`` (TPUs otherwise multiply float32 in
   bfloat16 passes). On CPU this takes 0.53x the time of the SVD with vectors for 512 x 512 matrices and
   0.40x for 2048 x 512 ones (best times, ``benchmarks/results/one_path.md``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax import exported
from pdbjax._validate import is_traced
from pdbjax.precision import Precision, check_precision, context

__all__ = ["Spectrum", "Factors", "column_kurtosis", "normalise", "spectrum", "factors", "raw_eigenvalues"]

Array = jax.Array
#: How :func:`factors` computes the vectors: LAPACK's SVD, or the eigenvectors of the Gram matrix.
Via = Literal["svd", "gram"]


@exported.register
class Spectrum(NamedTuple):
    """Singular values of the normalised matrices (a pytree; leading axes are the batch).

    Attributes:
      s: singular values of ``W / scale``, descending, ``(..., p)``; zeros for non-finite matrices.
      scale: the power of two ``W`` was divided by, ``(...,)`` (1 for all-zero or non-finite ``W``).
      finite: whether every entry of the matrix is finite, ``(...,)``.
      kurtosis: the entries' excess kurtosis, :func:`column_kurtosis`, ``(...,)`` (what the PDB fit's
        one-or-two-bulks test corrects its sphericity statistic by).
    """

    s: Array
    scale: Array
    finite: Array
    kurtosis: Array


@exported.register
class Factors(NamedTuple):
    """Thin SVD ``W / scale = U diag(s) Vh`` of the normalised matrices (fields as in :class:`Spectrum`)."""

    U: Array
    s: Array
    Vh: Array
    scale: Array
    finite: Array


def normalise(W: Array) -> tuple[Array, Array, Array]:
    """``(W / scale, scale, finite)`` for a stack ``(..., a, b)`` in ``W``'s (floating) dtype.

    ``scale = 2^e`` with ``max |W| = f 2^e``, ``f in [0.5, 1)`` (``jnp.frexp``), ``e`` kept within
    ``[minexp + 1, maxexp - 2]`` of the dtype so that ``scale`` and ``1 / scale`` are finite normal numbers
    (``max |W| >= 2^126`` in float32 gives ``W / scale`` up to 4 instead of a flushed ``1 / 2^127`` or an
    infinite ``2^128``); non-finite matrices become zeros with ``scale = 1`` and ``finite = False``.
    """
    finite = jnp.all(jnp.isfinite(W), axis=(-2, -1))
    W = jnp.where(finite[..., None, None], W, jnp.zeros((), W.dtype))
    top = jnp.max(jnp.abs(W), axis=(-2, -1))
    info = jnp.finfo(W.dtype)
    _, exponent = jnp.frexp(top)
    exponent = jnp.clip(exponent, int(info.minexp) + 1, int(info.maxexp) - 2)
    scale = jnp.where(top > 0, jnp.ldexp(jnp.ones((), W.dtype), exponent), jnp.ones((), W.dtype))
    return W / scale[..., None, None], scale, finite


#: Rows of ``W``'s tall orientation whose squared norm exceeds this multiple of the median row's are left out of
#: :func:`column_kurtosis`: a row that concentrated signal runs through (an outlier feature, a "hot" input).
HOT_ROW = 4.0


def column_kurtosis(W: Array) -> Array:
    r"""Mean excess kurtosis of the columns of ``W``'s tall orientation ``M`` (``N x p``, ``N >= p``), batched:
    ``kappa = (1/p) sum_j (n sum_i M_ij^4 / (sum_i M_ij^2)^2 - 3)`` over the ``n`` rows ``i`` whose squared norm
    is at most :data:`HOT_ROW` times the median row's (an all-zero column counts 0), ``(...,)``.

    For i.i.d. entries this estimates their excess kurtosis ``E x^4 / (E x^2)^2 - 3``, which shifts the mean of
    the sphericity statistic ``N U - n - 1`` by ``kappa`` (``E[(1/p) tr S^2] = sigma^4 (1 + (p + 1 + kappa) / N)``):
    sparse or heavy-tailed noise would otherwise pass for two bulks. Under the PDB model ``W = X Sigma^{1/2}``
    with Gaussian ``X`` each column is Gaussian, whatever its variance, so ``kappa ~ 0`` and the two-bulk signal
    ``N v`` is untouched (a pooled kurtosis over all entries would be ``3 v``). A spike that runs through a few
    rows (``W + e_i v^T``) gives every column one large entry, which would count as kurtosis although the fit
    removes that spike before the test; such rows stand out by their norm and are left out (i.i.d. rows, of
    ``p`` entries each, do not reach 4 times the median: a Gaussian row's norm varies by ``sqrt(2 / p)``).
    Scale-free.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> gauss, sparse = rng.standard_normal((2000, 500)), rng.standard_normal((2000, 500)) * (rng.random((2000, 500)) < 0.1)
    >>> hot = gauss.copy(); hot[7] += 30 * rng.standard_normal(500)    # one row carrying a strong rank-1 spike
    >>> bool(abs(column_kurtosis(gauss)) < 0.05), round(float(column_kurtosis(sparse)), 1), bool(abs(column_kurtosis(hot)) < 0.05)
    (True, 27.0, True)
    """
    W = jnp.asarray(W)
    M = W if W.shape[-2] >= W.shape[-1] else jnp.swapaxes(W, -1, -2)
    sq = M * M
    rows = jnp.sum(sq, axis=-1)
    kept = rows <= HOT_ROW * jnp.median(rows, axis=-1, keepdims=True)
    sq = jnp.where(kept[..., None], sq, 0.0)
    n = jnp.sum(kept, axis=-1, keepdims=True).astype(sq.dtype)
    m2, m4 = jnp.sum(sq, axis=-2), jnp.sum(sq * sq, axis=-2)
    return jnp.mean(jnp.where(m2 > 0, n * m4 / jnp.where(m2 > 0, m2, 1.0) ** 2 - 3, 0.0), axis=-1)


def _working(W: jax.typing.ArrayLike, precision: str) -> Array:
    if not isinstance(W, jax.Array) and np.issubdtype(np.asarray(W).dtype, np.integer):
        W = np.asarray(W, np.float64)  # jnp.asarray would wrap int64 entries beyond 2^31 (64-bit mode off)
    W = jnp.asarray(W)
    if W.ndim < 2 or 0 in W.shape[-2:]:
        raise ValueError(f"expected matrices of shape (..., a, b) with a, b >= 1; got shape {W.shape}")
    if not (jnp.issubdtype(W.dtype, jnp.floating) or jnp.issubdtype(W.dtype, jnp.integer)):
        raise TypeError(f"expected a real (floating-point or integer) matrix; got dtype {W.dtype}")
    if is_traced(W):  # under the caller's jit: its precision
        return W.astype(jnp.promote_types(W.dtype, jnp.float32))
    return W.astype(jnp.float64 if precision == "float64" else jnp.float32)


#: Aspect ratio ``N / p`` above which :func:`spectrum` first reduces ``W`` to the ``p x p`` triangular
#: factor of its QR decomposition: LAPACK's value-only SVD (``gesdd`` with ``jobz='N'``) takes an
#: ``N x N``-sized workspace on CPU (40 GB for a float32 10 x 100000 matrix).
QR_ASPECT = 2


@exported.jit(cpu_compiler_options=exported.FAST_COMPILE)
def _spectrum(W: Array) -> Spectrum:
    Wn, scale, finite = normalise(W)
    kurtosis = column_kurtosis(Wn)
    a, b = Wn.shape[-2:]
    if max(a, b) > QR_ASPECT * min(a, b):  # static: same singular values, O(N p) memory
        tall = Wn if a >= b else jnp.swapaxes(Wn, -1, -2)
        Wn = jnp.linalg.qr(tall, mode="r")
    return Spectrum(jnp.linalg.svd(Wn, compute_uv=False), scale, finite, kurtosis)


@exported.jit(cpu_compiler_options=exported.FAST_COMPILE)
def _factors(W: Array) -> Factors:
    Wn, scale, finite = normalise(W)
    U, s, Vh = jnp.linalg.svd(Wn, full_matrices=False)
    return Factors(U, s, Vh, scale, finite)


@exported.jit(cpu_compiler_options=exported.FAST_COMPILE)
def _gram_factors(W: Array) -> Factors:
    """The factors of ``W / scale`` from the eigenvectors of its ``p x p`` Gram matrix (module docstring, step 3)."""
    Wn, scale, finite = normalise(W)
    a, b = Wn.shape[-2:]
    M = Wn if a >= b else jnp.swapaxes(Wn, -1, -2)  # (..., n, p), n >= p
    G = jnp.matmul(jnp.swapaxes(M, -1, -2), M, precision=jax.lax.Precision.HIGHEST)
    V = jnp.linalg.eigh(G)[1][..., ::-1]  # descending eigenvalues
    A = jnp.matmul(M, V, precision=jax.lax.Precision.HIGHEST)  # U diag(s)
    s = jnp.linalg.norm(A, axis=-2)
    U = A / jnp.where(s > 0, s, 1.0)[..., None, :]
    if a < b:  # W_n = M^T = V diag(s) U^T
        U, V = V, U
    return Factors(U, s, jnp.swapaxes(V, -1, -2), scale, finite)


_FACTORS = {"svd": _factors, "gram": _gram_factors}


def spectrum(W: jax.typing.ArrayLike, *, precision: Precision | None = None) -> Spectrum:
    """Singular values of the normalised stack ``W`` ``(..., a, b)`` (values-only SVD), batched.

    Example (``W`` and ``2^k W`` give bitwise the same normalised values):

    >>> import numpy as np
    >>> from pdbjax.linalg import raw_eigenvalues, spectrum
    >>> W = np.random.default_rng(0).standard_normal((3, 64, 32)).astype(np.float32)
    >>> a, b = spectrum(W), spectrum(W * 2.0**40)
    >>> bool(np.array_equal(a.s, b.s)), bool(np.allclose(raw_eigenvalues(b), raw_eigenvalues(a) * 4.0**40))
    (True, True)
    """
    precision = check_precision(precision)
    with context(precision, W):
        return _spectrum(_working(W, precision))


def factors(W: jax.typing.ArrayLike, *, precision: Precision | None = None, via: Via = "svd") -> Factors:
    """Thin SVD ``U diag(s) Vh`` of the normalised stack ``W`` ``(..., a, b)``, batched.

    ``via="svd"``: LAPACK's SVD with vectors. ``via="gram"``: the same factors from the eigenvectors of the
    ``p x p`` Gram matrix (module docstring, step 3): a rebuild from the first ``k`` is a projection of ``W``
    as close to it as the SVD's, for about half the time on CPU; ``s`` are column norms of ``W V`` (descending
    up to rounding, inaccurate below ``sqrt(eps) s_1``: take decisions from :func:`spectrum`).

    Example (a rank-8 rebuild from either path fits ``W`` equally well):

    >>> import numpy as np
    >>> from pdbjax.linalg import factors
    >>> W = np.random.default_rng(0).standard_normal((2, 64, 32)).astype(np.float32)
    >>> def error(f, k=8):
    ...     W_k = (f.U[..., :k] * f.s[..., None, :k]) @ f.Vh[..., :k, :] * f.scale[:, None, None]
    ...     return np.linalg.norm(W - np.asarray(W_k), axis=(1, 2))
    >>> bool(np.allclose(error(factors(W, via="gram")), error(factors(W, via="svd")), rtol=1e-5))
    True
    """
    precision = check_precision(precision)
    if via not in _FACTORS:
        raise ValueError(f"via must be one of {tuple(_FACTORS)}; got {via!r}")
    with context(precision, W):
        return _FACTORS[via](_working(W, precision))


def raw_eigenvalues(spec: Spectrum) -> np.ndarray | Array:
    """Eigenvalues ``lambda_j = (scale s_j)^2`` of the original matrices: float64 on the host (traced,
    in the working precision, under the caller's ``jit``); NaN rows for non-finite matrices.

    The scale is a power of two, so the product is exact: fits of ``W`` and of ``2^k W`` see eigenvalues
    that differ by exactly ``4^k``, and ``W * 1e30`` in float32 does not overflow.
    """
    if is_traced(spec):
        return jnp.where(spec.finite[..., None], (spec.s * spec.scale[..., None]) ** 2, jnp.nan)
    s = np.asarray(spec.s, np.float64) * np.asarray(spec.scale, np.float64)[..., None]
    return np.where(np.asarray(spec.finite)[..., None], s * s, np.nan)
