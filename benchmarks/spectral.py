r"""Benchmark of the spectral core: one batched, jitted ``density`` call against a NumPy loop.

Usage::

    python benchmarks/spectral.py            # 1024 populations x 4096 points, NumPy timed on 32
    python benchmarks/spectral.py --quick    # 32 populations x 512 points, NumPy timed on 4

What is measured (float64, in one run, printed with the device):

* ``pdbjax.spectral.density`` on ``B`` random PDB populations ``(t, sigma1_sq, sigma2_sq, c)``, each on
  its own grid of ``n`` points spanning its support, in ONE ``jax.jit`` call (fields of shape ``(B, 1)``
  against points ``(B, n)``). The ahead-of-time compile is timed separately; the run time is the median
  of ``--repeat`` calls after a warm-up call, inputs already on the device, output left there.
* The same algorithm in plain NumPy (damped fixed point at height ``max(s1, s2)``, then 32 geometric
  continuation stages of 3 guarded Newton steps down to ``eta = 1e-8 max(s1, s2)``, as documented in
  ``pdbjax.spectral.stieltjes``), vectorised over the ``n`` points of one population and looping in
  Python over populations. It is timed on the first ``--numpy-subset`` populations and extrapolated
  linearly to ``B`` (one population costs the same as any other: fixed iteration counts).
* Agreement of the two on that subset: the largest ``|f_jax - f_numpy|`` relative to each population's
  peak density.

On a shared machine the wall-clock numbers move with the load, which is printed with the results.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pdbjax import spectral  # noqa: E402
from pdbjax.spectral import PDB  # noqa: E402

# The iteration budget of pdbjax.spectral.stieltjes (documented there), mirrored by the NumPy version.
FIXED_ITERS, CONT_STAGES, NEWTON_ITERS = 32, 32, 3
ETA = 1e-8  # density's default eta, times max(s1, s2)


def random_populations(batch: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(t, s1, s2, c)``: t in [0.05, 0.95], s1 log-uniform in [0.01, 100], s2 / s1 in [0.01, 100], c in [0.05, 1]."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.05, 0.95, batch)
    s1 = 10.0 ** rng.uniform(-2, 2, batch)
    s2 = s1 * 10.0 ** rng.uniform(-2, 2, batch)
    c = rng.uniform(0.05, 1.0, batch)
    return t, s1, s2, c


def grids(t, s1, s2, c, n: int) -> np.ndarray:
    """``(B, n)`` points from ~0 to 1.1 x an upper bound of each support, ``max(s1, s2) (1 + sqrt c)^2``."""
    top = np.maximum(s1, s2) * (1 + np.sqrt(c)) ** 2
    return top[:, None] * np.linspace(1e-4, 1.1, n)


# --------------------------------------------------------------------------------------------------
# The NumPy baseline: same algorithm, one population at a time


def stieltjes_numpy(z: np.ndarray, t: float, s1: float, s2: float, c: float) -> np.ndarray:
    """Companion Stieltjes transform ``m(z)`` of one population at the points ``z`` (NumPy, complex128)."""
    scale = max(s1, s2)
    x, y_target = z.real, np.maximum(z.imag, 1e-12 * scale)
    y_start = np.maximum(y_target, scale)

    def pull(m):
        return c * (t * s1 / (1 + s1 * m) + (1 - t) * s2 / (1 + s2 * m))

    def fixed_step(m, zz):
        return -1 / (zz - pull(m))

    def newton_step(m, zz):
        f = zz + 1 / m - pull(m)
        df = -1 / m**2 + c * (t * s1**2 / (1 + s1 * m) ** 2 + (1 - t) * s2**2 / (1 + s2 * m) ** 2)
        m_new = m - f / df
        ok = np.isfinite(m_new) & (m_new.imag >= 0) & (np.abs(zz + 1 / m_new - pull(m_new)) <= np.abs(f))
        return np.where(ok, m_new, fixed_step(m, zz))

    with np.errstate(all="ignore"):
        z0 = x + 1j * y_start
        m = -1 / z0
        for _ in range(FIXED_ITERS):
            m = 0.5 * (m + fixed_step(m, z0))
        log_ratio = np.log(y_target / y_start)
        for k in range(CONT_STAGES):
            zk = x + 1j * (y_start * np.exp(log_ratio * (k + 1) / CONT_STAGES))
            for _ in range(NEWTON_ITERS):
                m = newton_step(m, zk)
    return m


def density_numpy(x: np.ndarray, t: float, s1: float, s2: float, c: float) -> np.ndarray:
    """Bulk density ``Im s(x + i eta) / pi`` with ``s = (m + (1 - c) / z) / c`` (NumPy)."""
    z = x + 1j * (ETA * max(s1, s2))
    s = (stieltjes_numpy(z, t, s1, s2, c) + (1 - c) / z) / c
    return np.where(x > 0, np.maximum(s.imag / np.pi, 0.0), 0.0)


# --------------------------------------------------------------------------------------------------


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke size: 32 populations x 512 points")
    parser.add_argument("--populations", type=int, default=None, help="B (default 1024, --quick 32)")
    parser.add_argument("--points", type=int, default=None, help="n per population (default 4096, --quick 512)")
    parser.add_argument("--numpy-subset", type=int, default=None, help="populations timed in NumPy (32, --quick 4)")
    parser.add_argument("--repeat", type=int, default=None, help="timed jitted calls (default 5, --quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    batch = args.populations or (32 if args.quick else 1024)
    n = args.points or (512 if args.quick else 4096)
    subset = min(args.numpy_subset or (4 if args.quick else 32), batch)
    repeat = args.repeat or (2 if args.quick else 5)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"device: {jax.devices()}  (backend {jax.default_backend()}, jax {jax.__version__})")
    cpu = platform.processor() or platform.machine()
    print(f"host: {cpu}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"problem: density of {batch} PDB populations x {n} points each, float64")

    t, s1, s2, c = random_populations(batch, args.seed)
    x = grids(t, s1, s2, c, n)
    with jax.enable_x64(True):
        pop = PDB(*(jnp.asarray(v[:, None]) for v in (t, s1, s2)))
        args_dev = jax.device_put((jnp.asarray(x), pop, jnp.asarray(c[:, None])))
        start = time.perf_counter()
        compiled = jax.jit(spectral.density).lower(*args_dev).compile()
        compile_s = time.perf_counter() - start
        f_jax = compiled(*args_dev).block_until_ready()  # warm-up
        jax_s = _median_time(lambda: compiled(*args_dev).block_until_ready(), repeat)
        f_jax = np.asarray(f_jax)
        edges = np.asarray(jax.jit(spectral.edges)(PDB(*map(jnp.asarray, (t, s1, s2))), jnp.asarray(c)))
        n_separated = int(np.isfinite(edges[:, 2]).sum())

    start = time.perf_counter()
    f_np = np.stack([density_numpy(x[i], t[i], s1[i], s2[i], c[i]) for i in range(subset)])
    numpy_subset_s = time.perf_counter() - start
    numpy_s = numpy_subset_s * batch / subset

    peak = f_np.max(1, keepdims=True)
    rel_diff = np.abs(f_jax[:subset] - f_np) / peak
    agree = bool(np.isfinite(f_jax).all() and rel_diff.max() <= 1e-8)

    print(f"populations with separated bulks: {n_separated} of {batch}")
    print(f"jax   compile (ahead of time, once):       {compile_s:9.3f} s")
    print(f"jax   one jitted batched call (median of {repeat}): {jax_s:9.4f} s  ({batch * n / jax_s:.3g} points/s)")
    print(f"numpy loop, {subset} populations measured:        {numpy_subset_s:9.3f} s")
    print(f"numpy loop, {batch} populations (x{batch / subset:g} extrapolated): {numpy_s:9.3f} s")
    print(f"speed-up numpy / jax (run, excluding compile): {numpy_s / jax_s:9.1f} x")
    print(f"speed-up numpy / (jax compile + run):          {numpy_s / (compile_s + jax_s):9.1f} x")
    print(f"agreement on the {subset} measured populations: max |f_jax - f_numpy| / peak = {rel_diff.max():.2e}")
    if not agree:
        print("MISMATCH: the jitted density and the NumPy loop disagree (or the jitted output has non-finite values)")
    return {
        "compile_s": compile_s, "jax_s": jax_s, "numpy_s": numpy_s, "max_rel_diff": float(rel_diff.max()), "agree": agree,
    }


if __name__ == "__main__":
    sys.exit(0 if main()["agree"] else 1)
