"""What the one decomposition path costs: analyze and compress against the bare batched SVD.

``compress`` takes its decisions from the values-only SVD (the numbers ``analyze`` reports, so every
rule keeps the same count in both) and rebuilds from the SVD with vectors: two decompositions. This
prints, for a stack of 8 PDB matrices 512 x 512 (steady state, compile excluded):
``compress`` / bare SVD with vectors (and the floor of its two decompositions) and ``analyze`` (no
baselines) / bare values-only SVD, and writes
``benchmarks/results/one_path.md``. The four calls are timed in turn in each of ``--rounds`` rounds, so a
change of the machine's load touches numerator and denominator alike: the table gives the best time of
each and the median (and range) of the per-round ratios.

    python benchmarks/one_path.py --rounds 15
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pdbjax
from pdbjax._atomic import atomic_write_text


def _time(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    rounds = ap.parse_args().rounds
    W = np.stack([np.asarray(pdbjax.simulate(jax.random.PRNGKey(i), 512, 512, pdbjax.PDB(0.7, 1.0, 4.0), spikes=[80.0, 60.0]))
                  for i in range(8)])
    tree = {"w": W}
    vectors = jax.jit(lambda w: jnp.linalg.svd(w, full_matrices=False))
    values = jax.jit(lambda w: jnp.linalg.svd(w, compute_uv=False))
    calls = {
        "vec": lambda: jax.block_until_ready(vectors(W)),
        "val": lambda: jax.block_until_ready(values(W)),
        "compress": lambda: pdbjax.compress(tree, where="w", layer_axis=0),
        "analyze": lambda: pdbjax.analyze(tree, where="w", layer_axis=0, baselines=False),
    }
    for f in calls.values():
        f()  # compile
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            times[name].append(_time(f))
    t = {name: np.array(v) for name, v in times.items()}
    ratio_c, ratio_a = t["compress"] / t["vec"], t["analyze"] / t["val"]

    def summary(r: np.ndarray) -> str:
        return f"{np.median(r):.2f}x ({r.min():.2f}-{r.max():.2f})"

    load = os.getloadavg()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}, jax {jax.__version__}, {jax.devices()}"
    text = (f"# One decomposition path: cost against the bare SVD\n\nCommand: `python benchmarks/one_path.py --rounds {rounds}`  \n"
            f"Machine: {machine}\n\n8 PDB matrices 512 x 512 in one stacked leaf, steady state; the four calls timed in "
            f"turn in each of {rounds} rounds: best time of each, the ratio of the best times, and the median (min-max) "
            "of the per-round ratios.\n\n"
            "| what | best seconds | ratio of best times | ratio per round |\n|---|---|---|---|\n"
            f"| bare batched SVD with vectors | {t['vec'].min():.3f} | 1 | 1 |\n"
            f"| `compress` (values-only SVD + SVD with vectors + fit + filter) | {t['compress'].min():.3f} | "
            f"{t['compress'].min() / t['vec'].min():.2f}x | {summary(ratio_c)} the SVD with vectors |\n"
            f"| the two decompositions alone (values-only + with vectors) | {t['val'].min() + t['vec'].min():.3f} | "
            f"{(t['val'].min() + t['vec'].min()) / t['vec'].min():.2f}x | |\n"
            f"| bare batched values-only SVD | {t['val'].min():.3f} | 1 | 1 |\n"
            f"| `analyze`, no baselines | {t['analyze'].min():.3f} | {t['analyze'].min() / t['val'].min():.2f}x | "
            f"{summary(ratio_a)} the values-only SVD |\n")
    print(text)
    out = Path(__file__).parent / "results" / "one_path.md"
    atomic_write_text(out, text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
