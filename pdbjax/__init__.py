"""pdbjax: where noise ends and information begins in neural-network weight matrices.

A JAX/Flax implementation of the Population Double Bulk (PDB) model of Wu, Zhu & Li (ICML 2025).
"""

from pdbjax.simulate import simulate
from pdbjax.spectral import (
    PDB,
    cdf,
    critical_points,
    density,
    edges,
    lambda_plus,
    moments,
    spike_inverse,
    spike_map,
    stieltjes,
)

__version__ = "0.1.0"
