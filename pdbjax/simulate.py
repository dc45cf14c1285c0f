r"""Random weight matrices from the PDB model, for tests, demos and benchmarks."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax._validate import is_traced
from pdbjax.spectral import PDB, check_population

__all__ = ["simulate", "population_diagonal"]


def population_diagonal(p: int, pop: PDB, spikes: Sequence[float] | jax.Array = (), dtype=None) -> jax.Array:
    r"""Diagonal of ``Sigma = diag(alpha_1..alpha_K, sigma_1^2 I_{p1}, sigma_2^2 I_{p - K - p1})``.

    ``p1 = round(t (p - K))``. Works with traced ``t`` (a mask, not a slice), so it can be ``vmap``-ed
    over populations. ``dtype``: of the result; default the inputs' float dtype (a float, also for integer
    variances).
    """
    if dtype is None:  # a float (integer variances would truncate the spikes and the result)
        dtype = jnp.result_type(float, jnp.asarray(spikes), *(jnp.asarray(v) for v in pop))
    spikes = jnp.asarray(spikes, dtype)
    k = spikes.shape[0]
    if k >= p:
        raise ValueError(f"need fewer spikes than columns; got K={k}, p={p}")
    t, s1, s2 = (jnp.asarray(v, dtype) for v in pop)
    p1 = jnp.round(t * (p - k))
    bulk = jnp.where(jnp.arange(p - k) < p1, s1, s2)
    return jnp.concatenate([spikes.astype(bulk.dtype), bulk])


def simulate(
    key: jax.Array,
    N: int,
    p: int,
    pop: PDB,
    spikes: Sequence[float] | jax.Array = (),
    dtype=None,
) -> jax.Array:
    r"""Draw ``W = X Sigma^{1/2}`` of shape ``(N, p)``, ``X`` i.i.d. ``N(0, 1/N)`` (spec section 1).

    Args:
      key: a PRNG key.
      N, p: the shape, ``p <= N`` (transpose the result for a wide matrix).
      pop: scalar bulk population ``PDB(t, sigma1_sq, sigma2_sq)``.
      spikes: population spikes ``alpha_1..alpha_K`` (units of the eigenvalues).
      dtype: float dtype of the result (default: JAX's default float).

    The eigenvalues ``s_j^2`` of ``W`` then follow the PDB law with ``c_K = (p - K) / N`` plus ``K``
    outliers at ``spike_map(alpha_k)`` (for supercritical spikes).

    Example:

    >>> import jax, pdbjax
    >>> W = pdbjax.simulate(jax.random.PRNGKey(0), 800, 400, pdbjax.PDB(0.6, 1.0, 8.0), spikes=[60.0, 30.0])
    >>> W.shape, str(W.dtype)
    ((800, 400), 'float32')
    """
    if not 0 < p <= N:
        raise ValueError(f"simulate needs 0 < p <= N; got N={N}, p={p}")
    if not is_traced(pop, spikes):
        check_population(pop, 0.5)  # t in [0, 1], variances finite and > 0 (c is not simulate's: any valid one)
        if np.any(~(np.asarray(spikes, float) > 0) | ~np.isfinite(np.asarray(spikes, float))):
            raise ValueError(f"spikes must be finite and > 0; got {spikes!r}")
    dtype = dtype or jnp.result_type(float)
    diag = population_diagonal(p, pop, spikes, dtype)
    x = jax.random.normal(key, (N, p), dtype) / jnp.sqrt(jnp.asarray(N, dtype))
    return x * jnp.sqrt(diag)
