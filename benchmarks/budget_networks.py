r"""Trained networks under a parameter budget: accuracy against the kept share, before and after recovery.

Usage::

    python benchmarks/budget_networks.py                      # the default runs and budgets (below)
    python benchmarks/budget_networks.py --experiments fcnn-fmnist --budgets 0.1 0.3
    python benchmarks/budget_networks.py --quick              # fcnn-mnist5k at noise 0, budgets 0.1 0.3, to a temp dir
    python benchmarks/budget_networks.py --from-json benchmarks/results/budget_networks.json
                                                              # re-write the table and the PNG without measuring
    python benchmarks/budget_networks.py --resume benchmarks/results/budget_networks.json
                                                              # measure only the runs that JSON lacks

For each trained run (``benchmarks/checkpoints``, ``results/train_summary.md``), each budget ``f`` (a
fraction of the dense count ``D = sum m n`` of the compressed matrices, stored as factors at
``keep (m + n)`` each) and each method, the network's compressed matrices become :class:`pdbjax.LowRank`
factors and the script records the achieved kept share, the test accuracy, and the test accuracy after
one epoch of fine-tuning the factored network (:func:`pdbjax.experiments.finetune.finetune`: gradients
to the factors, the stored count unchanged). Methods:

* ``pdb/none``, ``pdb/spikes``, ``pdb/optimal``: ``compress(method="pdb", budget=f, shrink=...,
  factored=True)``, the PDB allocation (components scored by ``s^2 / lambda_+`` of their own layer's PDB
  fit, greedy by score per stored parameter) with each shrinkage of the kept values. With ``"optimal"``
  only components above the noise edges are allocated, so the budget is an upper bound and may be
  underspent: the share column says what was spent.
* ``uniform``: every matrix keeps the same fraction ``phi`` of its ``p`` singular values (``floor(phi
  p_i)``, the largest ``phi`` whose storage fits ``floor(f D)``, ``benchmarks/budget.py``'s
  ``uniform_keeps``), plain truncated SVD (``filter_matrix(W, "svd", rank=k, factored=True)``).
* ``pub-bema``: ``compress(method="pub-bema", budget=f, factored=True)``, the same greedy with the
  Marchenko-Pastur (BEMA) fit's edge, its default shrinkage (``"spikes"``, the PUB spike map).

Compressed matrices: those of ``compression_curves.py`` (the FCNN hidden kernels; VGG16's hidden dense
kernel and its two deepest convs), and for ResNet18 (width 0.125) its four 3x3 convs of the last stage,
``blocks/6-7/conv1-2`` (``(288 or 576) x 64``), by the same rule: the earlier convs have ``p <= 32``
output channels, too few eigenvalues for a bulk fit. Conv kernels are viewed as ``(kh kw c_in, c_out)``.

Fine-tuning: :func:`pdbjax.experiments.finetune.recovery_config` of the run's own training recipe, one
epoch at the constant rate ``LR_SCALE`` = 0.1 x the recipe's final rate on balanced factors (why: the
comment at ``LR_SCALE``), the recipe's momentum and batch size,
seed 1, on the run's training set with the labels it was trained on (noisy for the noisy runs; for the
CNNs the seeded 10,000-image training subset they were trained on). Test accuracy on the full test split.
A setting whose factors equal an earlier one's (e.g. ``pdb/optimal`` when the budget exceeds what the
outliers take) is measured once.

Outputs (atomic writes, ``--out``, default ``benchmarks/results``): ``budget_networks.json`` (every
number), ``budget_networks.md`` (command, machine, commit, tables, target check, findings) and
``budget_networks.png`` (accuracy against kept share, one panel per run; solid before, dashed after
fine-tuning). The JSON is rewritten after every run, so an interrupted measurement keeps what it did.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from compression_curves import LAYERS, RESULTS_DIR, library_version, machine_line, noise_tag

SCHEMA = 1
BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)
# Budgets of the CNN runs (`--cnn-budgets`): a setting costs several FCNN settings of CPU time, so a
# shorter list here is the place to cut (stated in the report when it differs from the FCNN budgets).
CNN_BUDGETS = BUDGETS
DEFAULT_RUNS = (
    ("fcnn-fmnist", 0.0), ("fcnn-fmnist", 0.2), ("fcnn-fmnist", 0.4),
    ("vgg16-fmnist32", 0.0), ("resnet18-fmnist32", 0.0),
    ("fcnn-mnist5k", 0.0), ("fcnn-mnist5k", 0.2), ("fcnn-mnist5k", 0.4),
)
RESNET18_LAYERS = tuple(("blocks", b, c, "kernel") for b in (6, 7) for c in ("conv1", "conv2"))
METHODS = ("pdb/none", "pdb/spikes", "pdb/optimal", "uniform", "pub-bema")
COLORS = {"pdb/none": "tab:orange", "pdb/spikes": "tab:red", "pdb/optimal": "tab:purple",
          "uniform": "tab:gray", "pub-bema": "tab:blue"}
# Fine-tuning rate: 0.1 x the recipe's final rate, on balanced factors (finetune's default, see
# pdbjax.experiments.finetune.balance). In the unbalanced form (a = U S, b = V^T, compress's before it
# stored balanced factors) one SGD step moves W = a b by -lr (G V V^T + U S^2 U^T G), ~s^2 times the
# dense step along a component of singular value s (s ~ 10-30 here). Pilots (test accuracy after the
# epoch; not a tuning sweep): fcnn-mnist5k pdb/none f = 0.3, unbalanced: 0.949 -> 0.59 at 1x, 0.95 at
# 0.1x; fcnn-fmnist noise 0.2, pdb/none f = 0.05 (0.7005 before): 0.39 unbalanced at 0.1x, 0.81
# unbalanced at 0.01x, 0.84 balanced at 0.1x; uniform f = 0.1 (0.8317): 0.59 / 0.86 / 0.86.
LR_SCALE = 0.1


def log(msg: str) -> None:
    """Progress to stderr with a timestamp."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def layer_paths(name: str, model: Any) -> list[tuple[Any, ...]]:
    """State paths of the matrices compressed in run ``name`` (module docstring)."""
    from common import hidden_kernel_paths

    if name == "resnet18-fmnist32":
        return list(RESNET18_LAYERS)
    return list(LAYERS.get(name) or hidden_kernel_paths(model))


# ------------------------------------------------------------------------------------------------
# measurement


def uniform_factored(params: dict, sels: list, keeps: np.ndarray) -> dict:
    """``params`` with each selected matrix replaced by its rank-``k`` truncated SVD factors."""
    import jax

    import pdbjax
    from pdbjax.tree import path_name, to_matrices

    updates = {}
    for sel, k in zip(sels, keeps):
        (a, b), _ = pdbjax.filter_matrix(to_matrices(sel.value, sel)[0], "svd", rank=int(k), factored=True)
        r = max(int(k), 1)  # keep 0: one zero column, as compress stores it
        updates[sel.name] = pdbjax.LowRank(np.asarray(a)[:, :r].astype(sel.dtype), np.asarray(b)[:r].astype(sel.dtype))
    return jax.tree_util.tree_map_with_path(lambda path, x: updates.get(path_name(path), x), params)


def measure_run(name: str, noise: float, budgets: tuple[float, ...], methods: tuple[str, ...],
                lr_scale: float = LR_SCALE) -> dict:
    """Every (budget, method) setting of one trained run."""
    from budget import uniform_keeps
    from common import load_experiment, read_record
    from flax import nnx

    import pdbjax
    from pdbjax.experiments.finetune import dense_state, final_learning_rate, finetune, recovery_config
    from pdbjax.experiments.train import TrainConfig, accuracy_with_state
    from pdbjax.tree import select

    t_start = time.perf_counter()
    model, (x_train, y_train), (x_test, y_test) = load_experiment(name, noise)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    names = {"/".join(map(str, p)) for p in layer_paths(name, model)}
    where = lambda n, x: n in names  # noqa: E731
    sels = select(params, where)
    shapes = np.array([s.matrix_shape for s in sels])
    dense = int(np.sum(shapes[:, 0] * shapes[:, 1]))
    recipe = TrainConfig(**read_record(name, noise)["settings"]["config"])
    config = recovery_config(recipe, lr_scale)
    base = accuracy_with_state(graphdef, state, x_test, y_test)
    log(f"{name}@{noise:g}: base {base:.4f}, matrices {[(s.name, s.matrix_shape) for s in sels]}, dense {dense:,}; "
        f"fine-tune lr {config.learning_rate:.3g} momentum {config.momentum} batch {config.batch_size} on {len(x_train):,}")
    settings, memo = [], {}

    def setting(method: str, f: float) -> dict:
        t0 = time.perf_counter()
        if method == "uniform":
            keeps = uniform_keeps(shapes, math.floor(Fraction(f) * dense))
            factored = uniform_factored(params, sels, keeps)
            share = float(np.dot(keeps, shapes.sum(axis=1))) / dense
        else:
            family, _, shrink = method.partition("/")
            factored, report = pdbjax.compress(params, method=family, where=where, budget=f,
                                               shrink=shrink or None, factored=True)
            rows = {r["name"]: r for r in report.rows}
            keeps = np.array([int(rows[s.name]["keep"]) for s in sels])
            share = float(report.totals["budget_ratio"])
        compress_s = time.perf_counter() - t0
        stored = sum(int(np.size(leaf)) for s in sels for leaf in _leaf(factored, s.keys))
        key = (method, tuple(int(k) for k in keeps))
        reused = key in memo
        if not reused:
            acc = accuracy_with_state(graphdef, dense_state(state, factored), x_test, y_test)
            _, tuned, record = finetune(graphdef, state, factored, x_train, y_train, config)
            memo[key] = {"acc": acc, "acc_ft": accuracy_with_state(graphdef, tuned, x_test, y_test),
                         "ft_loss": record["loss"], "ft_seconds": record["seconds"]}
        return {"budget": f, "method": method, "keep": [int(k) for k in keeps], "share": share,
                "stored_share": stored / dense, **memo[key], "compress_seconds": compress_s, "reused": reused}

    for f in budgets:
        for method in methods:
            t0 = time.perf_counter()
            try:
                row = setting(method, f)
            except ValueError as error:  # e.g. a budget below what the matrices whose fit fails take alone
                log(f"  f={f:g} {method:12s} failed: {error}")
                settings.append({"budget": f, "method": method, "error": str(error)})
                continue
            row["seconds"] = time.perf_counter() - t0
            settings.append(row)
            log(f"  f={f:g} {method:12s} keep {row['keep']} share {row['share']:.3f}: acc {row['acc']:.4f} -> "
                f"{row['acc_ft']:.4f} after fine-tune{' (same factors as before)' if row['reused'] else ''} "
                f"({row['seconds']:.0f} s)")
    return {"experiment": name, "noise": noise, "run": f"{name}-noise{noise_tag(noise)}", "base_acc": base,
            "n_test": int(len(y_test)), "n_train": int(len(y_train)),
            "matrices": [{"name": s.name, "matrix": list(s.matrix_shape)} for s in sels], "dense": dense,
            "finetune": {"learning_rate": config.learning_rate, "momentum": config.momentum,
                         "batch_size": config.batch_size, "seed": config.seed, "epochs": 1,
                         "recipe_final_lr": final_learning_rate(recipe)},
            "budgets": list(budgets), "settings": settings, "seconds": time.perf_counter() - t_start}


def _leaf(tree: dict, keys: tuple) -> list:
    """The arrays stored at ``keys`` (two for a LowRank node, one for a dense leaf)."""
    import jax

    node = tree
    for k in keys:
        node = node[k]
    return jax.tree_util.tree_leaves(node)


# ------------------------------------------------------------------------------------------------
# report


def target_met(acc: float, base: float, noise: float) -> bool:
    """The paper's target: compressed >= base at 0% noise, > base under label noise."""
    return acc > base if noise > 0 else acc >= base


def _cell(run: dict, method: str, f: float) -> dict | None:
    return next((s for s in run["settings"] if s["method"] == method and s["budget"] == f and "error" not in s), None)


def table_run(run: dict) -> str:
    head = ["method"] + [f"f = {f:g}" for f in run["budgets"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        cells = [_cell(run, method, f) for f in run["budgets"]]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {method} | " + " | ".join(
            "-" if c is None else f"{c['acc']:.4f} / {c['acc_ft']:.4f} ({c['share']:.3f})" for c in cells) + " |")
    return "\n".join(lines)


def table_target(run: dict) -> str:
    head = ["method"] + [f"f = {f:g}" for f in run["budgets"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    yn = lambda ok: "yes" if ok else "no"  # noqa: E731
    for method in METHODS:
        cells = [_cell(run, method, f) for f in run["budgets"]]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {method} | " + " | ".join(
            "-" if c is None else f"{yn(target_met(c['acc'], run['base_acc'], run['noise']))} / "
            f"{yn(target_met(c['acc_ft'], run['base_acc'], run['noise']))}" for c in cells) + " |")
    return "\n".join(lines)


def findings(data: dict) -> list[str]:
    """Sentences computed from the numbers only."""
    out = []
    pdbs = [m for m in METHODS if m.startswith("pdb/")]
    for key, label in (("acc", "before"), ("acc_ft", "after")):
        wins_u, wins_p, total = 0, 0, 0
        for run in data["runs"]:
            for f in run["budgets"]:
                best = max((_cell(run, m, f)[key] for m in pdbs if _cell(run, m, f)), default=None)
                uni, pub = _cell(run, "uniform", f), _cell(run, "pub-bema", f)
                if best is None or uni is None or pub is None:
                    continue
                total += 1
                wins_u += best > uni[key]
                wins_p += best > pub[key]
        out.append(f"{label.capitalize()} fine-tuning, the best PDB allocation (over the three shrinkages) is more "
                   f"accurate than uniform truncation at {wins_u} of {total} (run, budget) pairs and than the PUB "
                   f"allocation at {wins_p} of {total}.")
    for m in METHODS:
        cells = [(run, c) for run in data["runs"] for c in run["settings"] if c["method"] == m and "error" not in c]
        if not cells:
            continue
        before = sum(target_met(c["acc"], r["base_acc"], r["noise"]) for r, c in cells)
        after = sum(target_met(c["acc_ft"], r["base_acc"], r["noise"]) for r, c in cells)
        gain = np.mean([c["acc_ft"] - c["acc"] for _, c in cells])
        out.append(f"`{m}` meets the paper's target at {before} of {len(cells)} settings before and {after} after "
                   f"fine-tuning; fine-tuning changes its accuracy by {100 * gain:+.2f} pp on average.")
    drops = []
    for run in data["runs"]:
        cells = [c for c in run["settings"] if "error" not in c]
        worse = sum(c["acc_ft"] < c["acc"] for c in cells)
        if cells and worse > len(cells) / 2:
            drops.append(f"{run['run']} ({worse} of {len(cells)})")
    if drops:
        out.append("Fine-tuning lowers the accuracy at most settings of " + ", ".join(drops) + ".")
    opt = [(run, c) for run in data["runs"] for c in run["settings"] if c["method"] == "pdb/optimal" and "error" not in c]
    under = [c for _, c in opt if c["share"] < 0.9 * c["budget"]]
    if opt:
        out.append(f"`pdb/optimal` spends less than 90% of the budget at {len(under)} of {len(opt)} settings "
                   f"(it allocates only components above the noise edges).")
    return out


def markdown(data: dict) -> str:
    s = data["settings"]
    parts = [
        "# Trained networks under a parameter budget, before and after one epoch of fine-tuning",
        "",
        f"Command: `{s['command']}`  ",
        f"Machine: {s['machine']}  ",
        f"Created: {data['created']}; git commit {s['library']['git_head']}"
        + (f" with {len(s['library']['modified'])} modified files in pdbjax/" if s["library"]["modified"] else "")
        + f"; total {s['seconds']:.0f} s.",
        *([f"Runs taken from the resumed JSON (measured by an earlier invocation with the same budgets and rate; "
           f"their own times are in their sections): {', '.join(s['resumed'])}."] if s.get("resumed") else []),
        "",
        "What is measured: see the docstring of `benchmarks/budget_networks.py`. Budget `f` = stored / dense "
        "parameters of the compressed matrices (factors `keep (m + n)` per matrix); the cell is "
        "`test accuracy / test accuracy after one epoch of fine-tuning the factors (achieved share)`. "
        "Fine-tuning: SGD with the recipe's momentum and batch size at a constant rate of "
        f"{s['lr_scale']:g} x the recipe's final rate, factors balanced first (`finetune`'s default), "
        "on the run's own training set and labels (noisy for "
        "the noisy runs; the CNNs' seeded 10,000-image subset). Target (the paper's): compressed >= base at 0% "
        "noise, > base under label noise; checked per budget, before / after fine-tuning.",
        "",
    ]
    for run in data["runs"]:
        ft = run["finetune"]
        parts += [
            f"## {run['experiment']}, label noise {run['noise']:g}",
            "",
            f"Base test accuracy {run['base_acc']:.4f} (n_test {run['n_test']:,}); compressed: "
            + ", ".join(f"`{m['name']}` {m['matrix'][0]}x{m['matrix'][1]}" for m in run["matrices"])
            + f" (dense {run['dense']:,}); fine-tune lr {ft['learning_rate']:.3g}, momentum {ft['momentum']:g}, "
            f"batch {ft['batch_size']}, {run['n_train']:,} training examples; {run['seconds']:.0f} s.",
            "",
            table_run(run),
            "",
            *[f"Failed: `{c['method']}` at f = {c['budget']:g}: {c['error']}  " for c in run["settings"] if "error" in c],
            "",
            "Target met (before / after fine-tuning):",
            "",
            table_target(run),
            "",
        ]
    parts += ["## Findings", "", " ".join(findings(data)), ""]
    if s.get("cut"):
        parts += ["## Cut", "", s["cut"], ""]
    return "\n".join(parts)


def plot(data: dict):
    import matplotlib.pyplot as plt

    runs = data["runs"]
    cols = min(4, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        for m in METHODS:
            cells = sorted((c for c in run["settings"] if c["method"] == m and "error" not in c), key=lambda c: c["share"])
            if not cells:
                continue
            x = [c["share"] for c in cells]
            ax.plot(x, [c["acc"] for c in cells], "o-", ms=3, color=COLORS[m], label=f"{m}")
            ax.plot(x, [c["acc_ft"] for c in cells], "s--", ms=3, color=COLORS[m], label=f"{m} + fine-tune")
        ax.axhline(run["base_acc"], color="k", lw=1, ls=":", label="base")
        accs = [c[k] for c in run["settings"] if "error" not in c for k in ("acc", "acc_ft")] + [run["base_acc"]]
        lo = max(min(accs), run["base_acc"] - 0.25)
        ax.set_ylim(lo - 0.01, max(accs) + 0.01)
        ax.set_title(f"{run['experiment']}, noise {run['noise']:g}", fontsize=10)
        ax.set_xlabel("kept share (stored / dense)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle("Accuracy against kept parameter share: solid = compressed, dashed = after one epoch of "
                 "fine-tuning the factors (axis cut 25 pp below the base)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig


def write_outputs(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdbjax._atomic import atomic_write, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "budget_networks.json", json.dumps(data, indent=1) + "\n")
    atomic_write_text(out / "budget_networks.md", markdown(data))
    if data["runs"]:
        fig = plot(data)
        atomic_write(out / "budget_networks.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=True)
        plt.close(fig)
    log(f"wrote {out / 'budget_networks.json'}, .md and .png ({len(data['runs'])} runs)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", choices=sorted({e for e, _ in DEFAULT_RUNS}), default=None,
                    help="experiments to run, each at its trained noise levels (default: all runs of DEFAULT_RUNS)")
    ap.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS), help="budgets f (default %(default)s)")
    ap.add_argument("--cnn-budgets", nargs="+", type=float, default=list(CNN_BUDGETS),
                    help="budgets for the CNN runs (default %(default)s, a cut for CPU time)")
    ap.add_argument("--quick", action="store_true", help="fcnn-mnist5k at noise 0, budgets 0.1 0.3, to a temp dir")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results)")
    ap.add_argument("--lr-scale", type=float, default=LR_SCALE,
                    help="fine-tuning rate as a multiple of the recipe's final rate (default %(default)s)")
    ap.add_argument("--resume", type=Path, default=None,
                    help="reuse the runs of this JSON measured with the same budgets and fine-tuning rate")
    ap.add_argument("--from-json", type=Path, default=None, help="re-write the md and png from this JSON, no measurement")
    args = ap.parse_args(argv)
    out = args.out or (Path(tempfile.gettempdir()) / "pdbjax-budget-networks-quick" if args.quick else RESULTS_DIR)
    if args.from_json:
        write_outputs(json.loads(args.from_json.read_text()), out)
        return 0
    if args.quick:
        runs, budgets, cnn_budgets = [("fcnn-mnist5k", 0.0)], (0.1, 0.3), (0.1, 0.3)
    else:
        runs = [r for r in DEFAULT_RUNS if args.experiments is None or r[0] in args.experiments]
        budgets, cnn_budgets = tuple(args.budgets), tuple(args.cnn_budgets)
    command = "python benchmarks/budget_networks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cut = (f"The CNN runs use budgets {', '.join(f'{f:g}' for f in cnn_budgets)} only (each setting costs about "
           "ten FCNN settings of CPU time on the shared 2-core machine).") if set(cnn_budgets) != set(budgets) else ""
    t0 = time.perf_counter()
    data: dict = {"schema": SCHEMA, "created": "", "settings": {}, "runs": []}
    done, resumed = {}, []
    if args.resume and args.resume.is_file():
        old = json.loads(args.resume.read_text())
        if old["settings"].get("lr_scale") == args.lr_scale:
            done = {(r["experiment"], r["noise"], tuple(r["budgets"])): r for r in old["runs"]}
    log(f"runs {runs}; {machine_line()}")
    for name, noise in runs:
        grid = cnn_budgets if name in ("vgg16-fmnist32", "resnet18-fmnist32") else budgets
        if (name, noise, grid) in done:
            log(f"{name}@{noise:g}: reused from {args.resume}")
            data["runs"].append(done[(name, noise, grid)])
            resumed.append(done[(name, noise, grid)]["run"])
        else:
            data["runs"].append(measure_run(name, noise, grid, METHODS, args.lr_scale))
        data["created"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        data["settings"] = {"command": command.strip(), "machine": machine_line(), "library": library_version(),
                            "methods": list(METHODS), "budgets": list(budgets), "cnn_budgets": list(cnn_budgets),
                            "lr_scale": args.lr_scale, "cut": cut, "resumed": resumed, "seconds": time.perf_counter() - t0}
        write_outputs(data, out)
    log(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
