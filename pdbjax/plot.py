r"""Figures of a PDB analysis: the spectrum of one matrix with its fitted laws, and a per-model summary.

* :func:`plot_matrix` draws the eigenvalue histogram of one weight matrix together with the fitted
  PDB density and the two PUB (Marchenko-Pastur) baselines, the PDB support edges, the noise boundary
  ``lambda_+`` and the spikes above it.
* :func:`plot_summary` draws one figure per model (per :class:`~pdbjax.report.Report`): per-matrix
  spike counts, kept ranks and Kolmogorov-Smirnov distances of the three fits.
* :func:`save_figures` writes both kinds of figure as PNG files, atomically.

Reports do not store eigenvalues; :func:`spectra` recomputes them, named like the report rows, from
the same params and selection that were given to :func:`pdbjax.api.analyze`.

matplotlib is an optional dependency (``pip install pdbjax[plot]``), imported on first use. Figures
are built with :class:`matplotlib.figure.Figure` and the Agg renderer, never with ``pyplot``, so
nothing here touches global matplotlib state or opens a window.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from pdbjax._atomic import atomic_write
from pdbjax.api import DEFAULT_MAX_MEMORY
from pdbjax.precision import Precision, float64
from pdbjax.spectral import PDB, density
from pdbjax.tree import ConvReshape, LayerAxis, Where, map_groups, select, to_matrices

__all__ = ["plot_matrix", "plot_summary", "save_figures", "spectra", "require_matplotlib"]

_GRID = 512  # evaluation points of the model densities (fixed: one compilation per process)
_COLORS = {"pdb": "tab:blue", "bema": "tab:orange", "kernel": "tab:green", "spike": "crimson", "hist": "0.75"}
_STYLES = {"pdb": "-", "bema": "--", "kernel": ":"}
_LABELS = {"pdb": "PDB", "bema": "PUB-BEMA", "kernel": "PUB-Kernel"}


def require_matplotlib() -> None:
    """Raise an :class:`ImportError` that says how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'pdbjax[plot]' (or pip install matplotlib)") from err


def _new_figure(figsize: tuple[float, float]):
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


# --------------------------------------------------------------------------------------------------
# Eigenvalues named like report rows


def spectra(
    params: Any,
    where: Where = None,
    *,
    conv_reshape: ConvReshape = "in", layer_axis: LayerAxis = None,
    precision: Precision | None = None, max_memory: int | None = DEFAULT_MAX_MEMORY,
) -> dict[str, np.ndarray]:
    """Descending eigenvalues (float64) of every selected matrix, keyed like :func:`pdbjax.analyze` rows.

    Uses the selection of :func:`pdbjax.tree.select` with the same arguments as ``analyze`` (leaves
    that ``analyze`` would skip are left out) and one batched call per matrix shape (or chunk of at most
    ``max_memory`` bytes of working copies, :func:`pdbjax.tree.map_groups`; the default is ``analyze``'s)
    of the decomposition ``analyze`` uses (:func:`pdbjax.linalg.spectrum`, same ``precision``). The
    eigenvalues ``analyze``'s fits saw are in its report (:attr:`pdbjax.report.Report.spectra`); these
    are the same up to rounding (``analyze`` decomposes a wide matrix as its transpose).
    A stacked leaf (``layer_axis``) gives the keys ``"name[0]"``, ``"name[1]"``, ...
    """
    from pdbjax.linalg import raw_eigenvalues, spectrum

    sels = [s for s in select(params, where, conv_reshape=conv_reshape, layer_axis=layer_axis, on_error="skip") if s.ok]
    stacks = map_groups(lambda m: raw_eigenvalues(spectrum(m, precision=precision)), [to_matrices(s.value, s) for s in sels],
                        max_memory=max_memory)
    out: dict[str, np.ndarray] = {}
    for sel, lam in zip(sels, stacks):
        lam = np.asarray(lam).reshape(sel.num_matrices, -1)
        if sel.layer_axis is None:
            out[sel.name] = lam[0]
        else:
            out.update({f"{sel.name}[{i}]": v for i, v in enumerate(lam)})
    return out


# --------------------------------------------------------------------------------------------------
# One matrix


def _num(row: Mapping[str, Any], key: str) -> float:
    """``row[key]`` as a float; NaN when missing or ``None``."""
    value = row.get(key)
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


@functools.lru_cache(maxsize=None)
def _density_fn():
    return jax.jit(density)


def _model_densities(x: np.ndarray, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Bulk densities of the PDB fit and the PUB baselines at ``x`` (one batched, jitted call).

    Each PUB law uses the ratio its fit used (:attr:`pdbjax.fits.PUBFit.c`: ``p / N`` for BEMA, ``(p - K0) / N``
    for the Kernel), recovered from its edge ``lambda_plus = sigma^2 (1 + sqrt c)^2``; ``p / N`` when the row does
    not give the edge, the PDB fit's ``c`` when it does not give ``N`` and ``p`` either.
    """
    c_pdb = _num(row, "c")
    c_rows = _num(row, "p") / _num(row, "N") if row.get("N") and row.get("p") else c_pdb

    def c_pub(method: str) -> float:
        edge, var = _num(row, f"lambda_plus_{method}"), _num(row, f"sigma_sq_{method}")
        return (math.sqrt(edge / var) - 1) ** 2 if var > 0 and edge >= var and math.isfinite(edge) else c_rows

    pops = {
        "pdb": (_num(row, "t"), _num(row, "sigma1_sq"), _num(row, "sigma2_sq"), c_pdb),
        **{m: (1.0, _num(row, f"sigma_sq_{m}"), _num(row, f"sigma_sq_{m}"), c_pub(m)) for m in ("bema", "kernel")},
    }
    valid = {k: all(math.isfinite(v) for v in pop) and pop[1] > 0 and pop[2] > 0 and 0 < pop[3] <= 1 for k, pop in pops.items()}
    if not any(valid.values()):
        return {}
    dummy = (1.0, 1.0, 1.0, 0.5)  # keeps the batch shape fixed (one compilation) when a fit is missing
    table = np.array([pops[k] if valid[k] else dummy for k in pops], np.float64)
    grid = np.asarray(x, np.float64)
    with float64():
        f = _density_fn()(grid[None, :], PDB(*(table[:, i : i + 1] for i in range(3))), table[:, 3:4])
        f = np.asarray(f)
    return {k: f[i] for i, k in enumerate(pops) if valid[k]}


def plot_matrix(
    eigs: Any,
    row: Mapping[str, Any],
    ax: Any = None,
    *,
    log_x: bool = False,
    bins: int = 60,
    baselines: bool = True,
    title: str | None = None,
):
    r"""Eigenvalue histogram of one matrix with its fitted PDB and PUB densities.

    Draws

    * the histogram of the bulk eigenvalues ``lambda_{K+1..p}`` (``K`` = the PDB spike count of
      ``row``), density-normalised so that its area is 1 (the eigenvalues beyond the plotted range
      count in the normalisation but are not drawn);
    * the PDB bulk density :func:`pdbjax.spectral.density` with the row's ``t``, ``sigma1_sq``,
      ``sigma2_sq`` and ``c`` (solid), and the Marchenko-Pastur densities ``PDB.pub(sigma_sq)`` of the
      PUB-BEMA (dashed) and PUB-Kernel (dotted) fits with ``c = p / N`` (each integrates to 1);
    * vertical lines at the PDB support edges (grey, dashed) and at ``lambda_+`` (red), and at the
      baselines' ``lambda_+`` (thin, in their colours);
    * a red triangle at the top of the axes for each spike, i.e. each eigenvalue above ``lambda_+``;
      spikes beyond the right end of a linear axis are counted in a note instead.

    Args:
      eigs: the eigenvalues ``s_j^2`` of the matrix (any order), e.g. from :func:`spectra` or
        :func:`pdbjax.estimate.eigenvalues`.
      row: the matrix's row of a :func:`pdbjax.analyze` report (a dict; a JSON-loaded row works too).
        A row whose fit failed gets the histogram only, with its status in the title.
      ax: a matplotlib ``Axes`` to draw into; default: a new ``Figure`` (reach it as ``ax.figure``).
      log_x: logarithmic eigenvalue axis (log-spaced bins; the whole spectrum, spikes included, is
        shown).
      bins: number of histogram bins.
      baselines: draw the PUB curves and lines when the row has them.
      title: axes title; default: the row's name, shape and spike count.

    Returns:
      The ``Axes``.
    """
    lam = np.sort(np.asarray(eigs, np.float64).ravel())[::-1]
    if lam.size == 0 or not np.all(np.isfinite(lam)):
        raise ValueError("eigs must be a non-empty vector of finite eigenvalues")
    if ax is None:
        ax = _new_figure((9.0, 4.2)).subplots()
    p = lam.size
    K = int(row.get("K") or 0)
    K = min(max(K, 0), p - 1)
    lam_plus = _num(row, "lambda_plus")
    fitted = math.isfinite(lam_plus)
    edges = [float(e) for e in (row.get("edges") or []) if e is not None and math.isfinite(float(e))]
    pub_plus = {m: _num(row, f"lambda_plus_{m}") for m in ("bema", "kernel")} if baselines else {}
    pub_plus = {m: v for m, v in pub_plus.items() if math.isfinite(v)}
    bulk = lam[K:]
    spikes = lam[lam > lam_plus] if fitted else lam[:0]

    # Plotted range: the bulk and every boundary; a linear axis also takes the spikes when they are
    # close enough not to squash the bulk.
    marks = [bulk[0], *edges, *pub_plus.values()] + ([lam_plus] if fitted else [])
    top = max(marks)
    positive = lam[lam > 0]
    log_x = log_x and positive.size > 0 and top > 0  # an all-zero spectrum has no logarithmic axis: linear
    if log_x:
        lo = positive.min() / 1.25
        hi = max(top, lam[0]) * 1.25
    else:
        lo, hi = 0.0, (top * 1.12 if top > 0 else 1.0)  # an all-zero spectrum: a unit axis, not an empty one
        if lam[0] <= 1.6 * top:
            hi = max(hi, lam[0] * 1.05)
    bin_edges = np.geomspace(lo, hi, bins + 1) if log_x else np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(bulk, bins=bin_edges)
    heights = counts / (bulk.size * np.diff(bin_edges))
    ax.stairs(heights, bin_edges, fill=True, color=_COLORS["hist"], label=f"eigenvalues $\\lambda_{{K+1..p}}$ ({bulk.size})")

    grid = np.geomspace(lo, hi, _GRID) if log_x else np.linspace(hi / _GRID, hi, _GRID)
    curves = _model_densities(grid, row) if fitted or pub_plus else {}
    if not baselines:
        curves = {k: v for k, v in curves.items() if k == "pdb"}
    if not fitted:
        curves.pop("pdb", None)
    for key, f in curves.items():
        ax.plot(grid, f, _STYLES[key], color=_COLORS[key], lw=1.6, label=f"{_LABELS[key]} density")

    for i, e in enumerate(edges):
        ax.axvline(e, color="0.35", ls="--", lw=0.8, label="PDB edges" if i == 0 else None)
    if fitted:
        ax.axvline(lam_plus, color=_COLORS["spike"], lw=1.2, label=f"$\\lambda_+$ = {lam_plus:.4g}")
    for m, v in pub_plus.items():
        ax.axvline(v, color=_COLORS[m], ls=_STYLES[m], lw=0.9, label=f"$\\lambda_+$ {_LABELS[m]} = {v:.4g}")

    shown = spikes[(spikes >= lo) & (spikes <= hi)]
    if shown.size:
        ax.plot(shown, np.full(shown.size, 0.97), "v", color=_COLORS["spike"], ms=6, clip_on=False,
                transform=ax.get_xaxis_transform(), label=f"spikes > $\\lambda_+$ ({spikes.size})")
    beyond = spikes[spikes > hi]
    if beyond.size:
        ax.text(0.99, 0.9, f"+{beyond.size} spike(s) beyond the axis, up to {beyond.max():.4g}",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color=_COLORS["spike"],
                bbox=dict(fc="white", ec="none", alpha=0.85))

    # Keep a density that diverges at 0 (square layers) from flattening the histogram.
    peak = heights.max() if heights.size and heights.max() > 0 else 1.0
    tallest = max([peak] + [min(float(np.nanmax(f)), 3 * peak) for f in curves.values() if np.isfinite(f).any()])
    ax.set_ylim(0, 1.15 * tallest)
    ax.set_xlim(lo, hi)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("eigenvalue $\\lambda = s^2$")
    ax.set_ylabel("density")
    if title is None:
        shape = row.get("matrix_shape") or row.get("shape")
        dims = "x".join(str(d) for d in shape) if shape else ""
        status = row.get("status", "ok")
        title = f"{row.get('name', '')} {dims}  K={K}" + ("" if status == "ok" else f"  ({status})")
    ax.set_title(title, fontsize=9)
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if fitted:
        text = (f"PDB fit: t = {_num(row, 't'):.3g}\n$\\sigma_1^2$ = {_num(row, 'sigma1_sq'):.4g}\n"
                f"$\\sigma_2^2$ = {_num(row, 'sigma2_sq'):.4g}\nc = {_num(row, 'c'):.3g}")
        ks = [f"  {_LABELS[m]}: {_num(row, f'ks_{m}'):.3f}" for m in ("pdb", "bema", "kernel") if math.isfinite(_num(row, f"ks_{m}"))]
        if ks:
            text += "\nKS distance:\n" + "\n".join(ks)
        ax.annotate(text, xy=(0, 0), xycoords=legend, xytext=(0, -8), textcoords="offset points",
                    ha="left", va="top", fontsize=7)
    return ax


# --------------------------------------------------------------------------------------------------
# One model


def _short_names(names: Sequence[str]) -> list[str]:
    """Matrix names without brackets/quotes and without their common prefix, for tick labels."""
    clean = [re.sub(r"[\[\]'\"]+", " ", n).strip().replace("  ", " ").replace(" ", "/") for n in names]
    if len(clean) > 1 and max(map(len, clean)) > 28:
        prefix = os.path.commonprefix(clean)
        cut = max(prefix.rfind("/"), prefix.rfind("."))
        if cut > 0:
            clean = [c[cut + 1 :] or c for c in clean]
    return [c if len(c) <= 28 else "..." + c[-25:] for c in clean]


def _bars(ax, labels: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str, log: bool = False) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        key = name.split()[0].lower()
        color = "0.8" if name == "p" else _COLORS.get(key, f"C{i + 3}")
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=color, alpha=0.9)
    ax.set_xticks(x, labels, rotation=90 if len(labels) > 6 else 0, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("symlog", linthresh=1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)


def plot_summary(report: Any, path: str | os.PathLike | None = None, *, title: str | None = None):
    """One figure summarising a model's :func:`pdbjax.analyze` report, one group of bars per matrix.

    Panels (each drawn when the report has its columns): spike counts ``K`` of PDB, PUB-BEMA and
    PUB-Kernel; ranks kept by each rule of ``rank_kept`` next to ``p``; Kolmogorov-Smirnov distances
    between the bulk eigenvalues and each fitted law. Rows whose fit failed show no bars.

    Args:
      report: a :class:`~pdbjax.report.Report` or a list of row dicts (e.g. loaded from its JSON).
      path: if given, the PNG file to write (atomically).
      title: figure title.

    Returns:
      The matplotlib ``Figure``.
    """
    rows = [r for r in (report.rows if hasattr(report, "rows") else report) if r.get("p") is not None]
    labels = _short_names([str(r.get("name", i)) for i, r in enumerate(rows)])
    col = lambda key: [_num(r, key) for r in rows]  # noqa: E731
    panels = []
    spikes = {n: col(k) for n, k in (("PDB K", "K"), ("BEMA K", "K_bema"), ("Kernel K", "K_kernel"))}
    spikes = {n: v for n, v in spikes.items() if any(math.isfinite(x) for x in v)}
    if spikes:
        panels.append((spikes, "spike count K", False))
    rules = sorted({k for r in rows for k in (r.get("rank_kept") or {})})
    if rules:
        kept = {"p": col("p")}
        kept.update({f"keep {k}": [_num(r.get("rank_kept") or {}, k) for r in rows] for k in rules})
        panels.append((kept, "rank kept", False))
    ks = {n: col(k) for n, k in (("PDB KS", "ks_pdb"), ("BEMA KS", "ks_bema"), ("Kernel KS", "ks_kernel"))}
    ks = {n: v for n, v in ks.items() if any(math.isfinite(x) for x in v)}
    if ks:
        panels.append((ks, "KS distance (bulk)", False))
    width = min(max(7.5, 0.55 * len(rows) * max(1, len(rules) + 1) ** 0.5 + 4.0), 30.0)
    fig = _new_figure((width, 2.6 * max(len(panels), 1) + 0.6))
    axes = np.atleast_1d(fig.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0])
    for ax, (series, ylabel, log) in zip(axes, panels):
        _bars(ax, labels, series, ylabel, log)
    if not panels:
        axes[0].text(0.5, 0.5, "no fitted matrices in this report", ha="center", va="center")
    fig.suptitle(title or f"PDB analysis: {len(rows)} matrices", fontsize=10)
    if path is not None:
        _save_png(fig, Path(path))
    return fig


# --------------------------------------------------------------------------------------------------
# Files


def _save_png(fig: Any, path: Path) -> Path:
    """Render ``fig`` to ``path`` atomically (temporary sibling, then ``os.replace``)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), overwrite=True)
    return path


def _file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")
    return stem[-100:] or "matrix"


def save_figures(
    report: Any,
    eigs_by_name: Mapping[str, Any],
    outdir: str | os.PathLike,
    *,
    log_x: bool = False,
    summary: bool = True,
    title: str | None = None,
) -> list[Path]:
    """Write one PNG per matrix (:func:`plot_matrix`) and ``summary.png`` (:func:`plot_summary`).

    Per-matrix files are named ``NNN_<name>.png`` (``NNN`` the row's position in the report, the
    name reduced to ``[A-Za-z0-9._-]``), for the rows whose name is a key of ``eigs_by_name``
    (``report.spectra`` for a report of :func:`pdbjax.analyze`, or :func:`spectra`). ``outdir`` is
    created if needed; every file is written atomically and an existing file of the same name is replaced.

    Returns:
      The paths written, per-matrix files first.
    """
    require_matplotlib()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = report.rows if hasattr(report, "rows") else list(report)
    written = []
    for i, row in enumerate(rows):
        name = row.get("name")
        if name not in eigs_by_name:
            continue
        ax = plot_matrix(eigs_by_name[name], row, log_x=log_x)
        written.append(_save_png(ax.figure, outdir / f"{i:03d}_{_file_stem(str(name))}.png"))
    if summary:
        fig = plot_summary(rows, title=title)
        written.append(_save_png(fig, outdir / "summary.png"))
    return written
