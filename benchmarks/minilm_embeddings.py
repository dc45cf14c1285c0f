r"""How far compression moves all-MiniLM-L6-v2's sentence embeddings, against the share of storage kept.

Usage::

    python benchmarks/minilm_embeddings.py                 # 2,000 sentences, every setting (~15-25 min on 2 cores)
    python benchmarks/minilm_embeddings.py --quick         # 200 sentences, a few settings, written to a temp dir
    python benchmarks/minilm_embeddings.py --sentences 500 --out /tmp/minilm
    python benchmarks/minilm_embeddings.py --render benchmarks/results/minilm_embeddings.json  # .md/.png only

The model is :mod:`pdbjax.experiments.minilm` (all-MiniLM-L6-v2 rebuilt in Flax NNX from its
``model.safetensors``); the corpus is :func:`~pdbjax.experiments.minilm.sentences` ``(N, seed=0)``
(first sentences of the standard library's docstrings). For every setting the 36 attention and
feed-forward kernels (:data:`~pdbjax.experiments.minilm.COMPRESSIBLE`: 24 of 384 x 384, 6 of
384 x 1536, 6 of 1536 x 384; 10,616,832 entries) are compressed, the corpus is embedded again and
compared with the original embeddings by :func:`~pdbjax.experiments.minilm.agreement`:

* **mean cosine** between each sentence's compressed and original embedding;
* **top-1 agreement**: the share of sentences whose nearest neighbour in the corpus (itself excluded)
  is the same sentence before and after.

The x axis is the **kept share**: entries stored if every compressed matrix is kept as factors,
``sum_i min(keep_i (m_i + n_i), m_i n_i)`` over the 36 matrices (an untouched matrix counts densely,
``m_i n_i``), divided by 10,616,832 -- ``report.totals["lowrank_compression_ratio"]`` of
:func:`pdbjax.compress` when all 36 are selected. Only these matrices count: the embedding tables,
LayerNorms and biases (about 12.1 M of MiniLM's 22.7 M parameters) are never touched.

Settings (``--quick`` runs the ones marked q):

* ``pdb auto`` (q): ``compress(state, COMPRESSIBLE)``, the library default
  (rank rule ``pdbjax.DEFAULT_RANK``, ``"auto"``: ``"upper-bulk"`` on two bulks, a one-bulk matrix left as it
  is; spike shrinkage);
* ``pdb upper-bulk``, ``pdb spikes``, ``pdb spikes + optimal`` (shrink ``"optimal"``), ``pub-bema spikes``,
  ``pub-kernel spikes``: the other rules and estimators;
* ``svd @ pdb auto ranks`` (q) and ``svd @ pdb spikes ranks``: plain truncated SVD of each matrix
  to the keep count the PDB rule chose for that matrix (:func:`pdbjax.filter_matrix` ``(W, "svd",
  rank=keep_i)`` per matrix), so each pair stores exactly the same number of entries;
* ``svd uniform k=...`` for target shares ``s`` in 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9 (q: 0.1, 0.3) and
  at the kept share of each ``pdb`` row with spike shrinkage (q: the default's); the label gives the
  rank ``k`` every matrix keeps, the table the share it stores:
  ``compress(state, method="svd", rank=f)`` with one removed fraction ``f = 1 - 2 s / 3`` for all 36
  matrices (every matrix then keeps ``k = round(256 s)`` of its 384 singular values, and
  ``k (m + n)`` summed over the 36 shapes is ``k * 41472 = s * 10,616,832``);
* ``pdb budget b`` with shrink ``"none"`` and ``"optimal"``, ``b`` in the same five shares, **only if**
  the installed :func:`pdbjax.compress` accepts a ``budget=`` keyword (checked with
  :func:`inspect.signature` when the script runs; the .md says which);
* breakdown of the default (q): the ``pdb auto`` result applied to one group of matrices only
  (Q/K = attention query and key; V/O = attention value and output; FFN = intermediate and output),
  the others left dense, and the same for ``svd @ pdb auto ranks``. The PDB fit of a matrix does
  not depend on which other matrices are selected, so this equals ``compress(..., where=group)``.

Outputs (each written atomically, temporary file then ``os.replace``): ``minilm_embeddings.md`` (table,
exact command, machine line), ``.json`` (every number, per-matrix keep counts) and ``.png`` (mean cosine
and top-1 agreement against kept share) in ``--out`` (default ``benchmarks/results``; ``--quick``
without ``--out``: a new temporary directory).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if importlib.util.find_spec("pdbjax") is None:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_DIR))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import pdbjax  # noqa: E402
from pdbjax._atomic import atomic_write, atomic_write_text  # noqa: E402
from pdbjax.experiments import minilm  # noqa: E402
from pdbjax.tree import replace, select  # noqa: E402

STEM = "minilm_embeddings"
SHARES = (0.05, 0.1, 0.2, 0.3, 0.5)
QUICK_SHARES = (0.1, 0.3)
#: Further uniform-SVD shares (full run only) that show how much storage SVD needs to come close.
EXTRA_SHARES = (0.75, 0.9)
#: The three groups of the breakdown (regexes over the 36 names of COMPRESSIBLE).
GROUPS = {
    "Q/K": r"^encoder/layers/\d+/attention/(query|key)/kernel$",
    "V/O": r"^encoder/layers/\d+/attention/(value|output)/kernel$",
    "FFN": r"^encoder/layers/\d+/(intermediate|output)/kernel$",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# one setting = new state + per-matrix keep counts


def shapes_of(state: nnx.State) -> dict[str, tuple[int, int]]:
    """``{name: (m, n)}`` of the 36 compressible matrices, in tree order."""
    return {s.name: tuple(s.matrix_shape) for s in select(state, minilm.COMPRESSIBLE)}


def kept_share(keep: dict[str, int], shapes: dict[str, tuple[int, int]]) -> float:
    """Factored storage over dense entries of all 36 matrices; a matrix absent from ``keep`` counts densely."""
    dense = sum(m * n for m, n in shapes.values())
    stored = sum(min(keep[k] * (m + n), m * n) if k in keep else m * n for k, (m, n) in shapes.items())
    return stored / dense


def keeps_of(report: pdbjax.Report) -> tuple[dict[str, int], int]:
    """``({name: keep}, number of matrices left unchanged)`` from a :func:`pdbjax.compress` report."""
    keep = {r["name"]: int(r["keep"]) for r in report.rows}
    unchanged = sum(1 for r in report.rows if r.get("status") != "ok")
    return keep, unchanged


def svd_at(state: nnx.State, keep: dict[str, int]) -> nnx.State:
    """Truncated SVD of each named matrix to its own rank (``filter_matrix(W, "svd", rank=keep)``)."""
    updates = {}
    for sel in select(state, minilm.COMPRESSIBLE):
        if sel.name in keep:
            updates[sel.name], _ = pdbjax.filter_matrix(sel.value, "svd", rank=int(keep[sel.name]))
    return replace(state, updates)


def restrict(base: nnx.State, new: nnx.State, where: str) -> nnx.State:
    """``base`` with the matrices matching ``where`` taken from ``new``."""
    return replace(base, {s.name: s.value for s in select(new, where)})


def uniform_fraction(share: float) -> float:
    """Removed fraction ``f`` with which every matrix keeps ``round(256 share)`` of 384 values.

    With keep ``k`` for all 36 matrices the factored storage is ``k * (24 * 768 + 12 * 1920) = 41472 k``
    = ``k / 256`` of the 10,616,832 dense entries, so ``k = 256 s`` and ``f = 1 - k / 384 = 1 - 2 s / 3``.
    This holds up to ``k = 192`` (share 0.75); beyond it the 384 x 384 matrices are cheaper dense and
    count so, and the kept share falls short of ``s`` (``k = 230``: 0.83).
    """
    return 1.0 - 2.0 * share / 3.0


def has_budget() -> bool:
    return "budget" in inspect.signature(pdbjax.compress).parameters


# --------------------------------------------------------------------------------------------------
# the run


def run(n_sentences: int, quick: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    model = minilm.from_safetensors()
    state = nnx.state(model)
    shapes = shapes_of(state)
    corpus = minilm.sentences(n_sentences)
    t0 = time.perf_counter()
    e0 = minilm.encode(model, corpus)
    log(f"{len(shapes)} matrices, {n_sentences} sentences embedded in {time.perf_counter() - t0:.1f} s")

    results: list[dict[str, Any]] = []

    def measure(label: str, family: str, new_state: nnx.State, keep: dict[str, int], *, unchanged: int = 0,
                compress_s: float = 0.0, **extra: Any) -> None:
        t = time.perf_counter()
        e = minilm.encode(minilm.rebuild(model, new_state), corpus)
        encode_s = time.perf_counter() - t
        row = {"label": label, "family": family, **extra, **minilm.agreement(e0, e),
               "kept_share": kept_share(keep, shapes), "matrices": len(keep), "unchanged": unchanged,
               "compress_s": round(compress_s, 2), "encode_s": round(encode_s, 2), "keep": keep}
        results.append(row)
        log(f"{label:34s} share {row['kept_share']:.4f}  cos {row['mean_cosine']:.4f}  top1 {row['top1_agreement']:.4f}"
            f"  ({compress_s:.1f} s + {encode_s:.1f} s)")

    def compressed(method: str, **kw: Any) -> tuple[nnx.State, dict[str, int], int, float]:
        t = time.perf_counter()
        new, report = pdbjax.compress(state, minilm.COMPRESSIBLE, method=method, **kw)
        keep, unchanged = keeps_of(report)
        share = report.totals["lowrank_compression_ratio"]
        assert abs(share - kept_share(keep, shapes)) < 1e-12, (share, kept_share(keep, shapes))
        return new, keep, unchanged, time.perf_counter() - t

    def timed_svd_at(keep: dict[str, int]) -> tuple[nnx.State, float]:
        t = time.perf_counter()
        return svd_at(state, keep), time.perf_counter() - t

    # the default and its SVD twin, then the breakdown of both
    rule = pdbjax.DEFAULT_RANK
    pdb_state, pdb_keep, n_bad, dt = compressed("pdb")
    measure(f"pdb {rule} (default)", f"pdb {rule}", pdb_state, pdb_keep, unchanged=n_bad, compress_s=dt,
            method="pdb", rank=rule, shrink="spikes", scope="all")
    svd_state, dt = timed_svd_at(pdb_keep)
    measure(f"svd @ pdb {rule} ranks", "svd @ pdb ranks", svd_state, pdb_keep, compress_s=dt,
            method="svd", rank=f"per-matrix (pdb {rule})", shrink="none", scope="all")
    for group, where in GROUPS.items():
        names = {s.name for s in select(state, where)}
        sub = {k: v for k, v in pdb_keep.items() if k in names}
        measure(f"pdb {rule}, only {group}", "breakdown pdb", restrict(state, pdb_state, where), sub,
                method="pdb", rank=rule, shrink="spikes", scope=group)
        measure(f"svd @ pdb ranks, only {group}", "breakdown svd", restrict(state, svd_state, where), sub,
                method="svd", rank=f"per-matrix (pdb {rule})", shrink="none", scope=group)
    del pdb_state, svd_state

    if not quick:
        if rule != "upper-bulk":
            new, keep, n_bad, dt = compressed("pdb", rank="upper-bulk")
            measure("pdb upper-bulk", "pdb upper-bulk", new, keep, unchanged=n_bad, compress_s=dt,
                    method="pdb", rank="upper-bulk", shrink="spikes", scope="all")
            del new
        spikes_state, spikes_keep, n_bad, dt = compressed("pdb", rank="spikes")
        measure("pdb spikes", "pdb spikes", spikes_state, spikes_keep, unchanged=n_bad, compress_s=dt,
                method="pdb", rank="spikes", shrink="spikes", scope="all")
        del spikes_state
        new, dt = timed_svd_at(spikes_keep)
        measure("svd @ pdb spikes ranks", "svd @ pdb ranks", new, spikes_keep, compress_s=dt,
                method="svd", rank="per-matrix (pdb spikes)", shrink="none", scope="all")
        for label, family, method, rank, shrink in (
            ("pdb spikes + optimal shrink", "pdb spikes + optimal", "pdb", "spikes", "optimal"),
            ("pub-bema spikes", "pub-bema", "pub-bema", "spikes", None),
            ("pub-kernel spikes", "pub-kernel", "pub-kernel", "spikes", None),
        ):
            new, keep, n_bad, dt = compressed(method, rank=rank, shrink=shrink)
            measure(label, family, new, keep, unchanged=n_bad, compress_s=dt, method=method, rank=rank,
                    shrink=shrink or "spikes", scope="all")

    shares = QUICK_SHARES if quick else SHARES
    uniform = [("", s) for s in shares + (() if quick else EXTRA_SHARES)]
    uniform += [(f" (share of {r['label'].removesuffix(' (default)')})", r["kept_share"])
                for r in results if r["scope"] == "all" and r["method"] == "pdb" and r["shrink"] == "spikes"]
    for note, s in uniform:
        f = uniform_fraction(s)
        new, keep, n_bad, dt = compressed("svd", rank=f)
        label = f"svd uniform k={max(keep.values())}{note}"
        measure(label, "svd uniform", new, keep, unchanged=n_bad, compress_s=dt,
                method="svd", rank=f, shrink="none", scope="all", target=s)

    budget, budget_error = has_budget(), None
    if budget:
        try:  # the option is new: a failure here must not lose the rows above
            for shrink in ("none",) if quick else ("none", "optimal"):
                for b in shares:
                    new, keep, n_bad, dt = compressed("pdb", budget=b, shrink=shrink)
                    measure(f"pdb budget {b:g}, shrink {shrink}", f"pdb budget ({shrink})", new, keep,
                            unchanged=n_bad, compress_s=dt, method="pdb", rank=f"budget {b:g}", shrink=shrink,
                            scope="all", target=b)
        except Exception as err:  # noqa: BLE001 - recorded in the outputs
            budget_error = f"{type(err).__name__}: {err}"
            log(f"budget rows stopped: {budget_error}")
    else:
        log("pdbjax.compress has no budget= keyword: budget rows left out")

    return {
        "sentences": n_sentences,
        "quick": quick,
        "budget_available": budget,
        "budget_error": budget_error,
        "dense_entries": int(sum(m * n for m, n in shapes.values())),
        "model_params": minilm.param_count(model),
        "shapes": {k: list(v) for k, v in shapes.items()},
        "results": results,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


# --------------------------------------------------------------------------------------------------
# files


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    dev = jax.devices()[0]
    return (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, load average {load} (at start), "
            f"jax {jax.__version__} on {dev.platform}, numpy {np.__version__}")


def group_share(keep: dict[str, int], shapes: dict[str, list[int]], where: str) -> float:
    """Kept share of the matrices matching ``where`` alone (factored storage over their dense count)."""
    names = [n for n in shapes if re.search(where, n)]
    dense = sum(shapes[n][0] * shapes[n][1] for n in names)
    return sum(min(keep[n] * sum(shapes[n]), shapes[n][0] * shapes[n][1]) if n in keep else shapes[n][0] * shapes[n][1]
               for n in names) / dense


def storage_table(data: dict[str, Any]) -> list[str]:
    """Where each setting that compresses all 36 matrices spends its storage, and its deepest cut."""
    shapes = data["shapes"]
    lines = [
        "Where the storage goes (settings over all 36 matrices): kept share within each group, and the matrix "
        "that keeps the fewest singular values (of 384).",
        "",
        "| setting | Q/K | V/O | FFN | fewest kept |",
        "|---|---:|---:|---:|---|",
    ]
    for r in data["results"]:
        if r["scope"] != "all":
            continue
        groups = " | ".join(f"{group_share(r['keep'], shapes, w):.3f}" for w in GROUPS.values())
        name = min(r["keep"], key=lambda n: r["keep"][n])
        lines.append(f"| {r['label']} | {groups} | {r['keep'][name]} ({name.removeprefix('encoder/layers/')}) |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    rows = data["results"]
    lines = [
        "# MiniLM sentence embeddings after compression",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {data['machine']}  ",
        f"Date: {data['date']}; wall time {data['wall_s']:.0f} s; pdbjax {data['library']}",
        "",
        (f"all-MiniLM-L6-v2 ({data['model_params']:,} parameters), {data['sentences']:,} sentences "
        "(`pdbjax.experiments.minilm.sentences(n, seed=0)`). The 36 attention/FFN kernels "
        f"({data['dense_entries']:,} entries) are compressed; **kept share** = factored storage "
        "sum min(keep (m + n), m n) over those 36 matrices / their dense count (a matrix left dense counts "
        "m n). **cos** = mean cosine between compressed and original embeddings; **top-1** = share of "
        "sentences whose nearest neighbour in the corpus is unchanged. 1.0000 / 1.0000 is the uncompressed model."),
        "",
        "| setting | kept share | cos | top-1 | unchanged matrices | compress s | encode s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['kept_share']:.4f} | {r['mean_cosine']:.4f} | {r['top1_agreement']:.4f} "
                     f"| {r['unchanged']} | {r['compress_s']:.1f} | {r['encode_s']:.1f} |")
    lines += ["", *storage_table(data)]
    lines += [
        "",
        "Notes:",
        "",
        ("* `svd @ pdb ... ranks`: each matrix truncated (no shrinkage) to the keep count the PDB rule chose "
        "for it, so it stores exactly what the PDB row it is named after stores; the only difference is PDB's "
        "shrinkage of the kept singular values."),
        ("* `svd uniform k`: `compress(state, method=\"svd\", rank=1 - 2s/3)` for a target share s: every matrix keeps "
        "the same k = round(256 s) of its 384 singular values (above k = 192 the 384 x 384 matrices count densely)."),
        ("* `only Q/K`, `only V/O`, `only FFN`: the default's (or its SVD twin's) compressed matrices in that "
        "group only, the other matrices dense; kept share still over all 36."),
        "* Breakdown rows cost no compression time (they reuse the full run's matrices).",
    ]
    if data["budget_error"]:
        lines.append(f"* **Budget rows incomplete**: `compress(..., budget=)` failed: `{data['budget_error']}`.")
    if data["budget_available"]:
        lines.append("* `pdb budget b`: `compress(state, budget=b, shrink=...)` "
                     "(pdbjax.compress accepted `budget=` when this ran). Its kept share is the allocation "
                     "(`keep` of the report). With shrink `optimal` every component at or below the bulk edge "
                     "becomes 0, so whatever the budget only the spikes survive: those rows store less than "
                     "their share says, and their embeddings match `pdb spikes + optimal shrink`.")
    else:
        lines.append("* **No budget rows**: `pdbjax.compress` had no `budget=` keyword when this ran "
                     "(checked with `inspect.signature`); rerun once it lands.")
    return "\n".join(lines) + "\n"


MARKERS = {
    "pdb auto": ("o", "C0"),
    "pdb upper-bulk": ("h", "C0"),
    "pdb spikes": ("s", "C0"),
    "pdb spikes + optimal": ("D", "C0"),
    "pub-bema": ("^", "C2"),
    "pub-kernel": ("v", "C2"),
    "svd @ pdb ranks": ("x", "C1"),
    "svd uniform": ("+", "C1"),
    "pdb budget (none)": ("P", "C3"),
    "pdb budget (optimal)": ("*", "C3"),
    "breakdown pdb": ("o", "C4"),
    "breakdown svd": ("x", "C4"),
}


def figure(data: dict[str, Any]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    rows = data["results"]
    for ax, key, title in ((axes[0], "mean_cosine", "mean cosine to original embedding"),
                           (axes[1], "top1_agreement", "top-1 nearest-neighbour agreement")):
        for family, (marker, color) in MARKERS.items():
            pts = sorted((r["kept_share"], r[key], r["label"]) for r in rows if r["family"] == family)
            if not pts:
                continue
            xs, ys, labels = zip(*pts)
            line = "-" if family in ("svd uniform",) or family.startswith("pdb budget") else ""
            filled = marker not in ("x", "+")
            ax.plot(xs, ys, linestyle=line or "none", marker=marker, color=color, ms=8 if filled else 9,
                    mfc=color if filled and not family.startswith("breakdown") else "none", label=family)
            if family.startswith("breakdown"):
                for x, y, lab in zip(xs, ys, labels):
                    ax.annotate(lab.rsplit("only ", 1)[-1], (x, y), textcoords="offset points", xytext=(5, -3),
                                fontsize=7, color=color)
        ax.plot([1.0], [1.0], marker="*", color="k", ms=11, linestyle="none", label="dense (original)")
        ax.set_xlabel("kept share of the 36 matrices (factored storage / dense)")
        ax.set_title(title, fontsize=11)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"all-MiniLM-L6-v2, {data['sentences']:,} sentences: embeddings after compression", fontsize=12)
    fig.tight_layout()
    return fig


def library_text() -> str:
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], check=False, cwd=REPO_DIR, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    import hashlib

    dirty = git("status", "--porcelain", "--", "pdbjax")
    digest = hashlib.sha1()
    for path in sorted((REPO_DIR / "pdbjax").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return (f"{pdbjax.__version__} at git {git('rev-parse', '--short', 'HEAD')}"
            + (" + uncommitted changes" if dirty else "") + f", pdbjax/*.py sha1 {digest.hexdigest()[:12]}")


def write(data: dict[str, Any], out: Path, *, json_too: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if json_too:
        atomic_write_text(out / f"{STEM}.json", json.dumps(data, indent=1) + "\n")
    atomic_write_text(out / f"{STEM}.md", markdown(data))
    fig = figure(data)
    atomic_write(out / f"{STEM}.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"), overwrite=True)
    log(f"wrote {out / STEM}.{{{'md,json,png' if json_too else 'md,png'}}}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=None, help="corpus size (default 2000; --quick: 200)")
    ap.add_argument("--quick", action="store_true", help="200 sentences and a few settings, written to a temp dir")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results)")
    ap.add_argument("--render", type=Path, default=None, metavar="JSON",
                    help="only rewrite the .md and .png from a results .json of this script (no measurement)")
    args = ap.parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        write(data, args.out or args.render.parent, json_too=False)
        return 0
    n = args.sentences if args.sentences is not None else (200 if args.quick else 2000)
    out = args.out or (Path(tempfile.mkdtemp(prefix="minilm_embeddings_")) if args.quick else BENCH_DIR / "results")
    command = "python benchmarks/minilm_embeddings.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    machine = machine_line()
    log(machine)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = run(n, args.quick)
    write({"command": command.strip(), "machine": machine, "date": date, "library": library_text(), **data}, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
