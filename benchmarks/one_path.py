"""What the one decomposition path costs: analyze and compress against the bare batched SVD.

``compress`` takes its decisions from the values-only SVD (the numbers ``analyze`` reports, so every
rule keeps the same count in both) and rebuilds from the SVD with vectors: two decompositions. This
prints, for a stack of 8 PDB matrices 512 x 512 (steady state, best of 5, compile excluded):
``compress`` / bare SVD with vectors and ``analyze`` (no baselines) / bare values-only SVD, and writes
``benchmarks/results/one_path.md``.

    python benchmarks/one_path.py
"""

from __future__ import annotations

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


def best_of(f, n: int = 5) -> float:
    f()  # compile
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    W = np.stack([np.asarray(pdbjax.simulate(jax.random.PRNGKey(i), 512, 512, pdbjax.PDB(0.7, 1.0, 4.0), spikes=[80.0, 60.0]))
                  for i in range(8)])
    tree = {"w": W}
    vectors = jax.jit(lambda w: jnp.linalg.svd(w, full_matrices=False))
    values = jax.jit(lambda w: jnp.linalg.svd(w, compute_uv=False))
    t_vec = best_of(lambda: jax.block_until_ready(vectors(W)))
    t_val = best_of(lambda: jax.block_until_ready(values(W)))
    t_c = best_of(lambda: pdbjax.compress(tree, where="w", layer_axis=0))
    t_a = best_of(lambda: pdbjax.analyze(tree, where="w", layer_axis=0, baselines=False))
    load = os.getloadavg()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}, jax {jax.__version__}, {jax.devices()}"
    text = (f"# One decomposition path: cost against the bare SVD\n\nCommand: `python benchmarks/one_path.py`  \n"
            f"Machine: {machine}\n\n8 PDB matrices 512 x 512 in one stacked leaf, steady state, best of 5.\n\n"
            "| what | seconds | ratio |\n|---|---|---|\n"
            f"| bare batched SVD with vectors | {t_vec:.3f} | 1 |\n"
            f"| `compress` (values-only SVD + SVD with vectors + fit + filter) | {t_c:.3f} | {t_c / t_vec:.2f}x the SVD with vectors |\n"
            f"| bare batched values-only SVD | {t_val:.3f} | 1 |\n"
            f"| `analyze`, no baselines | {t_a:.3f} | {t_a / t_val:.2f}x the values-only SVD |\n")
    print(text)
    out = Path(__file__).parent / "results" / "one_path.md"
    atomic_write_text(out, text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
