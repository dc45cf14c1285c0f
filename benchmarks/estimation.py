r"""Benchmark of PDBLS estimation: one batched ``fit_pdb`` call against a per-matrix NumPy/SciPy loop.

Usage::

    python benchmarks/estimation.py            # 256 matrices 512 x 512, loop timed on 16
    python benchmarks/estimation.py --quick    # 32 matrices, loop timed on 4

What is measured (all in one run, printed with the device):

1. ``fit_pdb`` on the eigenvalues of ``B`` simulated PDB matrices in ONE batched call, after a warm-up
   call whose time (the compile) is reported separately; both modes:
   ``"scaled"`` (default: median normalisation, 13 starts) and ``"reference"`` (raw, 1 start).
   Baseline: the same algorithm written the reference code's way, one matrix at a time
   (``benchmarks/_reference.py``: EDA/EDB in a Python loop, ``scipy.optimize.curve_fit`` from the same
   starts, ``numpy.roots`` for the critical points and edges). The loop is timed on a subset and
   extrapolated linearly to ``B`` matrices (it has no batch effects). Target: >= 50x.
2. The fit time against the eigendecomposition that produces its input: ``eigenvalues()`` of the same
   ``B`` matrices, ``solver="gram"`` and ``"svd"``. Target: fit / eigendecomposition <= 0.25.

Each timed ``fit_pdb`` call is run ``--repeat`` times after the warm-up, ``eigenvalues`` ``--eig-repeat``
times after an ahead-of-time compile; medians are reported. On a shared
machine the wall-clock numbers move with the load, which is printed with the results.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if importlib.util.find_spec("pdbjax") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import _reference as ref  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pdbjax.estimate import _STARTS, eigenvalues, fit_pdb  # noqa: E402
from pdbjax.simulate import simulate  # noqa: E402
from pdbjax.spectral import PDB  # noqa: E402

N = P = 512
N_SPIKES = 3


def simulate_batch(batch: int, seed: int = 0) -> jax.Array:
    """``batch`` PDB matrices ``N x P``: t in [0.3, 0.8], sigma1_sq in [0.5, 2], ratio 2..8, 3 spikes."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.3, 0.8, batch)
    s1 = rng.uniform(0.5, 2.0, batch)
    s2 = s1 * rng.uniform(2.0, 8.0, batch)
    spikes = np.sort(rng.uniform(10.0, 40.0, (batch, N_SPIKES)), axis=1)[:, ::-1] * s2[:, None]
    draw = jax.jit(jax.vmap(lambda k, t, a, b, sp: simulate(k, N, P, PDB(t, a, b), sp)))
    keys = jax.random.split(jax.random.PRNGKey(seed), batch)
    return draw(keys, *(jnp.asarray(x, jnp.float32) for x in (t, s1, s2, spikes)))


class Clock:
    """Wall-clock and process CPU seconds (all threads) of a region."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def timed(fn, repeat: int, warm_up: bool = True):
    """(first-call wall seconds or None, median wall, median CPU seconds of ``repeat`` calls, last result)."""
    first = None
    if warm_up:
        with Clock() as c:
            jax.block_until_ready(fn())
        first = c.wall
    walls, cpus = [], []
    for _ in range(repeat):
        with Clock() as c:
            out = jax.block_until_ready(fn())
        walls.append(c.wall)
        cpus.append(c.cpu)
    return first, statistics.median(walls), statistics.median(cpus), out


def loop_seconds(lam: np.ndarray, n: int, scaled: bool) -> tuple[float, float]:
    """(wall, CPU) seconds per matrix of the reference-style NumPy/SciPy PDBLS over the first ``n`` spectra."""
    kw = dict(starts=_STARTS, scaled=True, penalty=False) if scaled else {}
    with Clock() as c:
        for x in lam[:n]:
            ref.pdbls(x, N, **kw)
    return c.wall / n, c.cpu / n


def device_line() -> str:
    dev = jax.devices()[0]
    load = ", load average %.1f / %.1f / %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return (
        f"device: {dev.platform} ({dev.device_kind}); jax {jax.__version__}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores visible{load}"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 matrices, loop on 4 (a smoke run)")
    ap.add_argument("--batch", type=int, default=None, help="number of matrices (default 256, quick 32)")
    ap.add_argument("--loop", type=int, default=None, help="matrices timed in the NumPy/SciPy loop (default 16, quick 4)")
    ap.add_argument("--repeat", type=int, default=None, help="timed repetitions of each JAX call (default 5, quick 2)")
    ap.add_argument("--eig-repeat", type=int, default=None, help="timed repetitions of eigenvalues() (default 1)")
    args = ap.parse_args(argv)
    batch = args.batch or (32 if args.quick else 256)
    n_loop = min(args.loop or (4 if args.quick else 16), batch)
    repeat = args.repeat or (2 if args.quick else 5)
    eig_repeat = args.eig_repeat or 1

    print(device_line())
    print(f"matrices: {batch} x ({N} x {P}), simulated PDB with {N_SPIKES} spikes; fit: median of {repeat} after a warm-up, "
          f"eigenvalues: median of {eig_repeat} after an ahead-of-time compile")
    W = jax.block_until_ready(simulate_batch(batch))

    eig = {}
    for solver in ("gram", "svd"):
        with Clock() as c:  # warm-up = ahead-of-time compile: the big batch runs only `eig_repeat` times
            compiled = jax.jit(lambda w, m=solver: eigenvalues(w, solver=m)).lower(W).compile()
        _, wall, cpu, out = timed(lambda: compiled(W), eig_repeat, warm_up=False)
        eig[solver] = (wall, cpu)
        print(f"eigenvalues(solver={solver!r}), one batched call: {wall:.3f} s wall, {cpu:.3f} s CPU "
              f"(compile {c.wall:.2f} s)")
        if solver == "gram":
            lam = np.asarray(out)

    rows = []
    for mode in ("scaled", "reference"):
        first, wall, cpu, fit = timed(lambda: fit_pdb(lam, N, mode=mode), repeat)
        loop_wall, loop_cpu = loop_seconds(lam, n_loop, scaled=mode == "scaled")
        rows.append((mode, first - wall, (wall, cpu), (loop_wall, loop_cpu), int(np.sum(np.asarray(fit.ok)))))

    print()
    print(f"| fit_pdb mode | starts | clock | compile (s) | batched fit (s) | loop per matrix (s) "
          f"| loop x {batch} (s, extrapolated from {n_loop}) | speed-up | fit / eig gram | fit / eig svd | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, compile_s, fit_t, loop_t, n_ok in rows:
        starts = len(_STARTS) if mode == "scaled" else 1
        for k, clock in enumerate(("wall", "CPU")):
            total = loop_t[k] * batch
            print(f"| {mode} | {starts} | {clock} | {compile_s:.2f} | {fit_t[k]:.4f} | {loop_t[k]:.4f} | {total:.2f} "
                  f"| {total / fit_t[k]:.0f}x | {fit_t[k] / eig['gram'][k]:.3f} | {fit_t[k] / eig['svd'][k]:.3f} "
                  f"| {n_ok}/{batch} |")
    print()
    print("targets: speed-up >= 50x; fit / eigendecomposition <= 0.25. 'compile' = first call minus a warm call (wall). "
          "CPU = process time over all threads (robust to a loaded machine). The loop is the same algorithm in "
          "NumPy/SciPy (curve_fit TRF from the same starts, np.roots edges), timed on "
          f"{n_loop} matrices and scaled linearly to {batch}.")


if __name__ == "__main__":
    main()
