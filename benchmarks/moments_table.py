"""Tables 3 and 5 of Wu, Zhu & Li (2025) on our networks: bulk spectral moments of PUB-BEMA,
PUB-Kernel and PDB-PDBLS against the empirical ones, and per-layer fitting figures.

For every network below, :func:`pdbjax.analyze` fits PDB (PDBLS) and both PUB baselines to each
selected weight matrix. Per matrix it reports the bulk moments
``gamma_k = (1/(p-K)) sum_{j>K} lambda_j^k`` (``lambda = s^2``, no ``1/N``; spec section 5) of the
empirical spectrum (``moments_empirical``: the bulk after PDB's ``K`` spikes) and of each fitted law
(``moments_pdb``, ``moments_bema``, ``moments_kernel``), and the Kolmogorov-Smirnov distance of each
law to its bulk (``ks_*``).

Aggregation over layers (the paper's tables give one number per network and do not say how layers
were combined; we take the most literal reading): the **plain mean over layers** of each method's
``gamma_j``, and of the empirical ``gamma_j`` (one empirical value per layer, the same for all
methods). Alongside: the mean over layers of the relative errors ``|gamma_model / gamma_emp - 1|``,
the mean KS distance per method, and whether PDB's ``gamma_2`` / ``gamma_3`` are closer to the
empirical values than both PUB fits (for the means, and layer by layer). Only layers where all three
fits are ok enter the aggregates.

Networks (``--networks``, default all):

* ``fcnn-fmnist``, ``fcnn-mnist5k`` -- the FCNN 784-512-512-350-10 checkpoints (noise 0), its three
  hidden kernels (``benchmarks/common.py``);
* ``vgg16-fmnist32``, ``resnet18-fmnist32`` -- the width-0.125 CNN checkpoints (noise 0), every hidden
  kernel (conv kernels ``(kh, kw, in, out)`` viewed as ``(kh*kw*in, out)``, plus VGG's hidden
  classifier kernel) with ``p = min(a, b) >= 16``;
* ``minilm-l6`` -- all-MiniLM-L6-v2 (:func:`pdbjax.io.minilm_path`), the 36 encoder matrices
  (``encoder.*weight``, 2-D, no LayerNorm; the default selection would add the pooler).

Outputs (written atomically): ``benchmarks/results/moments.md``, ``benchmarks/results/moments.json``
(aggregates and per-layer rows) and ``benchmarks/results/fitting/<network>.png``. Running a subset of
networks updates their entries and keeps the others from the previous file. ``--quick`` fits at most
3 matrices per network and writes to a scratch directory (``--out`` to change it), never to
``benchmarks/results``.

Usage::

    python benchmarks/moments_table.py                      # all networks
    python benchmarks/moments_table.py --networks fcnn-mnist5k minilm-l6
    python benchmarks/moments_table.py --quick --no-figures
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # also puts the repo root on sys.path when pdbjax is not installed
    RESULTS_DIR,
    build_model,
    checkpoint_path,
    get_experiment,
    hidden_kernel_paths,
    read_record,
    settings_of,
)

import pdbjax  # noqa: E402
import pdbjax.io  # noqa: E402
from pdbjax.experiments.train import load_checkpoint  # noqa: E402

METHODS = ("bema", "kernel", "pdb")  # table order, as in the paper
METHOD_LABEL = {"bema": "PUB-BEMA", "kernel": "PUB-Kernel", "pdb": "PDB-PDBLS", "empirical": "empirical (bulk)"}
MIN_P = 16  # CNN matrices with p = min(a, b) below this are left out

#: The paper's Tables 3 and 5 (poster, ``shared/seed/``): mean gamma_1..3 per network.
PAPER = {
    "FCNN: MNIST": {"table": 3, "PUB-BEMA": (2.27, 7.74, 32.23), "PUB-Kernel": (1.37, 2.81, 7.04),
                    "PDB-PDBLS": (1.71, 4.94, 18.79), "empirical": (1.74, 5.50, 24.17)},
    "VGG16: CIFAR10": {"table": 3, "PUB-BEMA": (0.92, 1.26, 2.12), "PUB-Kernel": (0.90, 1.22, 2.03),
                       "PDB-PDBLS": (0.96, 1.53, 3.11), "empirical": (0.97, 1.59, 3.51)},
    "T5-base: RTE": {"table": 5, "PUB-BEMA": (0.67, 0.90, 1.51), "PUB-Kernel": (0.53, 0.56, 0.74),
                     "PDB-PDBLS": (0.77, 1.55, 4.17), "empirical": (0.72, 1.83, 5.35)},
    "BERT: SciTail": {"table": 5, "PUB-BEMA": (0.59, 0.69, 1.02), "PUB-Kernel": (0.56, 0.63, 0.88),
                      "PDB-PDBLS": (0.67, 1.18, 2.78), "empirical": (0.71, 1.38, 3.95)},
}

AGGREGATION = (
    "Per network, every number is the plain mean over its layers (matrices) where all three fits are ok: "
    "mean of each method's gamma_j, mean of the empirical gamma_j, mean of |gamma_j(model) / gamma_j(empirical) - 1|, "
    "mean KS distance. The paper's tables give one number per network and do not say how layers were combined. "
    "Empirical gamma_j = (1/(p-K)) sum_{j>K} lambda_j^k over the bulk after PDB's K spikes (spec section 5), "
    "the same values for every method; each PUB law's gamma_j is at its own ratio c_K = (p - K_PUB)/N and its KS "
    "distance is to its own bulk (after its own K), as pdbjax.analyze reports them."
)


# --------------------------------------------------------------------------------------------------
# Networks: (params, selection predicate, description, the paper's nearest column)


def _experiment_params(name: str) -> Any:
    """The trained noise-0 model of a ``benchmarks/common.py`` experiment (weights only, no data)."""
    experiment = get_experiment(name)
    path = checkpoint_path(name, 0.0)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train it with `python benchmarks/train_models.py --experiment {name} --noise 0.0`")
    settings = settings_of(experiment, read_record(name, 0.0))
    model = build_model(experiment, settings["width"], settings["config"]["seed"])
    load_checkpoint(path, model)
    return model


def _hidden(model: Any, min_p: int) -> Callable[[str, Any], bool]:
    names = {"/".join(str(k) for k in p) for p in hidden_kernel_paths(model)}  # pdbjax's plain names

    def where(name: str, x: Any) -> bool:
        shape = tuple(x.shape)
        return name in names and min(math.prod(shape[:-1]), shape[-1]) >= min_p

    return where


def _minilm_where(name: str, x: Any) -> bool:
    return re.search(r"encoder.*weight", name) is not None and "LayerNorm" not in name and len(x.shape) == 2


def load_network(name: str) -> dict[str, Any]:
    if name in ("fcnn-fmnist", "fcnn-mnist5k"):
        model = _experiment_params(name)
        return dict(params=model, where=_hidden(model, 1), paper="FCNN: MNIST",
                    description=f"{name} noise 0: the 3 hidden kernels of FCNN 784-512-512-350-10")
    if name in ("vgg16-fmnist32", "resnet18-fmnist32"):
        model = _experiment_params(name)
        arch = name.split("-")[0]
        return dict(params=model, where=_hidden(model, MIN_P), paper="VGG16: CIFAR10" if arch == "vgg16" else None,
                    description=f"{name} noise 0, width 0.125: hidden kernels (conv as (kh*kw*in, out)) with p >= {MIN_P}")
    if name == "minilm-l6":
        params = pdbjax.io.load(pdbjax.io.minilm_path())
        default = [s.name for s in pdbjax.select(params, None, on_error="skip") if s.ok]
        extra = [n for n in default if not _minilm_where(n, params[n])]
        return dict(params=params, where=_minilm_where, paper="BERT: SciTail",
                    description="all-MiniLM-L6-v2: the 36 encoder matrices (Q, K, V, attention output 384x384; "
                    f"intermediate 1536x384; output 384x1536 per layer). The default selection has {len(default)} "
                    f"matrices: also {', '.join(extra) or 'nothing else'}, left out here")
    raise KeyError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")


NETWORKS = ("fcnn-fmnist", "fcnn-mnist5k", "vgg16-fmnist32", "resnet18-fmnist32", "minilm-l6")


def short_name(name: str) -> str:
    """``"encoder.layer.3.attention.self.query.weight"`` -> ``"L3 query"``; ``"convs/2/kernel"`` -> ``"convs/2"``."""
    m = re.search(r"encoder\.layer\.(\d+)\.(.+)\.weight", name)
    if m:
        part = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
                "attention.output.dense": "attn-out", "intermediate.dense": "intermediate",
                "output.dense": "output"}.get(m.group(2), m.group(2))
        return f"L{m.group(1)} {part}"
    parts = [p for p in name.split("/") if p != "kernel"]
    return "/".join(parts) or name


# --------------------------------------------------------------------------------------------------
# Analysis and aggregation

ROW_KEYS = ("name", "matrix_shape", "N", "p", "c", "K", "K_bema", "K_kernel", "t", "sigma1_sq", "sigma2_sq",
            "sigma_sq_bema", "sigma_sq_kernel", "lambda_plus", "lambda_plus_bema", "lambda_plus_kernel",
            "moments_empirical", "moments_pdb", "moments_bema", "moments_kernel",
            "ks_pdb", "ks_bema", "ks_kernel", "l2_pdb", "l2_bema", "l2_kernel",
            "status", "status_bema", "status_kernel")


def _finite(v: Any) -> bool:
    return v is not None and all(x is not None and math.isfinite(x) for x in np.ravel(np.asarray(v, dtype=object)))


def layer_rows(report: Any, eigs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The per-layer rows kept in the JSON, with the full-spectrum moments ``(1/p) sum_j lambda_j^k``."""
    rows = []
    for r in report:
        row = {k: r.get(k) for k in ROW_KEYS}
        row["short"] = short_name(r["name"])
        lam = eigs.get(r["name"])
        row["moments_all_p"] = None if lam is None else [float(np.mean(lam**k)) for k in (1, 2, 3)]
        row["all_ok"] = all(r.get(f"moments_{m}") is not None and _finite(r.get(f"moments_{m}")) for m in (*METHODS, "empirical"))
        rows.append(row)
    return rows


def add_own_bulk(rows: list[dict[str, Any]], eigs: dict[str, np.ndarray]) -> None:
    """Each PUB fit's empirical moments over its *own* bulk (after its own K), a robustness check.

    The main table compares every method with the bulk after PDB's K. A PUB fit usually removes more
    spikes (larger K), so it is asked there to reproduce eigenvalues that it classifies as spikes; here
    it is measured against ``lambda_{K_PUB+1..p}`` instead (:func:`pdbjax.fit_pub` refitted on the same
    eigenvalues, :func:`pdbjax.fit_quality`, batched per matrix shape). Adds ``moments_empirical_<m>``,
    ``rel_error_own_<m>`` (signed, ``gamma_model / gamma_own - 1``) and ``refit_matches_<m>`` per row.
    """
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["name"] in eigs and r["N"]:
            groups.setdefault((r["p"], r["N"]), []).append(r)
    with jax.enable_x64(True):
        for (_, N), members in groups.items():
            lam = jax.numpy.asarray(np.stack([eigs[r["name"]] for r in members]), jax.numpy.float64)
            for m in ("bema", "kernel"):
                fit = pdbjax.fit_pub(lam, N, m)
                q = pdbjax.fit_quality(lam, N, fit)
                own, model, sig = np.asarray(q.moments), np.asarray(q.model_moments), np.asarray(fit.sigma_sq)
                for i, r in enumerate(members):
                    ok = bool(np.all(np.isfinite(own[i])))
                    r[f"moments_empirical_{m}"] = own[i].tolist() if ok else None
                    r[f"rel_error_own_{m}"] = (model[i] / own[i] - 1).tolist() if ok else None
                    ref = r.get(f"sigma_sq_{m}")
                    r[f"refit_matches_{m}"] = ref is not None and bool(np.isclose(sig[i], ref, rtol=1e-6))


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the layers where all three fits are ok (see :data:`AGGREGATION`)."""
    good = [r for r in rows if r["all_ok"]]
    out: dict[str, Any] = {"n_matrices": len(rows), "n_aggregated": len(good)}
    if not good:
        return out
    emp = np.array([r["moments_empirical"] for r in good], float)
    out["gamma"] = {"empirical": emp.mean(0).tolist()}
    out["gamma"]["all_p"] = np.mean([r["moments_all_p"] for r in good], 0).tolist()
    out["mean_rel_error"], out["rel_error_of_means"], out["ks"], out["l2"], out["K"] = {}, {}, {}, {}, {}
    err = {}
    for m in METHODS:
        model = np.array([r[f"moments_{m}"] for r in good], float)
        err[m] = np.abs(model - emp)
        out["gamma"][m] = model.mean(0).tolist()
        out["mean_rel_error"][m] = np.mean(np.abs(model / emp - 1), 0).tolist()
        out["rel_error_of_means"][m] = np.abs(model.mean(0) / emp.mean(0) - 1).tolist()
        out["ks"][m] = float(np.mean([r[f"ks_{m}"] for r in good]))
        out["l2"][m] = float(np.mean([r[f"l2_{m}"] for r in good]))
        out["K"][m] = float(np.mean([r["K" if m == "pdb" else f"K_{m}"] for r in good]))
    gap = {m: np.abs(np.array(out["gamma"][m]) - np.array(out["gamma"]["empirical"])) for m in METHODS}
    pub_best_mean = np.minimum(gap["bema"], gap["kernel"])
    pub_best_layer = np.minimum(err["bema"], err["kernel"])
    wins = err["pdb"] < pub_best_layer  # (layers, 3)
    out["pdb_closer_mean"] = {f"gamma_{j + 1}": bool(gap["pdb"][j] < pub_best_mean[j]) for j in range(3)}
    out["pdb_closer_layers"] = {f"gamma_{j + 1}": int(wins[:, j].sum()) for j in range(3)}
    out["pdb_closer_layers"]["gamma_2_and_3"] = int((wins[:, 1] & wins[:, 2]).sum())
    out["ks_pdb_lowest_layers"] = int(sum(r["ks_pdb"] < min(r["ks_bema"], r["ks_kernel"]) for r in good))
    own = [r for r in good if all(r.get(f"rel_error_own_{m}") is not None for m in ("bema", "kernel"))]
    if own:  # each method against its own bulk: PDB's bulk for PDB, the PUB fit's bulk for PUB
        rel = {m: np.abs(np.array([r[f"rel_error_own_{m}"] for r in own], float)) for m in ("bema", "kernel")}
        rel["pdb"] = np.abs(np.array([r["moments_pdb"] for r in own], float) / np.array([r["moments_empirical"] for r in own], float) - 1)
        wins = rel["pdb"] < np.minimum(rel["bema"], rel["kernel"])
        out["own_bulk"] = {
            "n_layers": len(own),
            "refit_matches_analyze": int(sum(r["refit_matches_bema"] and r["refit_matches_kernel"] for r in own)),
            "mean_rel_error": {m: rel[m].mean(0).tolist() for m in METHODS},
            "pdb_lowest_rel_error_layers": {f"gamma_{j + 1}": int(wins[:, j].sum()) for j in range(3)},
        }
    return out


def run_network(name: str, max_matrices: int | None, figures: bool, fig_dir: Path) -> dict[str, Any]:
    timings = {}
    t0 = time.perf_counter()
    net = load_network(name)
    where = net["where"]
    if max_matrices is not None:
        chosen = [s.name for s in pdbjax.select(net["params"], where) if s.ok][:max_matrices]
        where = lambda n, x, _w=where, _c=frozenset(chosen): _w(n, x) and n in _c  # noqa: E731
    timings["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = pdbjax.analyze(net["params"], where)
    timings["analyze_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from pdbjax.plot import spectra

    eigs = spectra(net["params"], where)
    timings["eigenvalues_s"] = time.perf_counter() - t0
    rows = layer_rows(report, eigs)
    t0 = time.perf_counter()
    add_own_bulk(rows, eigs)
    timings["own_bulk_s"] = time.perf_counter() - t0
    result = {
        "network": name,
        "description": net["description"],
        "paper_column": net["paper"],
        "aggregate": aggregate(rows),
        "layers": rows,
    }
    if figures:
        t0 = time.perf_counter()
        result["figure"] = str(fitting_figure(name, report, eigs, fig_dir / f"{name}.png"))
        timings["figure_s"] = time.perf_counter() - t0
    result["timings"] = {k: round(v, 1) for k, v in timings.items()}
    result["run_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    return result


# --------------------------------------------------------------------------------------------------
# Figures


def fitting_figure(name: str, report: Any, eigs: dict[str, np.ndarray], path: Path) -> Path:
    """A grid with one :func:`pdbjax.plot.plot_matrix` panel per matrix and one shared legend."""
    from matplotlib.figure import Figure

    from pdbjax.plot import plot_matrix

    rows = [r for r in report if r["name"] in eigs]
    n = len(rows)
    ncols = 6 if name == "minilm-l6" else min(n, 3 if n <= 3 else 4 if n <= 16 else 6)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.9 * ncols, 2.9 * nrows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    handles: dict[str, Any] = {}
    for ax, row in zip(axes, rows):
        a, b = row["matrix_shape"]
        bins = int(np.clip(round(2 * math.sqrt(min(a, b))), 10, 60))  # ~8 eigenvalues per bin; p = 16 has 16
        plot_matrix(eigs[row["name"]], row, ax, bins=bins, title=f"{short_name(row['name'])}  {a}x{b}")
        for h, label in zip(*ax.get_legend_handles_labels()):
            key = _legend_key(label)
            if key and key not in handles:
                handles[key] = h
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        for text in list(ax.texts):
            if type(text).__name__ == "Annotation":  # plot_matrix's fit box, anchored to the removed legend
                text.remove()
        ks = " ".join(f"{lab} {row[f'ks_{m}']:.3f}" for m, lab in (("pdb", "PDB"), ("bema", "BEMA"), ("kernel", "Ker"))
                      if row.get(f"ks_{m}") is not None)
        K = f"K: PDB {row.get('K')}, BEMA {row.get('K_bema')}, Ker {row.get('K_kernel')}"
        ax.text(0.99, 0.74, f"{K}\nKS: {ks}", transform=ax.transAxes, ha="right", va="top", fontsize=6.5,
                bbox=dict(fc="white", ec="0.8", alpha=0.85, pad=1.5))
        ax.set_xlabel(r"$\lambda = s^2$", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 8), fontsize=8)
    fig.suptitle(f"{name}: bulk eigenvalue histograms (after PDB's K spikes) with the fitted PDB and PUB densities",
                 fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def _legend_key(label: str) -> str | None:
    """Legend labels of plot_matrix without the per-panel numbers (one shared legend per figure)."""
    if label.startswith("eigenvalues"):
        return "bulk eigenvalues"
    if label.startswith("spikes"):
        return r"spikes > PDB $\lambda_+$"
    if "=" in label:
        key = label.split("=")[0].strip()
        return "PDB " + key if key == r"$\lambda_+$" else key
    return label


# --------------------------------------------------------------------------------------------------
# Tables


def _g(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _gammas(v: Any) -> list[str]:
    return [_g(x) for x in v] if v is not None else ["-"] * 3


def _sources(src: dict[str, Any] | None) -> str:
    if not src:
        return ""
    commit = (src.get("git_commit") or "?")[:10] + (" with uncommitted changes" if src.get("pdbjax_dirty") else "")
    return f"; pdbjax at {commit}, sources sha256 {src.get('pdbjax_sources_sha256')}"


def markdown(data: dict[str, Any]) -> str:
    nets = [data["networks"][n] for n in NETWORKS if n in data["networks"]]
    out = ["# Spectral moments: PUB-BEMA, PUB-Kernel and PDB-PDBLS against the empirical values", ""]
    out += [f"Written by `{data['command']}` ({data['written_at']}); per-layer rows in `moments.json`; "
            "figures in `fitting/`. Analogue of Tables 3 and 5 of Wu, Zhu & Li (ICML 2025).", ""]
    out += ["**Aggregation.** " + AGGREGATION, "",
            "gamma_j has no 1/N factor: lambda = s^2 (spec section 1). `empirical, all p` is (1/p) sum over *all* "
            "p eigenvalues, spikes included, the definition in the paper's table captions; it is shown for reference only, "
            "the errors are against `empirical (bulk)`.", ""]

    out += ["## Mean moments per network (ours)", "",
            "| network | method | γ1 | γ2 | γ3 | mean \\|rel. err.\\| γ1 | γ2 | γ3 | mean KS | mean K |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for net in nets:
        agg = net["aggregate"]
        if "gamma" not in agg:
            out.append(f"| {net['network']} | (no layer with all fits ok) | | | | | | | | |")
            continue
        label = f"{net['network']} ({agg['n_aggregated']} of {agg['n_matrices']})"
        for m in METHODS:
            out.append(f"| {label} | {METHOD_LABEL[m]} | " + " | ".join(_gammas(agg["gamma"][m])) + " | "
                       + " | ".join(_g(x) for x in agg["mean_rel_error"][m]) + f" | {_g(agg['ks'][m])} | {agg['K'][m]:.3g} |")
            label = ""
        out.append("| | **empirical (bulk)** | " + " | ".join(_gammas(agg["gamma"]["empirical"])) + " | | | | | |")
        out.append("| | empirical, all p | " + " | ".join(_gammas(agg["gamma"]["all_p"])) + " | | | | | |")
    out += ["", "(n of m): layers aggregated of layers analysed. Relative errors are the mean over layers of "
            "|gamma_model / gamma_empirical - 1|; K is the mean spike count of each fit.", ""]

    out += ["## Does PDB match gamma_2 and gamma_3 better than both PUB fits?", "",
            "| network | layers | mean γ2: PDB closest | mean γ3: PDB closest | layers PDB closest on γ2 | on γ3 | on both | "
            "layers with lowest KS: PDB | rel. err. of the means γ2 (BEMA / Kernel / PDB) | γ3 (BEMA / Kernel / PDB) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for net in nets:
        agg = net["aggregate"]
        if "gamma" not in agg:
            continue
        n = agg["n_aggregated"]
        yes = lambda b: "yes" if b else "**no**"  # noqa: E731
        rel = agg["rel_error_of_means"]
        col = lambda j: " / ".join(f"{rel[m][j]:.3f}" for m in METHODS)  # noqa: E731
        c = agg["pdb_closer_layers"]
        out.append(f"| {net['network']} | {n} | {yes(agg['pdb_closer_mean']['gamma_2'])} | {yes(agg['pdb_closer_mean']['gamma_3'])} | "
                   f"{c['gamma_2']}/{n} | {c['gamma_3']}/{n} | {c['gamma_2_and_3']}/{n} | {agg['ks_pdb_lowest_layers']}/{n} | "
                   f"{col(1)} | {col(2)} |")
    out += ["", "\"Closest\": |gamma_j(PDB) - gamma_j(empirical)| is smaller than for both PUB-BEMA and PUB-Kernel "
            "(for the means over layers, then counted layer by layer).", ""]

    out += ["## Robustness: each method against its own bulk", "",
            "A PUB fit usually removes more spikes than PDB (larger K, see `mean K` above), so against PDB's bulk it is "
            "also asked to reproduce eigenvalues it calls spikes. Here each PUB fit is measured against the empirical "
            "moments of its own bulk (after its own K; refitted with `pdbjax.fit_pub`, scored with `pdbjax.fit_quality`), "
            "PDB against PDB's bulk, and the relative errors are compared.", "",
            "| network | layers | mean \\|rel. err.\\| γ1 (BEMA / Kernel / PDB) | γ2 | γ3 | layers PDB lowest rel. err. γ2 | γ3 |",
            "|---|---|---|---|---|---|---|"]
    for net in nets:
        own = net["aggregate"].get("own_bulk")
        if not own:
            continue
        n, e, w = own["n_layers"], own["mean_rel_error"], own["pdb_lowest_rel_error_layers"]
        col = lambda j: " / ".join(f"{e[m][j]:.3f}" for m in METHODS)  # noqa: E731
        out.append(f"| {net['network']} | {n} | {col(0)} | {col(1)} | {col(2)} | {w['gamma_2']}/{n} | {w['gamma_3']}/{n} |")
    out += [""]

    out += ["## The paper's numbers (Tables 3 and 5, quoted from the poster for reference; not ours)", "",
            "Their networks and data (FCNN on MNIST, VGG16 on CIFAR10, T5-base on RTE, BERT on SciTail) are not the ones "
            "above: our nearest counterparts are FCNN -> `fcnn-*`, VGG16 -> `vgg16-fmnist32` (width 0.125, Fashion-MNIST "
            "32x32), BERT -> `minilm-l6` (a 6-layer BERT-style sentence encoder, not fine-tuned on SciTail); the paper "
            "has no ResNet18 or T5 moment table counterpart here.", "",
            "| paper column | table | method | γ1 | γ2 | γ3 | PDB closest on γ2 / γ3 |", "|---|---|---|---|---|---|---|"]
    for col_name, tab in PAPER.items():
        emp = np.array(tab["empirical"])
        gaps = {k: np.abs(np.array(tab[k]) - emp) for k in ("PUB-BEMA", "PUB-Kernel", "PDB-PDBLS")}
        best = [gaps["PDB-PDBLS"][j] < min(gaps["PUB-BEMA"][j], gaps["PUB-Kernel"][j]) for j in (1, 2)]
        label = col_name
        for k in ("PUB-BEMA", "PUB-Kernel", "PDB-PDBLS", "empirical"):
            verdict = " / ".join("yes" if b else "no" for b in best) if k == "empirical" else ""
            out.append(f"| {label} | {tab['table'] if label else ''} | {k} | " + " | ".join(f"{x:.2f}" for x in tab[k]) + f" | {verdict} |")
            label = ""
    out.append("")

    out += ["## Per layer", ""]
    for net in nets:
        out += [f"### {net['network']}", "", net["description"] + ".", "",
                "| matrix | a x b | K PDB / BEMA / Ker | γ2 emp | γ2 BEMA / Ker / PDB | γ3 emp | γ3 BEMA / Ker / PDB "
                "| KS BEMA / Ker / PDB | status |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in net["layers"]:
            shape = "x".join(str(d) for d in r["matrix_shape"] or [])
            g = lambda key, j: _g(None if r.get(key) is None else r[key][j])  # noqa: E731
            status = "ok" if r["all_ok"] else "; ".join(
                f"{m}: {r.get(k)}" for m, k in (("PDB", "status"), ("BEMA", "status_bema"), ("Ker", "status_kernel")) if r.get(k) != "ok")
            out.append(f"| {r['short']} | {shape} | {r.get('K')} / {r.get('K_bema')} / {r.get('K_kernel')} | {g('moments_empirical', 1)} | "
                       + " / ".join(g(f"moments_{m}", 1) for m in METHODS) + f" | {g('moments_empirical', 2)} | "
                       + " / ".join(g(f"moments_{m}", 2) for m in METHODS) + " | "
                       + " / ".join(_g(r.get(f"ks_{m}")) for m in METHODS) + f" | {status} |")
        t = net["timings"]
        out += ["", "Timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items())
                + f" (run at {net['run_at']}; compilation included){_sources(net.get('sources'))}.", ""]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Files


def _atomic(path: Path, write: Callable[[str], Any]) -> Path:
    """Write ``path`` through a temporary sibling and :func:`os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return _atomic(path, write)


def source_state() -> dict[str, Any]:
    """Which pdbjax produced the numbers: the git commit and a hash of the package sources as they were read."""
    import hashlib
    import subprocess

    root = Path(pdbjax.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=root, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"git_commit": commit, "pdbjax_dirty": dirty, "pdbjax_sources_sha256": digest.hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--quick", action="store_true", help="at most 3 matrices per network, written to a scratch directory")
    parser.add_argument("--no-figures", action="store_true", help="skip the fitting figures")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: benchmarks/results, or a scratch directory with --quick)")
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.gettempdir()) / "pdbjax-moments-quick" if args.quick else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "moments.json", out / "moments.md"

    data: dict[str, Any] = {"networks": {}}
    if json_path.is_file():  # keep the networks not rerun now
        with open(json_path) as f:
            data = json.load(f)
    command = "python benchmarks/moments_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t_all = time.perf_counter()
    sources = source_state()  # read before the fits: the package may be edited while this runs
    for name in args.networks:
        print(f"[{name}] ...", flush=True)
        result = run_network(name, 3 if args.quick else None, not args.no_figures, out / "fitting")
        result["sources"] = sources
        data["networks"][name] = result
        print(f"[{name}] {result['aggregate']['n_matrices']} matrices, timings {result['timings']}", flush=True)
    data.update(
        command=command.strip(),
        written_at=datetime.datetime.now().isoformat(timespec="seconds"),
        aggregation=AGGREGATION,
        paper=PAPER,
        environment={"pdbjax": pdbjax.__version__, "jax": jax.__version__, "backend": jax.default_backend(),
                     "python": platform.python_version()},
        total_s=round(time.perf_counter() - t_all, 1),
    )
    _write_text(json_path, json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    _write_text(md_path, text)
    print(text)
    print(f"wrote {md_path} and {json_path} in {data['total_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
