r"""Every per-matrix figure of :func:`pdbjax.analyze` for spectra of one (padded) length, in three compiled programs.

Pass 2 of :func:`pdbjax.analyze`: for a batch of spectra of one length ``P`` (any ``N`` and, zero-padded,
any ``p <= P``: both are data, :mod:`pdbjax.inputs`),
:func:`spectrum_figures` runs

* the PDB fit (Algorithm 1, :func:`pdbjax.fit_pdb`) and, with ``baselines``, the PUB-BEMA and
  PUB-Kernel fits (:func:`pdbjax.fit_pub`);
* their goodness of fit (:func:`pdbjax.quality.fit_quality`), the tail slope and the heavy-tail flag
  (:func:`pdbjax.quality.heavy_tailed`);
* the outliers (:func:`pdbjax.filter.outlier_mask`) and the keep count of every rule
  (:func:`pdbjax.filter.keep_count`, as :func:`pdbjax.filter_matrix` evaluates it)

on the device, in the decomposition's working precision, on the normalised eigenvalues ``s**2`` of
``W / scale`` (entries in ``[-1, 1]``: no overflow in float32 whatever the weights' units), as three
programs: the PDB fit, the PUB fits, then everything computed from them (the fits stay on the device in
between); one program of all of it needs more memory to compile and to load from the persistent cache (README,
"Against WeightWatcher").
The host prepares the data of the fits (``N``, spike windows, BEMA's quantiles) before the calls and
fetches the result once (``jax.device_get``); fits and moments are brought back to ``W``'s units on
the host in float64 (``scale^2`` is an exact power of four, so this is exact).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax import exported
from pdbjax.estimate import Mode, check_mode, fit_inputs, fit_pdb_singular_values
from pdbjax.filter import RULES, fit_spectrum, keep_count, normalised_fit, outlier_mask
from pdbjax.inputs import check_eigs, svd_screen_rtol
from pdbjax.linalg import Spectrum
from pdbjax.precision import scope
from pdbjax.pub import ALPHA, BETA, BemaTable, fit_pub_batched, pub_inputs
from pdbjax.quality import heavy_tail_rule, quality_batched, tail_slope_batched
from pdbjax.spectral import PDB

__all__ = ["BASELINES", "spectrum_figures"]

#: The PUB baselines, by their short name in the report (``K_bema``, ``ks_kernel``, ...).
BASELINES = ("bema", "kernel")


def _keep_order(baselines: bool) -> tuple[str, ...]:
    """The keys of ``rank_kept`` in report order: the PDB rules, then each baseline's ``"spikes"`` as
    ``"pub-<name>"`` (``jax.device_get`` returns dicts with sorted keys)."""
    return (*RULES, *(f"pub-{name}" for name in BASELINES if baselines))


@exported.jit(cpu_compiler_options=exported.FAST_COMPILE)
def _fit_baselines(s: jax.Array, N: jax.Array, table: BemaTable, length: jax.Array) -> dict[str, Any]:
    """Program 2: the PUB baselines of normalised singular values ``s`` ``(B, P)`` (padded after ``length``)."""
    return {name: fit_pub_batched(s**2, N, table, length, name, svd_screen_rtol(s.dtype)) for name in BASELINES}


def _fit_names(fits: dict[str, Any]) -> tuple[str, ...]:
    """The fits' names in the order program 3 stacks their quality figures: ``"pdb"`` first, then the baselines."""
    return tuple(name for name in ("pdb", *BASELINES) if name in fits)


@exported.jit(cpu_compiler_options=exported.FAST_COMPILE)
def _figures(s: jax.Array, N: jax.Array, fits: dict[str, Any], length: jax.Array) -> dict[str, Any]:
    """Program 3: every figure of the fits ``{"pdb"}`` or ``{"pdb", "bema", "kernel"}`` (normalised), in ``s``' dtype,
    of the spectra ``s`` ``(B, P)`` padded after ``length``. ``"q"``: the fits' :class:`~pdbjax.quality.Quality`
    stacked on a leading axis in :func:`_fit_names` order (split on the host: slicing it here would copy each
    field's computation into every slice's kernel, 16 more loop fusions to compile on MiniLM)."""
    eigs = s**2
    pdb = fits["pdb"]
    names = _fit_names(fits)
    # One quality computation for all the fits: their fields stacked on a leading axis (compiled once).
    stack = lambda get: jnp.stack([get(fits[name]) for name in names])  # noqa: E731
    q = quality_batched(
        jnp.broadcast_to(eigs, (len(names), *eigs.shape)), stack(lambda f: f.K.astype(jnp.int32)),
        PDB(*(stack(lambda f, i=i: f.population[i].astype(eigs.dtype)) for i in range(3))), stack(lambda f: f.ok),
        jnp.broadcast_to(N.astype(jnp.int32), (len(names), *N.shape)), jnp.broadcast_to(length, (len(names), *length.shape)),
    )
    slope = tail_slope_batched(eigs, length)
    keep = {rule: keep_count(eigs, pdb, rule, length) for rule in RULES}
    keep.update({f"pub-{name}": keep_count(eigs, fits[name], "spikes", length) for name in BASELINES if name in fits})
    return {
        "q": q,
        "tail_slope": slope,
        "heavy_tailed": heavy_tail_rule(slope, q.ks[0]),
        "n_outliers": jnp.sum(outlier_mask(eigs, pdb), axis=-1),
        "keep": keep,
    }


def spectrum_figures(spec: Spectrum, N: np.ndarray, mode: Mode = "scaled", baselines: bool = True,
                     length: np.ndarray | None = None) -> dict[str, Any]:
    """Every figure :func:`pdbjax.analyze` reports for a batch of spectra, as NumPy arrays.

    Args:
      spec: :class:`~pdbjax.linalg.Spectrum` with batch shape ``(B,)`` (from :func:`pdbjax.linalg.spectrum`),
        its singular values possibly padded with zeros to a common length ``P`` (:mod:`pdbjax.inputs`).
      N: the larger dimension of each matrix, shape ``(B,)`` (host integers, ``>= p``).
      mode: PDBLS mode; ``"reference"`` fits the raw eigenvalues in float64 first
        (:func:`pdbjax.filter.fit_spectrum`) and passes that fit to the figures program.
      baselines: also fit PUB-BEMA and PUB-Kernel.
      length: the number ``p`` of singular values of each row of a padded ``spec`` (host integers; default:
        all of them). ``mode="reference"`` takes unpadded spectra only.

    Returns:
      ``{"pdb", "bema", "kernel"}``: fits in ``W``'s units (float64 where rescaled); ``"q_<name>"``:
      their :class:`~pdbjax.quality.Quality` (moments in ``W``'s units); ``"tail_slope"``,
      ``"heavy_tailed"``, ``"n_outliers"``; ``"keep"``: ``{rule: keep count}``. Every leaf has leading axis ``B``.
    """
    check_mode(mode)
    check_eigs(spec.s, N, length)  # shapes and N >= p (host-side: nothing leaves the device)
    N = np.asarray(N)
    given = fit_spectrum(spec, N, "pdb", mode, length) if mode == "reference" else None
    with scope(spec):
        n, window, length = fit_inputs(spec.s, N, length)
        table = pub_inputs(spec.s, N, ALPHA, BETA, length)[1] if baselines else None
        if given is None:
            fits = {"pdb": fit_pdb_singular_values(spec.s, n, window, length, spec.kurtosis, mode=mode)}
        else:
            fits = {"pdb": normalised_fit(given, spec)}
        if baselines:
            fits.update(_fit_baselines(spec.s, n, table, length))
        out = jax.device_get({**fits, **_figures(spec.s, n, fits, length)})
    q = out.pop("q")
    units = np.asarray(spec.scale, np.float64) ** 2  # normalised eigenvalues -> W's units
    for i, name in enumerate(_fit_names(fits)):
        out[name] = out[name].rescale(units)
        out[f"q_{name}"] = jax.tree_util.tree_map(lambda v, i=i: v[i], q).rescale(units)
    out["keep"] = {rule: out["keep"][rule] for rule in _keep_order(baselines)}
    if given is not None:
        out["pdb"] = given  # the float64 fit of the raw eigenvalues itself
    return out
