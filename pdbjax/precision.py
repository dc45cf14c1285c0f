r"""The precision policy of pdbjax: which float dtype each kind of computation runs in.

Every choice of a working dtype in the package is made by one of these functions.

* **Decompositions** (:mod:`pdbjax.linalg`) run in a working precision chosen by the caller,
  :data:`Precision` ``"float32"`` (the default on every backend) or ``"float64"`` (computed under a
  local ``jax.enable_x64``); ``None`` is JAX's default float (:func:`check_precision`). :func:`context`
  opens that precision for concrete inputs, :func:`scope` keeps computing in the precision a result was
  made in.
* **Estimators** (:mod:`pdbjax.estimate`, :mod:`pdbjax.pub`, :mod:`pdbjax.quality`) compute in
  :func:`work_dtype` of their input: float32 for half-precision and integer eigenvalues, the input's
  own float dtype otherwise.
* **Closed forms** (:mod:`pdbjax.spectral`) compute in :func:`float_dtype` of their arguments: the
  promoted dtype, JAX's default float for integer arguments.
* **Fits in the pipeline** (:func:`pdbjax.filter.fit_spectrum`, used by :func:`pdbjax.filter_matrix`,
  :func:`pdbjax.analyze`, :func:`pdbjax.compress`) run in the decomposition's working precision, on the
  normalised eigenvalues of ``W / scale`` (no overflow in float32 whatever the units), and are brought
  back to ``W``'s units on the host in float64.
* **Host constants** (BEMA's Marchenko-Pastur quantiles) are NumPy float64, computed on the host in
  closed form; nothing asks a device for float64.
* **Fits of raw concrete eigenvalues** (:func:`pdbjax.filter.estimate_fit`; :func:`pdbjax.fit_pdb`'s
  default) run in float64 under :func:`float64` (a local ``jax.enable_x64``): raw eigenvalues may span
  ``1e-60 .. 1e60``. Traced inputs are computed in the caller's precision.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from pdbjax._validate import is_traced

__all__ = ["Precision", "PRECISIONS", "check_precision", "context", "scope", "work_dtype", "as_work", "float_dtype",
           "float64"]

Precision = Literal["float32", "float64"]
PRECISIONS = ("float32", "float64")


def check_precision(precision: str | None) -> Precision:
    """The working precision: ``precision`` itself, or for ``None`` JAX's default float (float64 only
    when the caller enabled 64-bit mode).

    >>> check_precision("float32")
    'float32'
    >>> check_precision(None)  # 64-bit JAX is off by default
    'float32'
    """
    if precision is None:
        return "float64" if jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64 else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None; got {precision!r}")
    return precision


def float64() -> contextlib.AbstractContextManager:
    """A local ``jax.enable_x64``: float64 arrays inside, the caller's setting restored on exit."""
    return jax.enable_x64(True)


def context(precision: str, *xs: ArrayLike) -> contextlib.AbstractContextManager:
    """:func:`float64` for ``"float64"`` work on concrete inputs; the ambient precision otherwise (a
    traced input is computed in its caller's precision)."""
    if precision == "float64" and not is_traced(*xs):
        return float64()
    return contextlib.nullcontext()


def scope(x: jax.Array | tuple) -> contextlib.AbstractContextManager:
    """The precision context in which to keep computing with ``x``, an array or a NamedTuple of arrays
    whose first field decides (float64 results stay float64, on the device or fetched to the host).

    >>> import numpy as np
    >>> with scope(np.zeros(3)):  # a float64 spectrum on the host: float64 work
    ...     jnp.asarray(np.zeros(3)).dtype
    dtype('float64')
    >>> with scope(1.0):  # a Python float: JAX's default float
    ...     jnp.asarray(1.0).dtype
    dtype('float32')
    """
    first = x[0] if isinstance(x, tuple) else x
    # a JAX or NumPy array keeps its dtype; anything else gets the one jnp.asarray would give it (without running it)
    dtype = first.dtype if isinstance(first, (jax.Array, np.ndarray)) else jax.dtypes.canonicalize_dtype(np.result_type(first))
    return context("float64" if dtype == jnp.float64 else "float32", first)


def work_dtype(dtype: DTypeLike) -> jnp.dtype:
    """The estimators' dtype for input of ``dtype``: float32 for half precision and integers, else itself.

    >>> work_dtype(jnp.bfloat16), work_dtype(jnp.int32), work_dtype(jnp.float32)
    (dtype('float32'), dtype('float32'), dtype('float32'))
    """
    dtype = jnp.dtype(dtype)
    return dtype if dtype in (jnp.float32, jnp.float64) else jnp.dtype(jnp.float32)


def as_work(x: jax.Array) -> jax.Array:
    """``x`` cast to :func:`work_dtype` of its dtype."""
    return x.astype(work_dtype(x.dtype))


def float_dtype(*xs: ArrayLike) -> jnp.dtype:
    """The closed forms' dtype: the promoted dtype of ``xs``, JAX's default float when that is not a float.

    >>> float_dtype(1, 2)  # integers: JAX's default float
    dtype('float32')
    """
    dtype = jnp.result_type(*[jnp.asarray(x).dtype for x in xs])
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype
