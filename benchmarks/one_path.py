"""What the one decomposition path costs: analyze and compress against the bare batched SVD.

``compress`` takes its decisions from the values-only SVD (the numbers ``analyze`` reports, so every
rule keeps the same count in both) and rebuilds from the vectors of the Gram matrix
(``pdbjax.linalg.factors(W, via="gram")``): two decompositions. This prints, for two stacks of 8 PDB
matrices, 512 x 512 and 2048 x 512 (steady state, compile excluded): ``compress`` / the bare SVD with
vectors (what a user would otherwise run to truncate), the floor of compress's own two decompositions,
the Gram path / the SVD with vectors, ``compress(method="svd", rank=0.5)`` (a fixed rank, which needs
neither the values-only SVD nor a fit) / the SVD with vectors, and ``analyze`` (no baselines) / the bare values-only SVD; and
writes ``benchmarks/results/one_path.md``. The calls are timed in turn in each of ``--rounds`` rounds, so
a change of the machine's load touches numerator and denominator alike: the table gives the best time of
each and the median (and range) of the per-round ratios.

Then, on MiniLM-L6's 36 encoder matrices, ``compress`` rebuilt from the Gram vectors against the same
decisions rebuilt from the SVD with vectors: keeps, how far the outputs lie apart, approximation errors, times.

    python benchmarks/one_path.py --rounds 15
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import sys
import time
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import pdbjax
from pdbjax import filter as filter_module
from pdbjax import linalg
from pdbjax._atomic import atomic_write_text


def _time(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _workload(n: int, p: int, rounds: int) -> str:
    W = np.stack([np.asarray(pdbjax.simulate(jax.random.PRNGKey(i), n, p, pdbjax.PDB(0.7, 1.0, 4.0), spikes=[80.0, 60.0]))
                  for i in range(8)])
    tree = {"w": W}
    vectors = jax.jit(lambda w: jnp.linalg.svd(w, full_matrices=False))
    values = jax.jit(lambda w: jnp.linalg.svd(w, compute_uv=False))
    calls = {
        "vec": lambda: jax.block_until_ready(vectors(W)),
        "val": lambda: jax.block_until_ready(values(W)),
        "spectrum": lambda: jax.block_until_ready(linalg.spectrum(W)),
        "gram": lambda: jax.block_until_ready(linalg.factors(W, via="gram")),
        "compress": lambda: pdbjax.compress(tree, where="w", layer_axis=0),
        "fixed": lambda: pdbjax.compress(tree, where="w", layer_axis=0, method="svd", rank=0.5),
        "analyze": lambda: pdbjax.analyze(tree, where="w", layer_axis=0, baselines=False),
    }
    for f in calls.values():
        f()  # compile
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            times[name].append(_time(f))
    t = {name: np.array(v) for name, v in times.items()}
    best = {name: v.min() for name, v in t.items()}
    # compress's two decompositions: the sum of their best times, and of each round's.
    t["floor"], best["floor"] = t["spectrum"] + t["gram"], best["spectrum"] + best["gram"]

    def row(what: str, num: str, den: str | None) -> str:
        if den is None:
            return f"| {what} | {best[num]:.3f} | 1 | |\n"
        ratios = t[num] / t[den]
        spread = f"{np.median(ratios):.2f}x ({ratios.min():.2f}-{ratios.max():.2f})"
        return f"| {what} | {best[num]:.3f} | {best[num] / best[den]:.2f}x | {spread} |\n"

    text = (f"\n## 8 matrices {n} x {p}\n\n| what | best seconds | ratio of best times | ratio per round, median (min-max) |\n"
            "|---|---|---|---|\n"
            + row("bare batched SVD with vectors (`jnp.linalg.svd`)", "vec", None)
            + row("`compress`, its defaults (values-only SVD + Gram vectors + fit + filter) / SVD with vectors", "compress", "vec")
            + row("its two decompositions alone (`linalg.spectrum` + `linalg.factors(via=\"gram\")`) / SVD with vectors", "floor", "vec")
            + row("the Gram path alone (`linalg.factors(via=\"gram\")`) / SVD with vectors", "gram", "vec")
            + row("`compress(method=\"svd\", rank=0.5)` (a fixed rank: the Gram path alone, no values-only SVD, no fit) "
                  "/ SVD with vectors", "fixed", "vec")
            + row("bare batched values-only SVD (`jnp.linalg.svd(compute_uv=False)`)", "val", None)
            + row("`analyze`, no baselines / values-only SVD", "analyze", "val"))
    return text


MINILM_WHERE = (r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                r"intermediate\.dense|output\.dense)\.weight$")


def _minilm(rounds: int) -> str:
    """``compress`` of MiniLM-L6's 36 encoder matrices (its defaults) rebuilt from the Gram vectors against
    the same decisions rebuilt from LAPACK's SVD with vectors (``filter.factors`` swapped for the run)."""
    import pdbjax.io

    params = pdbjax.io.load(pdbjax.io.minilm_path())
    params = {k: v for k, v in params.items() if re.search(MINILM_WHERE, k)}
    svd_factors = lambda W, precision=None, via=None: linalg.factors(W, precision=precision, via="svd")  # noqa: E731
    runs = {"gram": contextlib.nullcontext, "svd": lambda: mock.patch.object(filter_module, "factors", svd_factors)}
    out, times = {}, {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, ctx in runs.items():
            with ctx():
                t0 = time.perf_counter()
                new, report = pdbjax.compress(params)
                jax.block_until_ready(new)
                if r:  # round 0 compiles
                    times[name].append(time.perf_counter() - t0)
            out[name] = (new, report)
    (g, rg), (v, rv) = out["gram"], out["svd"]
    same = sum(a["keep"] == b["keep"] for a, b in zip(rg.rows, rv.rows))
    moved, excess = [], []
    for name, W in params.items():
        W = np.asarray(W, np.float64)
        a, b = np.asarray(g[name], np.float64), np.asarray(v[name], np.float64)
        moved.append(np.linalg.norm(a - b) / np.linalg.norm(W))
        excess.append(np.linalg.norm(W - a) / np.linalg.norm(W - b) - 1)
    tg, tv = min(times["gram"]), min(times["svd"])
    return (f"\n## MiniLM-L6: `compress` rebuilt from the Gram vectors against the SVD's\n\n"
            f"The 36 encoder matrices, `pdbjax.compress(params)` with its defaults, {rounds} rounds alternating; the SVD "
            "run swaps `pdbjax.filter.factors` for `linalg.factors(via=\"svd\")` (the same decisions).\n\n"
            f"* keep counts identical: {same} of {len(rg.rows)}\n"
            f"* `||W_gram - W_svd||_F / ||W||_F`: max {max(moved):.1e}, median {np.median(moved):.1e}\n"
            f"* approximation error `||W - W_gram|| / ||W - W_svd|| - 1` (float64): {min(excess):.1e} to {max(excess):.1e}\n"
            f"* steady-state `compress`, best of {rounds}: Gram {tg:.2f} s, SVD {tv:.2f} s ({tg / tv:.2f}x)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--minilm-rounds", type=int, default=3, help="0 leaves MiniLM out")
    args = ap.parse_args()
    rounds = args.rounds
    tables = "".join(_workload(n, p, rounds) for n, p in ((512, 512), (2048, 512)))
    if args.minilm_rounds:
        tables += _minilm(args.minilm_rounds)
    load = os.getloadavg()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}, jax {jax.__version__}, {jax.devices()}"
    text = (f"# One decomposition path: cost against the bare SVD\n\nCommand: `python benchmarks/one_path.py --rounds {rounds}`  \n"
            f"Machine: {machine}\n\nStacks of 8 PDB matrices (one stacked leaf), steady state; the calls timed in "
            f"turn in each of {rounds} rounds: best time of each, the ratio of the best times, and the median (min-max) "
            "of the per-round ratios.\n" + tables)
    print(text)
    out = Path(__file__).parent / "results" / "one_path.md"
    atomic_write_text(out, text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
