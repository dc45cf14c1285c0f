r"""Compression curves: test accuracy against the removed fraction for PDB, PUB, naive SVD and SLR.

Usage::

    python benchmarks/compression_curves.py                 # FCNN on MNIST-5k and Fashion-MNIST at noise
                                                            # 0 / 0.2 / 0.4, and VGG16 at noise 0
    python benchmarks/compression_curves.py --experiments fcnn-mnist5k --noise 0 0.4
    python benchmarks/compression_curves.py --quick         # fcnn-mnist5k at noise 0, coarse grid, to a temp dir
    python benchmarks/compression_curves.py --from-json benchmarks/results/compression.json
                                                            # re-write the tables and PNGs without measuring

What is measured, per trained run (``benchmarks/checkpoints``, see ``results/train_summary.md``):

1. Every compressed matrix is fitted ONCE: ``eigenvalues`` (float64), ``fit_pdb`` (PDBLS) and
   ``fit_pub`` (BEMA and Kernel). The fits give the model-derived ranks (``keep_count``): PDB
   ``"spikes"`` (outliers above ``lambda_+``) and ``"upper-bulk"`` (outliers plus the bulk share of the
   larger-variance component), ``"auto"`` (``"upper-bulk"`` on two bulks, the layer left as it is on one),
   PUB-BEMA and PUB-Kernel ``"spikes"`` (their ``lambda_+``).
2. Curves: for each removed fraction ``f`` of the grid, the rank ``round((1 - f) p)`` is passed to
   ``filter_matrix`` as an ``int`` (one compilation serves the sweep) with the precomputed fit, for
   the methods ``pdb``, ``pub-bema`` (PUB), ``svd`` (naive truncation) and ``slr``
   (``sr = rr = 0.5``); test accuracy (``accuracy_with_state``, full test split, no recompilation)
   with each layer compressed alone and with all of them at once (each at the same ``f``). The
   reference code sweeps ``f`` in steps of ``1/p``; this grid is coarser (0.05 up to 0.9, then 0.01
   for the FCNNs; 0.1 / 0.05 for VGG16), see ``GRIDS``.
3. The accuracy table at each method's default rank: PDB with ``"spikes"``, ``"upper-bulk"`` and ``"auto"``,
   PUB-BEMA and PUB-Kernel with ``"spikes"``, and naive SVD and SLR at PDB's rank (matched rank, as the
   paper compares them), each layer alone and all at once.
4. The smallest rank on the grid at which each method's accuracy is within 0.1 pp of the base, and the
   evidence for the default rank rule of ``pdbjax.compress`` (PDB's accuracy change, all layers at
   once, for ``"spikes"``, ``"upper-bulk"``, ``"auto"`` and fixed removed fractions).

Outputs (each written atomically) in ``--out`` (default ``benchmarks/results``):
``compression.json`` (raw curves, fits, ranks, timings), ``compression.md`` (tables) and
``compression_<experiment>_noise<r>.png`` (accuracy against removed fraction, one panel per layer and
one for all layers; the second row zooms on the high-compression end).

The plotting and table functions need only NumPy and Matplotlib, so ``notebooks/compression.ipynb``
imports them without JAX; the measurement imports JAX, Flax and pdbjax when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = Path(os.environ.get("PDBJAX_RESULTS_DIR", BENCH_DIR / "results"))
sys.path.insert(0, str(BENCH_DIR))

SCHEMA = 1
SWEEP_METHODS = ("pdb", "pub-bema", "svd", "slr")
LABELS = {"pdb": "PDB", "pub-bema": "PUB (BEMA)", "pub-kernel": "PUB (Kernel)", "svd": "naive SVD", "slr": "SLR"}
COLORS = {"pdb": "tab:red", "pub-bema": "tab:blue", "svd": "tab:gray", "slr": "tab:green"}
TOLERANCE = 0.001  # "reaches the base accuracy": within 0.1 percentage points

# Removed-fraction grids, denser near 1 where the model-derived ranks lie (p = 512: 0.01 ~ 5 ranks). Each
# point costs one SVD per layer and method inside filter_matrix (~1 s for 784 x 512 on the loaded CPU) and,
# for VGG16, ~12 s per test-set evaluation, hence the coarser CNN grid.
FINE = (0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99, 1.0)
CNN = (0.4, 0.5, 0.6, 0.8, 0.9, 0.95, 1.0)
QUICK = (0.4, 0.6, 0.8, 0.9, 0.95, 1.0)

# The matrices compressed: None = the hidden kernels of the network (benchmarks.common.hidden_kernel_paths).
# VGG16 (width 0.125): the hidden dense kernel (64 x 64) and the two deepest 3x3 convs (576 x 64 after the
# (kh kw c_in, c_out) reshape); the earlier convs have p <= 32, too few eigenvalues for a bulk fit.
LAYERS: dict[str, tuple[tuple[Any, ...], ...] | None] = {
    "fcnn-mnist5k": None,
    "fcnn-fmnist": None,
    "vgg16-fmnist32": (("classifier", 0, "kernel"), ("convs", 11, "kernel"), ("convs", 12, "kernel")),
}
GRIDS = {"fcnn-mnist5k": FINE, "fcnn-fmnist": FINE, "vgg16-fmnist32": CNN}
DEFAULT_RUNS = (
    ("fcnn-mnist5k", 0.0), ("fcnn-mnist5k", 0.2), ("fcnn-mnist5k", 0.4),
    ("fcnn-fmnist", 0.0), ("fcnn-fmnist", 0.2), ("fcnn-fmnist", 0.4),
    ("vgg16-fmnist32", 0.0),
)

# The accuracy table at each method's default rank: (label, method, rank rule, fit the rule is evaluated with).
DEFAULT_CONFIGS = (
    ("PDB spikes", "pdb", "spikes", "pdb"),
    ("PDB upper-bulk", "pdb", "upper-bulk", "pdb"),
    ("PDB auto", "pdb", "auto", "pdb"),
    ("PUB-BEMA spikes", "pub-bema", "spikes", "bema"),
    ("PUB-Kernel spikes", "pub-kernel", "spikes", "kernel"),
    ("SVD @ PDB spikes", "svd", "spikes", "pdb"),
    ("SLR @ PDB spikes", "slr", "spikes", "pdb"),
    ("SVD @ PDB upper-bulk", "svd", "upper-bulk", "pdb"),
    ("SLR @ PDB upper-bulk", "slr", "upper-bulk", "pdb"),
    ("SVD @ PDB auto", "svd", "auto", "pdb"),
    ("SLR @ PDB auto", "slr", "auto", "pdb"),
)
# Candidates for the default rank rule of `compress` (PDB, all layers at once); fractions are read off the curve
# (they are on both grids).
RULE_CANDIDATES = ("spikes", "upper-bulk", "auto", 0.5, 0.6, 0.8, 0.9)
COLLAPSE = -0.03  # a default must not break a network: worst accuracy change over all runs above -3 pp


def noise_tag(noise: float) -> str:
    """``0.0 -> '0.0'``, ``0.2 -> '0.2'`` (as in ``benchmarks/common.py``)."""
    text = f"{noise:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def layer_name(path: tuple[Any, ...]) -> str:
    """``('layers', 0, 'kernel') -> 'layers/0/kernel'``."""
    return "/".join(str(part) for part in path)


# ------------------------------------------------------------------------------------------------
# measurement (imports JAX and pdbjax lazily, so the report half of this module stays light)


@dataclasses.dataclass
class Layer:
    """One compressed matrix of a run: the ``(m, n)`` matrix view, its fits and model-derived ranks."""

    path: tuple[Any, ...]
    shape: tuple[int, ...]  # the kernel's own shape (4-D for convs)
    matrix: np.ndarray  # (prod(shape[:-1]), shape[-1]) float32
    lam: Any  # float64 eigenvalues, descending
    fits: dict[str, Any]  # "pdb" / "bema" / "kernel", float64 in the units of the eigenvalues
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return layer_name(self.path)

    @property
    def p(self) -> int:
        return min(self.matrix.shape)


def fit_layer(path: tuple[Any, ...], kernel: np.ndarray) -> Layer:
    """Eigenvalues, PDB / PUB-BEMA / PUB-Kernel fits and the model-derived ranks of one kernel."""
    import jax.numpy as jnp

    import pdbjax
    from pdbjax.filter import estimate_fit, keep_counts, normalised_fit
    from pdbjax.linalg import raw_eigenvalues, spectrum

    kernel = np.asarray(kernel, np.float32)
    matrix = kernel.reshape(-1, kernel.shape[-1])
    N = max(matrix.shape)
    # The library's own path (as pdbjax.analyze): values-only SVD of the normalised matrix, float64 fits,
    # keep counts evaluated exactly as filter_matrix evaluates them.
    spec = spectrum(matrix)
    lam = raw_eigenvalues(spec)
    pdb, bema, kern = (estimate_fit(lam, N, m) for m in ("pdb", "pub-bema", "pub-kernel"))
    keep = {
        "pdb-spikes": keep_counts(spec, pdb, "spikes"),
        "pdb-upper-bulk": keep_counts(spec, pdb, "upper-bulk"),
        "pdb-auto": keep_counts(spec, pdb, "auto"),
        "pub-bema": keep_counts(spec, bema, "spikes"),
        "pub-kernel": keep_counts(spec, kern, "spikes"),
    }
    n_outliers = int(jnp.sum(pdbjax.outlier_mask(spec.s**2, normalised_fit(pdb, spec))))
    summary = {
        "name": layer_name(path),
        "shape": list(kernel.shape),
        "matrix": list(matrix.shape),
        "p": min(matrix.shape),
        "N": N,
        "pdb": {
            "ok": bool(pdb.ok), "status": pdbjax.reason_text(pdb.reason), "K": int(pdb.K), "t": float(pdb.t),
            "sigma1_sq": float(pdb.sigma1_sq), "sigma2_sq": float(pdb.sigma2_sq),
            "lambda_plus": float(pdb.lambda_plus), "bulks": int(pdb.bulks), "sphericity": float(pdb.sphericity),
            "edges": [float(e) for e in np.asarray(pdb.edges) if np.isfinite(e)],
            "n_outliers": n_outliers,
        },
        **{
            name: {"ok": bool(f.ok), "status": pdbjax.reason_text(f.reason), "K": int(f.K),
                   "sigma_sq": float(f.sigma_sq), "lambda_plus": float(f.lambda_plus),
                   "threshold": float(f.threshold)}
            for name, f in (("bema", bema), ("kernel", kern))
        },
        "keep": {k: int(v) for k, v in keep.items()},
        "lambda_max": float(lam[0]),
    }
    fits = {"pdb": pdb, "bema": bema, "kernel": kern}  # in W's units: filter_matrix normalises them itself
    return Layer(tuple(path), tuple(kernel.shape), matrix, lam, fits, summary)


FIT_OF_METHOD = {"pdb": "pdb", "pub-bema": "bema", "pub-kernel": "kernel", "svd": None, "slr": None}


def measure_run(name: str, noise: float, fractions: tuple[float, ...], methods: tuple[str, ...], log) -> dict:
    """All measurements of one trained run (see the module docstring)."""
    from common import hidden_kernel_paths, load_experiment
    from flax import nnx

    import pdbjax
    from pdbjax.experiments.train import accuracy_with_state, replace_arrays

    t_start = time.perf_counter()
    library = library_version()
    model, _, (x_test, y_test) = load_experiment(name, noise)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    paths = LAYERS.get(name) or hidden_kernel_paths(model)
    n_evals = 0
    memo: dict[tuple, float] = {}  # identical weights are evaluated once (e.g. rank 0 zeroes W for every method)

    def accuracy(replacements: dict) -> float:
        nonlocal n_evals
        key = tuple(sorted((layer_name(p), hashlib.sha1(np.ascontiguousarray(w)).hexdigest())
                           for p, w in replacements.items()))
        if key not in memo:
            n_evals += 1
            memo[key] = accuracy_with_state(graphdef, replace_arrays(state, replacements), x_test, y_test)
        return memo[key]

    base = accuracy({})
    t_load = time.perf_counter() - t_start
    log(f"  loaded, base test accuracy {base:.4f} on {len(y_test)} examples ({t_load:.1f} s)")

    t0 = time.perf_counter()
    layers = [fit_layer(path, flat[path].get_value()) for path in paths]
    t_fit = time.perf_counter() - t0
    for layer in layers:
        s = layer.summary
        log(f"  {layer.name} {s['matrix']}: PDB K0={s['pdb']['K']} t={s['pdb']['t']:.3f} "
            f"s1={s['pdb']['sigma1_sq']:.3g} s2={s['pdb']['sigma2_sq']:.3g} outliers={s['pdb']['n_outliers']}; "
            f"keep {s['keep']} [{s['pdb']['status']}]")
    log(f"  fits: {t_fit:.1f} s")

    def filtered(layer: Layer, method: str, rank: int) -> tuple[Any, Any]:
        fit_name = FIT_OF_METHOD[method]
        return pdbjax.filter_matrix(layer.matrix, method, rank, fit=layer.fits[fit_name] if fit_name else None)

    # Curves: one int rank per (layer, fraction), the same fraction for every layer in "all".
    t0 = time.perf_counter()
    ranks = {layer.name: [int(pdbjax.keep_count(layer.lam, None, f)) for f in fractions] for layer in layers}
    curves: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        curve = {layer.name: [] for layer in layers} | {"all": []}
        for i, _ in enumerate(fractions):
            together = {}
            for layer in layers:
                W, _ = filtered(layer, method, ranks[layer.name][i])
                W = np.asarray(W).reshape(layer.shape)
                together[layer.path] = W
                curve[layer.name].append(accuracy({layer.path: W}))
            curve["all"].append(accuracy(together))
        curves[method] = curve
        log(f"  curve {method}: all layers " + " ".join(f"{a:.3f}" for a in curve["all"])
            + f" ({time.perf_counter() - t0:.0f} s)")
    t_sweep = time.perf_counter() - t0

    # Accuracy at each method's default rank (rules compiled once per method, rule and shape).
    t0 = time.perf_counter()
    defaults = []
    for label, method, rule, fit_name in DEFAULT_CONFIGS:
        row = {"label": label, "method": method, "rule": rule, "rule_fit": fit_name,
               "keep": {}, "rel_change": {}, "ok": {}, "acc": {}}
        together = {}
        for layer in layers:
            W, info = pdbjax.filter_matrix(layer.matrix, method, rule, fit=layer.fits[fit_name])
            W = np.asarray(W).reshape(layer.shape)
            together[layer.path] = W
            row["keep"][layer.name] = int(info.keep)
            row["rel_change"][layer.name] = float(info.rel_change)
            row["ok"][layer.name] = bool(info.ok)
            row["acc"][layer.name] = accuracy({layer.path: W})
        row["acc"]["all"] = accuracy(together)
        defaults.append(row)
        log(f"  {label:22s} keep {list(row['keep'].values())}: all layers {row['acc']['all']:.4f} "
            f"(base {base:.4f})")
    t_defaults = time.perf_counter() - t0

    return {
        "experiment": name,
        "noise": noise,
        "run": f"{name}-noise{noise_tag(noise)}",
        "n_test": int(len(y_test)),
        "base_acc": base,
        "layers": [layer.summary for layer in layers],
        "fractions": list(fractions),
        "ranks": ranks,
        "curves": curves,
        "defaults": defaults,
        "library": library,
        "seconds": {"load_and_base": t_load, "fits": t_fit, "curves": t_sweep, "defaults": t_defaults,
                    "total": time.perf_counter() - t_start, "evaluations": n_evals},
    }


def verify_fits(data: dict, log) -> dict:
    """Re-fit every matrix of ``data`` with the installed pdbjax and compare with the stored fits (cheap:
    fits only). The curves depend on the library only through these fits and ``filter_matrix``."""
    from common import checkpoint_path

    keep_diff, status_diff, worst, n = [], [], 0.0, 0
    for run in data["runs"]:
        with np.load(checkpoint_path(run["experiment"], run["noise"])) as ckpt:
            for stored in run["layers"]:
                now = fit_layer(tuple(stored["name"].split("/")), ckpt[stored["name"]]).summary
                n += 1
                where = f"{run['run']} {stored['name']}"
                keep_diff += [f"{where} {k}: {v} -> {now['keep'][k]}" for k, v in stored["keep"].items() if now["keep"][k] != v]
                status_diff += [f"{where} {m}: {stored[m].get('status')} -> {now[m].get('status')}"
                                for m in ("pdb", "bema", "kernel") if stored[m].get("status") != now[m].get("status")]
                for m in ("pdb", "bema", "kernel"):
                    a, b = stored[m]["lambda_plus"], now[m]["lambda_plus"]
                    if np.isfinite(a) and np.isfinite(b):
                        worst = max(worst, abs(a - b) / abs(a))
    result = {"library": library_version(), "checked": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "matrices": n, "keep_mismatches": keep_diff, "status_mismatches": status_diff,
              "max_rel_lambda_plus_change": worst}
    log(f"re-fitted {n} matrices: {len(keep_diff)} keep-count and {len(status_diff)} status changes, "
        f"lambda_+ within {worst:.1e} relative")
    return result


# ------------------------------------------------------------------------------------------------
# derived numbers (pure Python on the JSON)


def min_rank_to_base(run: dict, method: str, layer: str, tol: float = TOLERANCE) -> int | None:
    """Smallest rank on the grid where ``layer`` compressed alone by ``method`` is within ``tol`` of base."""
    good = [r for r, a in zip(run["ranks"][layer], run["curves"][method][layer]) if a >= run["base_acc"] - tol]
    return min(good) if good else None


def max_fraction_to_base(run: dict, method: str, tol: float = TOLERANCE) -> float | None:
    """Largest removed fraction on the grid where all layers at once are within ``tol`` of base."""
    good = [f for f, a in zip(run["fractions"], run["curves"][method]["all"]) if a >= run["base_acc"] - tol]
    return max(good) if good else None


def default_row(run: dict, label: str) -> dict:
    return next(r for r in run["defaults"] if r["label"] == label)


def candidate(run: dict, rule) -> tuple[float | None, float | None]:
    """(PDB accuracy with all layers at once, kept share of the ranks) for a rule or removed fraction."""
    p_total = sum(layer["p"] for layer in run["layers"])
    if isinstance(rule, str):
        row = default_row(run, f"PDB {rule}")
        return row["acc"]["all"], sum(row["keep"].values()) / p_total
    for i, f in enumerate(run["fractions"]):
        if abs(f - rule) < 1e-9:
            return run["curves"]["pdb"]["all"][i], sum(r[i] for r in run["ranks"].values()) / p_total
    return None, None


def recommend(data: dict) -> dict:
    """The rule the measurements favour, and the per-rule evidence.

    Criteria, in order: (1) accuracy >= base at 0% noise in every run (the issue's target); (2) no
    collapse: the worst change over all runs above ``COLLAPSE``; (3) the largest mean change over all runs
    (clean and noisy alike); (4) the smallest kept share of the singular values.
    """
    evidence = {}
    for rule in RULE_CANDIDATES:
        clean, noisy, share = [], [], []
        for run in data["runs"]:
            acc, kept = candidate(run, rule)
            if acc is None:
                continue
            delta = acc - run["base_acc"]
            (clean if run["noise"] == 0 else noisy).append(delta)
            share.append(kept)
        if clean:
            evidence[str(rule)] = {
                "min_delta_clean": min(clean), "mean_delta_clean": float(np.mean(clean)),
                "mean_delta_noisy": float(np.mean(noisy)) if noisy else None,
                "min_delta_noisy": min(noisy) if noisy else None,
                "mean_kept_share": float(np.mean(share)), "clean_ok": min(clean) >= 0,
                "mean_delta_all": float(np.mean(clean + noisy)), "min_delta_all": min(clean + noisy),
            }
    def order(k: str) -> tuple:
        e = evidence[k]
        return (not e["clean_ok"], e["min_delta_all"] <= COLLAPSE, -e["mean_delta_all"], e["mean_kept_share"])

    ranked = sorted(evidence, key=order)
    return {"rule": ranked[0] if ranked else None, "evidence": evidence}


# ------------------------------------------------------------------------------------------------
# tables


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _library_text(run: dict) -> str:
    lib = run.get("library")
    if not lib:
        return "not recorded at measurement time"
    dirty = f", modified {', '.join(m.split()[-1] for m in lib['modified'])}" if lib["modified"] else ""
    return f"pdbjax {lib['version']} at git {lib['git_head']}{dirty} (sources sha1 {lib['sources_sha1'][:10]})"


def _verification_text(data: dict) -> str:
    v = data.get("verification")
    if not v:
        return ""
    lib = {"library": v["library"]}
    same = not v["keep_mismatches"] and not v["status_mismatches"]
    verdict = ("every rule's keep count and every fit status identical" if same else
               "DIFFERENCES: " + "; ".join(v["keep_mismatches"] + v["status_mismatches"]))
    return (f"\nFits re-checked on {v['checked']} with {_library_text(lib)} (`--verify-fits`): {v['matrices']} "
            f"matrices, {verdict}, lambda_+ within {v['max_rel_lambda_plus_change']:.0e} relative.")


def _ranks(row: dict) -> str:
    return "/".join(str(k) for k in row["keep"].values())


def table_fits(data: dict) -> str:
    rows = []
    for run in data["runs"]:
        for layer in run["layers"]:
            f, k = layer["pdb"], layer["keep"]
            rows.append([run["experiment"], run["noise"], layer["name"], "x".join(map(str, layer["matrix"])), f["K"],
                         f"{f['t']:.3f}", f"{f['sigma1_sq']:.3g}", f"{f['sigma2_sq']:.3g}", f"{f['lambda_plus']:.3g}",
                         f["n_outliers"], f["bulks"], k["pdb-spikes"], k["pdb-upper-bulk"], k["pdb-auto"], k["pub-bema"],
                         k["pub-kernel"], f["status"]])
    return _table(["experiment", "noise", "layer", "matrix", "K0", "t", "sigma1^2", "sigma2^2", "lambda_+",
                   "outliers", "bulks", "PDB spikes", "PDB upper-bulk", "PDB auto", "PUB-BEMA", "PUB-Kernel", "PDB fit"], rows)


def table_defaults(data: dict, scope: str = "all") -> str:
    """Accuracy at each method's default rank; ``scope="all"``: all layers at once, ``"layers"``: each alone."""
    labels = [c[0] for c in DEFAULT_CONFIGS]
    rows = []
    for run in data["runs"]:
        names = ["all"] if scope == "all" else [layer["name"] for layer in run["layers"]]
        for name in names:
            cells = []
            for label in labels:
                row = default_row(run, label)
                acc = row["acc"][name]
                ranks = _ranks(row) if name == "all" else row["keep"][name]
                cells.append(f"{acc:.4f} ({ranks})")
            lead = [run["experiment"], run["noise"]] + ([] if scope == "all" else [name])
            rows.append(lead + [f"{run['base_acc']:.4f}"] + cells)
    head = ["experiment", "noise"] + ([] if scope == "all" else ["layer"]) + ["Base"] + labels
    return _table(head, rows)


def table_paper(data: dict, rule: str) -> str:
    """The paper's table: Base, PDB, PUB, SLR, naive SVD (all layers at once; SLR and SVD at PDB's rank)."""
    rows = []
    for run in data["runs"]:
        pdb = default_row(run, f"PDB {rule}")
        cells = [default_row(run, label) for label in
                 (f"PDB {rule}", "PUB-BEMA spikes", "PUB-Kernel spikes", f"SLR @ PDB {rule}", f"SVD @ PDB {rule}")]
        rows.append([run["experiment"], run["noise"], f"{run['base_acc']:.4f}"]
                    + [f"{c['acc']['all']:.4f}" for c in cells] + [_ranks(pdb), _ranks(cells[1]), _ranks(cells[2])])
    return _table(["experiment", "noise", "Base", f"PDB ({rule})", "PUB (BEMA)", "PUB (Kernel)", "SLR", "naive SVD",
                   "ranks PDB", "ranks BEMA", "ranks Kernel"], rows)


def table_best(data: dict) -> str:
    """Best accuracy over the removed-fraction grid, all layers at once (selected on the test set: optimistic)."""
    rows = []
    for run in data["runs"]:
        cells = []
        for m in SWEEP_METHODS:
            acc = np.asarray(run["curves"][m]["all"])
            i = int(np.argmax(acc))
            cells.append(f"{acc[i]:.4f} @ {run['fractions'][i]:g}")
        rows.append([run["experiment"], run["noise"], f"{run['base_acc']:.4f}"] + cells)
    return _table(["experiment", "noise", "Base"] + [LABELS[m] for m in SWEEP_METHODS], rows)


def table_min_rank(data: dict) -> str:
    rows = []
    for run in data["runs"]:
        for layer in run["layers"]:
            cells = [min_rank_to_base(run, m, layer["name"]) for m in SWEEP_METHODS]
            rows.append([run["experiment"], run["noise"], layer["name"], layer["p"]]
                        + ["-" if c is None else c for c in cells]
                        + [layer["keep"]["pdb-spikes"], layer["keep"]["pdb-upper-bulk"], layer["keep"]["pub-bema"]])
        fr = [max_fraction_to_base(run, m) for m in SWEEP_METHODS]
        rows.append([run["experiment"], run["noise"], "all (max removed fraction)", "-"]
                    + ["-" if f is None else f"{f:.2f}" for f in fr] + ["", "", ""])
    return _table(["experiment", "noise", "layer", "p"] + [LABELS[m] for m in SWEEP_METHODS]
                  + ["PDB spikes rank", "PDB upper-bulk rank", "PUB-BEMA rank"], rows)


def table_evidence(data: dict) -> str:
    rows = []
    for run in data["runs"]:
        cells = []
        for rule in RULE_CANDIDATES:
            acc, kept = candidate(run, rule)
            cells.append("-" if acc is None else f"{_pp(acc - run['base_acc'])} ({100 * kept:.1f}%)")
        rows.append([run["experiment"], run["noise"], f"{run['base_acc']:.4f}"] + cells)
    rec = recommend(data)["evidence"]
    for key, title in (("min_delta_clean", "min at 0% noise"), ("mean_delta_clean", "mean at 0% noise"),
                       ("mean_delta_noisy", "mean under noise"), ("min_delta_noisy", "min under noise"),
                       ("min_delta_all", "min over all runs"), ("mean_delta_all", "mean over all runs")):
        rows.append([f"**{title}**", "", ""] + [_pp(rec[str(r)][key]) if str(r) in rec else "-" for r in RULE_CANDIDATES])
    rows.append(["**mean kept share**", "", ""]
                + [f"{100 * rec[str(r)]['mean_kept_share']:.1f}%" if str(r) in rec else "-" for r in RULE_CANDIDATES])
    head = ["experiment", "noise", "Base"] + [f"`{r}`" if isinstance(r, str) else f"remove {r}" for r in RULE_CANDIDATES]
    return _table(head, rows)


def targets(data: dict, rule: str) -> list[str]:
    """Plain statements on the issue's targets, from the numbers."""
    out = []
    for run in data["runs"]:
        pdb = default_row(run, f"PDB {rule}")
        bema = default_row(run, "PUB-BEMA spikes")
        d = pdb["acc"]["all"] - run["base_acc"]
        what = "at or above the base" if d >= 0 else "below the base"
        if run["noise"] > 0:
            what = "improves on the base" if d > 0 else ("equals the base" if d == 0 else "is below the base")
        out.append(f"- {run['run']}: PDB `{rule}` (ranks {_ranks(pdb)}) {what}: {pdb['acc']['all']:.4f} vs "
                   f"{run['base_acc']:.4f} ({_pp(d)} pp); PUB-BEMA (ranks {_ranks(bema)}) {bema['acc']['all']:.4f} "
                   f"({_pp(bema['acc']['all'] - run['base_acc'])} pp).")
    lower = equal = higher = 0
    for run in data["runs"]:
        for layer in run["layers"]:
            a, b = min_rank_to_base(run, "pdb", layer["name"]), min_rank_to_base(run, "pub-bema", layer["name"])
            if a is None or b is None:
                continue
            lower += a < b
            equal += a == b
            higher += a > b
    out.append(f"- Smallest grid rank within 0.1 pp of the base, layer alone, PDB vs PUB-BEMA: PDB lower in {lower}, "
               f"equal in {equal}, higher in {higher} of {lower + equal + higher} layers (table above). At one rank the "
               "two differ only in how the outliers are shrunk, so equal minimal ranks are expected on a grid.")
    wins = total = 0
    for run in data["runs"]:
        for r in ("spikes", "upper-bulk", "auto"):
            wins += default_row(run, f"SVD @ PDB {r}")["acc"]["all"] >= default_row(run, f"PDB {r}")["acc"]["all"]
            total += 1
    gaps = [np.mean(np.asarray(run["curves"]["pdb"]["all"]) - np.asarray(run["curves"]["svd"]["all"]))
            for run in data["runs"]]
    out.append(f"- Spike shrinkage (Algorithm 2, step 2) against plain truncation at the same rank: naive SVD >= PDB in "
               f"{wins} of {total} default-rank comparisons (all layers); PDB - SVD along the all-layer curves, mean "
               "over the grid per run: " + ", ".join(f"{run['run']} {_pp(g)} pp" for run, g in zip(data["runs"], gaps)) + ".")
    return out


def markdown(data: dict) -> str:
    rule = data["settings"]["table_rule"]
    rec = recommend(data)
    s = data["settings"]
    timing = [[r["run"], r["n_test"], f"{r['seconds']['fits']:.0f}", f"{r['seconds']['curves']:.0f}",
               f"{r['seconds']['defaults']:.0f}", r["seconds"]["evaluations"], f"{r['seconds']['total']:.0f}"]
              for r in data["runs"]]
    grids = sorted({tuple(r["fractions"]) for r in data["runs"]})
    parts = [
        "# Compression curves: PDB, PUB, naive SVD and SLR",
        "",
        f"Written by `benchmarks/compression_curves.py` (`{s['command']}`) on {data['created']}; raw curves in "
        "`compression.json`, plots in `compression_<experiment>_noise<r>.png`. "
        f"Machine: {s['machine']}. Library: " + "; ".join(sorted({_library_text(r) for r in data["runs"]})) + ".",
        _verification_text(data),
        "",
        "Each matrix is fitted once (float64 eigenvalues, `fit_pdb`, `fit_pub` BEMA and Kernel); the curves pass "
        "`rank = round((1 - f) p)` as an `int` to `filter_matrix` with that fit, so only the number of kept "
        "components changes along a curve. PDB and PUB also replace the outliers by their population spikes "
        "(Algorithm 2); naive SVD truncates; SLR truncates and sparsifies half of the rows/columns of the "
        "factors to half the rank (`sr = rr = 0.5`). Test accuracy is on the full test split "
        "(`n_test` below). \"All layers\" compresses every listed layer at once at the same removed fraction "
        "(at the default rank: each layer at its own rule rank). Removed-fraction grids (the reference code "
        "steps by 1/p; these are coarser): "
        + "; ".join("[" + ", ".join(f"{f:g}" for f in g) + "]" for g in grids) + ".",
        "",
        "## Accuracy at each method's default rank (paper's table)",
        "",
        f"All layers at once. PDB with the rule `{rule}` (the default of `pdbjax.compress` when this file was "
        "written), PUB with the `spikes` rule of its own fit (its `lambda_+ = sigma^2 (1 + sqrt c)^2`), SLR and "
        "naive SVD at PDB's rank (matched rank, as the paper compares them). Ranks are per layer, in the order "
        "of the fit table.",
        "",
        table_paper(data, rule),
        "",
        "## All default-rank configurations, all layers at once (accuracy, ranks kept per layer)",
        "",
        table_defaults(data, "all"),
        "",
        "## The same, each layer compressed alone (accuracy, rank kept)",
        "",
        table_defaults(data, "layers"),
        "",
        "## Best accuracy on the curve, all layers at once",
        "",
        "The highest accuracy over the removed-fraction grid and where it is reached. The fraction is chosen on "
        "the test set, so this is an optimistic figure (no validation split), shown because the paper reports "
        "accuracy along such sweeps.",
        "",
        table_best(data),
        "",
        "## Smallest rank reaching the base accuracy (within 0.1 pp), on the grid",
        "",
        "Per layer compressed alone: the smallest grid rank whose accuracy is >= base - 0.1 pp (accuracy is not "
        "monotone in the rank, so larger ranks can dip below). Last row per run: the largest removed fraction with "
        "all layers at once within 0.1 pp of the base. On MNIST-5k 0.1 pp is one test example.",
        "",
        table_min_rank(data),
        "",
        "## Choosing the default rank rule of `compress`",
        "",
        "PDB, all layers at once: accuracy change against the base in percentage points, and in parentheses the "
        "share of the singular values kept (sum of ranks / sum of p). `spikes`, `upper-bulk` and `auto` are "
        "per-layer rules (`auto` counts a layer it leaves as it is at its full p); `remove f` is a fixed "
        "removed fraction read off the PDB curve.",
        "",
        table_evidence(data),
        "",
        f"Measured choice: **`{rec['rule']}`**. Criteria, in order: (1) accuracy >= base at 0% noise in every run "
        f"(the target; met by: {', '.join(f'`{k}`' for k, e in rec['evidence'].items() if e['clean_ok']) or 'none'}); "
        f"(2) no collapse, worst change over all runs above {100 * COLLAPSE:+.0f} pp (met by: "
        f"{', '.join(f'`{k}`' for k, e in rec['evidence'].items() if e['min_delta_all'] > COLLAPSE) or 'none'}); "
        "(3) the largest mean change over all runs; (4) the smallest kept share.",
        "",
        "## Targets",
        "",
        *targets(data, rule),
        "",
        "## Fits (one per matrix) and the ranks each rule keeps",
        "",
        table_fits(data),
        "",
        "## Timings (seconds, wall clock, shared CPU)",
        "",
        _table(["run", "n_test", "fits", "curves", "default ranks", "evaluations", "total"], timing),
        "",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# plots


def plot_run(run: dict):
    """Accuracy against removed fraction, one column per layer plus one for all layers; the second row
    zooms on the high-compression end. Returns the Matplotlib figure."""
    import matplotlib.pyplot as plt

    names = [layer["name"] for layer in run["layers"]] + ["all"]
    fr = np.asarray(run["fractions"])
    base = run["base_acc"]
    zoom_lo = 0.9 if np.sum(fr >= 0.9) >= 5 else 0.8
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.2), squeeze=False)
    methods = [m for m in SWEEP_METHODS if m in run["curves"]]
    for j, name in enumerate(names):
        for i, ax in enumerate(axes[:, j]):
            for m in methods:
                acc = np.asarray(run["curves"][m][name])
                ax.plot(fr, acc, "o-", ms=3, lw=1.4, color=COLORS[m], label=LABELS[m], alpha=0.9)
            ax.axhline(base, color="k", lw=1, ls="--", label=f"base {base:.4f}")
            if name != "all":
                layer = next(candidate for candidate in run["layers"] if candidate["name"] == name)
                marks = (("pdb-spikes", "tab:red", ":", "PDB spikes"), ("pdb-upper-bulk", "tab:red", "-.", "PDB upper-bulk"),
                         ("pub-bema", "tab:blue", ":", "PUB-BEMA spikes"))
                for key, color, ls, label in marks:
                    ax.axvline(1 - layer["keep"][key] / layer["p"], color=color, ls=ls, lw=1, label=label)
                title = f"{name} ({'x'.join(map(str, layer['matrix']))}) alone"
            else:
                title = "all layers at once"
            curves = np.stack([np.asarray(run["curves"][m][name]) for m in methods])
            if i == 0:  # whole range, accuracy axis close to the base: the small differences between methods
                top = max(curves.max(), base)
                ax.set_ylim(base - max(0.03, 1.5 * (top - base)), top + 0.004)
                ax.set_xlim(fr.min() - 0.01, 1.005)
                ax.set_title(title, fontsize=10)
            else:  # high-compression end, accuracy axis down to the worst point short of rank 0 (chance)
                sel = (fr >= zoom_lo - 1e-9) & (fr < 1.0 - 1e-9)
                lo = curves[:, sel].min() if sel.any() else base - 0.05
                ax.set_ylim(max(0.0, min(lo, base - 0.01) - 0.01), max(curves.max(), base) + 0.005)
                ax.set_xlim(zoom_lo - 0.005, 1.003)
                ax.set_title(f"zoom: removed fraction >= {zoom_lo:g}", fontsize=10)
                ax.set_xlabel("removed fraction of singular values")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("test accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"{run['experiment']}, label noise {run['noise']:g}: test accuracy after compression "
                 f"(n_test = {run['n_test']}; accuracy axes cut near the base, rank 0 = chance)", fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


# ------------------------------------------------------------------------------------------------
# files


def png_name(run: dict) -> str:
    return f"compression_{run['experiment']}_noise{noise_tag(run['noise'])}.png"


def write_outputs(data: dict, out: Path, log) -> None:
    """``compression.json``, ``compression.md`` and one PNG per run, each written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdbjax._atomic import atomic_write, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compression.json", json.dumps(data, indent=1) + "\n")
    atomic_write_text(out / "compression.md", markdown(data))
    for run in data["runs"]:
        fig = plot_run(run)
        atomic_write(out / png_name(run), lambda tmp, fig=fig: fig.savefig(tmp, dpi=110), overwrite=True)
        plt.close(fig)
    log(f"wrote {out / 'compression.json'}, {out / 'compression.md'} and {len(data['runs'])} PNGs")


def library_version() -> dict:
    """The pdbjax source the measurements ran on: git HEAD, modified files, and a hash of pdbjax/*.py."""
    import subprocess

    import pdbjax

    src = Path(pdbjax.__file__).resolve().parent
    digest = hashlib.sha1()
    for path in sorted(src.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"version": pdbjax.__version__, "git_head": git("rev-parse", "--short", "HEAD"),
            "modified": git("status", "--porcelain", "--", ".").splitlines(), "sources_sha1": digest.hexdigest()}


def machine_line() -> str:
    import jax

    dev = jax.devices()[0]
    load = "load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{dev.platform} ({dev.device_kind}), jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} CPU cores, {load}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=None, choices=sorted(GRIDS),
                    help="experiments to run (default: the FCNNs at noise 0/0.2/0.4 and VGG16 at 0)")
    ap.add_argument("--noise", nargs="+", type=float, default=None, help="noise levels (default: every trained one)")
    ap.add_argument("--quick", action="store_true",
                    help="fcnn-mnist5k at noise 0 on a 6-point grid, written to a temp dir unless --out is given")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory of per-run JSON files: finished runs are reused, new ones added")
    ap.add_argument("--from-json", type=Path, default=None, help="re-write tables and PNGs from this JSON, no measurement")
    ap.add_argument("--defaults-only", action="store_true",
                    help="re-measure only the accuracy table at the default ranks (no curves) and compare it with "
                         "the stored compression.json in compression_defaults.md")
    ap.add_argument("--verify-fits", action="store_true",
                    help="with --from-json: re-fit every matrix with the installed pdbjax and record the comparison")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    out = args.out or (Path(tempfile.gettempdir()) / "pdbjax-compression-quick" if args.quick else RESULTS_DIR)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        data["settings"]["rule_candidates"] = list(RULE_CANDIDATES)
        if args.verify_fits:
            data["verification"] = verify_fits(data, log)
        write_outputs(data, out, log)
        return 0

    import pdbjax

    if args.quick:
        runs = [("fcnn-mnist5k", 0.0)]
    else:
        runs = [r for r in DEFAULT_RUNS
                if (args.experiments is None or r[0] in args.experiments) and (args.noise is None or r[1] in args.noise)]
        if args.experiments and args.noise:  # explicit runs beyond the default list (e.g. a new checkpoint)
            runs += [(e, n) for e in args.experiments for n in args.noise if (e, n) not in runs]
    if not runs:
        raise SystemExit("no runs selected")
    log(f"runs: {', '.join(f'{e}@{n:g}' for e, n in runs)}; {machine_line()}")
    t0 = time.perf_counter()
    if args.defaults_only:
        return defaults_only(runs, out, argv, log)
    results = []
    for name, noise in runs:
        fractions = QUICK if args.quick else GRIDS[name]
        cached = args.cache / f"{name}-noise{noise_tag(noise)}.json" if args.cache else None
        if cached and cached.is_file():
            run = json.loads(cached.read_text())
            if run.get("fractions") == list(fractions) and set(run["curves"]) == set(SWEEP_METHODS):
                log(f"{run['run']}: from {cached}")
                results.append(run)
                continue
        log(f"{name} at noise {noise:g}:")
        run = measure_run(name, noise, fractions, SWEEP_METHODS, log)
        log(f"  done in {run['seconds']['total']:.0f} s ({run['seconds']['evaluations']} evaluations)")
        if cached:
            from pdbjax._atomic import atomic_write_text

            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cached, json.dumps(run) + "\n")
        results.append(run)
    command = "python benchmarks/compression_curves.py" + ("" if argv is None and len(sys.argv) < 2 else
                                                           " " + " ".join(sys.argv[1:] if argv is None else argv))
    data = {
        "schema": SCHEMA,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {
            "command": command,
            "machine": machine_line(),
            "pdbjax": pdbjax.__version__,
            "methods": list(SWEEP_METHODS),
            "defaults": [list(c) for c in DEFAULT_CONFIGS],
            "rule_candidates": list(RULE_CANDIDATES),
            "table_rule": pdbjax.DEFAULT_RANK,
            "tolerance": TOLERANCE,
            "slr": {"sr": 0.5, "rr": 0.5},
            "seconds": time.perf_counter() - t0,
        },
        "runs": results,
    }
    write_outputs(data, out, log)
    rec = recommend(data)
    log(f"measured choice of the default rank rule: {rec['rule']}")
    log(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def defaults_only(runs: list[tuple[str, float]], out: Path, argv: list[str] | None, log) -> int:
    """Re-measure the accuracy table at the default ranks with the installed pdbjax and write it beside the
    stored one (``compression.json``): ``compression_defaults.md`` / ``.json``."""
    from pdbjax._atomic import atomic_write_text

    stored = {r["run"]: r for r in json.loads((RESULTS_DIR / "compression.json").read_text())["runs"]}
    t0 = time.perf_counter()
    now = []
    for name, noise in runs:
        log(f"{name} at noise {noise:g}:")
        now.append(measure_run(name, noise, (), (), log))
    command = "python benchmarks/compression_curves.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    for run in now:
        old = stored.get(run["run"])
        for label in ("PDB auto", "PDB upper-bulk", "PDB spikes", "PUB-BEMA spikes", "SVD @ PDB auto"):
            new_row = default_row(run, label)
            old_row = default_row(old, label) if old else None
            rows.append([run["run"], label, f"{run['base_acc']:.4f}",
                         f"{old_row['acc']['all']:.4f}" if old_row else "-", f"{new_row['acc']['all']:.4f}",
                         _ranks(old_row) if old_row else "-", _ranks(new_row),
                         "/".join(str(layer["pdb"]["bulks"]) for layer in run["layers"])])
    text = (f"# Accuracy at the default ranks: stored table vs the installed pdbjax\n\nCommand: `{command.strip()}`  \n"
            f"Machine: {machine_line()}  \nStored: `benchmarks/results/compression.json` (before); now: this run. "
            f"All hidden layers compressed at once.\n\n"
            + _table(["run", "method @ rule", "Base", "acc before", "acc now", "ranks before", "ranks now", "bulks now"], rows)
            + f"\n\nTotal {time.perf_counter() - t0:.0f} s.\n")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compression_defaults.md", text)
    atomic_write_text(out / "compression_defaults.json", json.dumps({"command": command.strip(), "runs": now}, indent=1) + "\n")
    log(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
