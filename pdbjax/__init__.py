"""pdbjax: where noise ends and information begins in neural-network weight matrices.

A JAX/Flax implementation of the Population Double Bulk (PDB) model of Wu, Zhu & Li (ICML 2025):
the spectral core (:mod:`pdbjax.spectral`), the PDBLS estimator and the PUB baselines
(:mod:`pdbjax.estimate`, :mod:`pdbjax.pub`, :mod:`pdbjax.quality`), noise filtering
(:mod:`pdbjax.filter`) and the model-level API (:func:`analyze`, :func:`compress`).
"""

import importlib
from typing import Any

from pdbjax.api import DEFAULT_RANK, LowRank, analyze, compress, densify
from pdbjax.estimate import eigenvalues, fit_pdb, spike_count
from pdbjax.filter import FilterInfo, filter_matrix, keep_count, outlier_mask, shrink_spikes
from pdbjax.fits import PDBFit, PUBFit, Reason, reason_text
from pdbjax.inputs import screen
from pdbjax.pub import fit_pub
from pdbjax.quality import Quality, fit_quality
from pdbjax.report import Report
from pdbjax.shrink import d_transform, d_transform_derivative, optimal_shrinker, shrink_optimal
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
from pdbjax.tree import group_by_shape, map_groups, select

__version__ = "0.1.0"

__all__ = [
    "PDB", "stieltjes", "density", "cdf", "critical_points", "edges", "lambda_plus", "spike_map",
    "spike_inverse", "moments", "simulate",
    "eigenvalues", "screen", "spike_count", "fit_pdb", "fit_pub", "fit_quality", "Quality",
    "PDBFit", "PUBFit", "Reason", "reason_text",
    "filter_matrix", "FilterInfo", "keep_count", "outlier_mask", "shrink_spikes",
    "d_transform", "d_transform_derivative", "optimal_shrinker", "shrink_optimal",
    "analyze", "compress", "LowRank", "densify", "DEFAULT_RANK", "Report",
    "select", "group_by_shape", "map_groups",
]

#: Submodules imported on first use (``pdbjax.io.load`` after a plain ``import pdbjax``): optional dependencies
#: (safetensors, Orbax, matplotlib) and the CLI stay out of the import until asked for.
_LAZY = ("budget", "cli", "compilation_cache", "distributed", "experiments", "exported", "io", "plot")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
