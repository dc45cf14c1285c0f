r"""float32 against float64: the ranks, fits and times of ``pdbjax.analyze`` in each working precision.

Since this benchmark's commit the decomposition AND the fits run in the working precision
(``precision="float32"``, the default on every backend, or ``"float64"`` on request), on the normalised
spectra of ``W / scale`` (:func:`pdbjax.filter.fit_spectrum`). Before, the fits always ran in float64 on
the host. This script checks what the switch costs in agreement and what it gains in time:

* for every matrix of each model, in both precisions: the status, ``K``, the bulk count, every keep
  count ``analyze`` reports (``rank_kept``: ``spikes``, ``upper-bulk``, ``pub-bema``, ``pub-kernel``),
  and the relative difference of ``lambda_plus``;
* where a keep count differs, the number that was rounded: ``upper-bulk`` keeps
  ``k + round(w (p - k))`` (``w`` the larger-variance share, ``k`` the outliers), so the table shows
  ``w (p - k)`` in both precisions: a difference is legitimate only when that number sits within the
  fits' float32 error of a rounding boundary ``n + 1/2``;
* times, each precision in its own fresh process without a persistent compilation cache: the first
  ``analyze`` call (tracing and compiling included) and the best of two warm calls.

Models: MiniLM-L6's 36 encoder matrices (``pdbjax.io.minilm_path()``), the demo's simulated PDB model, and
the trained networks in ``benchmarks/checkpoints`` when present (``python benchmarks/train_models.py
--all`` writes them).

    python benchmarks/precision.py            # all models
    python benchmarks/precision.py --quick    # simulated + MiniLM only

Writes ``benchmarks/results/precision.md`` and ``precision.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pdbjax._atomic import atomic_write_text  # noqa: E402

MINILM_WHERE = (r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                r"intermediate\.dense|output\.dense)\.weight$")
CHECKPOINTS = ["fcnn-fmnist-noise0.0", "fcnn-fmnist-noise0.2", "fcnn-fmnist-noise0.4", "fcnn-mnist5k-noise0.0",
               "vgg16-fmnist32-noise0.0", "resnet18-fmnist32-noise0.0"]

_CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_compilation_cache", False)
import pdbjax
from pdbjax import io
from pdbjax.report import to_jsonable
model, precision, where = sys.argv[1], sys.argv[2], sys.argv[3] or None
if model == "minilm":
    params = io.load(io.minilm_path(), lazy=True)
elif model == "simulated":
    from pdbjax.experiments.demo import simulated_model
    params = simulated_model()
else:
    params = io.load(model)
start = time.perf_counter()
report = pdbjax.analyze(params, where, precision=precision)
first = time.perf_counter() - start
warm = []
for _ in range(2):
    start = time.perf_counter()
    pdbjax.analyze(params, where, precision=precision)
    warm.append(time.perf_counter() - start)
print(json.dumps({"first_s": first, "warm_s": min(warm), "rows": to_jsonable(report.rows)}))
"""


def run(model: str, precision: str, where: str | None) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, model, precision, where or ""], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{model} {precision}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounded_share(row: dict) -> float | None:
    """``w (p - k)``, the number ``upper-bulk`` rounds (None for a one-bulk or failed fit)."""
    if row.get("status") != "ok" or row.get("bulks") != 2:
        return None
    w = row["t"] if row["sigma1_sq"] > row["sigma2_sq"] else 1 - row["t"]
    return w * (row["p"] - row["n_outliers"])


def compare(r32: list[dict], r64: list[dict]) -> dict:
    keys = sorted({k for row in r64 for k in (row.get("rank_kept") or {})})
    same = {k: 0 for k in keys}
    counted = 0
    status_diff, k_diff, bulks_diff, rank_diffs, rel = [], [], [], [], []
    for a, b in zip(r32, r64):
        assert a["name"] == b["name"]
        if a["status"] != b["status"]:
            status_diff.append((a["name"], a["status"], b["status"]))
            continue
        if b["status"] != "ok":
            continue
        counted += 1
        if a["K"] != b["K"]:
            k_diff.append((a["name"], a["K"], b["K"]))
        if a["bulks"] != b["bulks"]:
            bulks_diff.append((a["name"], a["bulks"], b["bulks"]))
        rel.append(abs(a["lambda_plus"] / b["lambda_plus"] - 1))
        for k in keys:
            if a["rank_kept"][k] == b["rank_kept"][k]:
                same[k] += 1
            else:
                rank_diffs.append({"name": a["name"], "rule": k, "float32": a["rank_kept"][k], "float64": b["rank_kept"][k],
                                   "share32": rounded_share(a), "share64": rounded_share(b)})
    rel = np.asarray(rel)
    return {"matrices": len(r64), "ok_both": counted, "same_rank": same, "status_diff": status_diff, "K_diff": k_diff,
            "bulks_diff": bulks_diff, "rank_diffs": rank_diffs,
            "lambda_plus_rel_median": float(np.median(rel)) if rel.size else None,
            "lambda_plus_rel_max": float(np.max(rel)) if rel.size else None}


def markdown(data: dict) -> str:
    lines = ["# float32 against float64: ranks, fits and times of `analyze`", "",
             f"Written by `{data['command']}` at {data['when']} on commit {data['commit']}.", "",
             f"Machine: {data['machine']}. Each precision ran in its own fresh process without a persistent "
             "compilation cache; `first` is the first `analyze` call (tracing and XLA compilation included), "
             "`warm` the best of the next two. Since this commit the fits run in the working precision on the "
             "normalised spectra (`pdbjax.filter.fit_spectrum`); before, they always ran in float64 on the host "
             "(the float64 rows are that behaviour, plus a float64 SVD).", "",
             "| model | matrices | ok in both | same status | same K | same bulks | same keep (spikes / upper-bulk / "
             "pub-bema / pub-kernel) | lambda_plus rel. diff median / max | first f32 / f64 (s) | warm f32 / f64 (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in data["models"].items():
        c = m["compare"]
        n = c["ok_both"]
        keep = " / ".join(f"{c['same_rank'].get(k, 0)}/{n}" for k in ("spikes", "upper-bulk", "pub-bema", "pub-kernel"))
        lines.append(
            f"| {name} | {c['matrices']} | {n} | {c['matrices'] - len(c['status_diff'])}/{c['matrices']} | "
            f"{n - len(c['K_diff'])}/{n} | {n - len(c['bulks_diff'])}/{n} | {keep} | "
            f"{c['lambda_plus_rel_median']:.1e} / {c['lambda_plus_rel_max']:.1e} | "
            f"{m['float32']['first_s']:.1f} / {m['float64']['first_s']:.1f} | "
            f"{m['float32']['warm_s']:.2f} / {m['float64']['warm_s']:.2f} |")
    diffs = [(name, d) for name, m in data["models"].items() for d in m["compare"]["rank_diffs"]]
    lines += ["", "## Keep counts that differ", ""]
    if not diffs:
        lines.append("None.")
    else:
        lines += ["`share` is `w (p - k)`, the number `upper-bulk` rounds, in each precision.", "",
                  "| model | matrix | rule | float32 | float64 | share f32 | share f64 |", "|---|---|---|---|---|---|---|"]
        for name, d in diffs:
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"| {name} | {d['name']} | {d['rule']} | {d['float32']} | {d['float64']} | "
                         f"{fmt(d['share32'])} | {fmt(d['share64'])} |")
    other = [(name, kind, x) for name, m in data["models"].items() for kind in ("status_diff", "K_diff", "bulks_diff")
             for x in m["compare"][kind]]
    lines += ["", "## Status, K or bulk count that differ", ""]
    lines += [f"* {name}: {kind} {x}" for name, kind, x in other] or ["None."]
    total = sum(m["compare"]["ok_both"] * 4 for m in data["models"].values())
    lines += ["", f"Keep counts compared: {total} ({len(diffs)} differ)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the simulated model and MiniLM only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    models = {"simulated": ("simulated", None), "minilm": ("minilm", MINILM_WHERE)}
    if not args.quick:
        for name in CHECKPOINTS:
            path = ROOT / "benchmarks" / "checkpoints" / f"{name}.npz"
            if path.exists():
                models[name] = (str(path), None)
    data = {"command": "python benchmarks/precision.py" + (" --quick" if args.quick else ""),
            "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip(),
            "machine": f"{platform.machine()}, {platform.python_version()}, {len(os.sched_getaffinity(0))} cores",
            "models": {}}
    for name, (model, where) in models.items():
        res = {p: run(model, p, where) for p in ("float32", "float64")}
        data["models"][name] = {p: {k: v for k, v in r.items() if k != "rows"} for p, r in res.items()}
        data["models"][name]["compare"] = compare(res["float32"]["rows"], res["float64"]["rows"])
        print(f"{name}: {json.dumps(data['models'][name]['compare'], default=str)[:400]}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "precision.json", json.dumps(data, indent=1, default=str))
    atomic_write_text(args.out / "precision.md", markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
