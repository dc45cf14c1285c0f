r"""Speed and scale: whole-model :func:`pdbjax.analyze` / :func:`pdbjax.compress` against the bare batched
SVD of the same matrices (the floor) and a per-matrix NumPy/SciPy loop written the reference's way.

Usage::

    python benchmarks/speed.py            # fcnn, minilm and 1024 synthetic 512 x 512 (GPU/TPU; CPU: 32)
    python benchmarks/speed.py --quick    # 64 synthetic (CPU: 8), 1 looped matrix per shape group
    python benchmarks/speed.py --workloads fcnn synthetic --synthetic 256 --loop 2

Workloads, each in its own child process:

* ``fcnn``: the three hidden kernels (784 x 512, 512 x 512, 512 x 350) of the trained ``fcnn-fmnist``
  run at noise 0.0 (``benchmarks/checkpoints/``, restored without loading the data), or of a freshly
  initialised FCNN when there is no checkpoint (the table says which); the NNX model is passed as is.
* ``minilm``: the 36 encoder matrices of all-MiniLM-L6-v2 (:func:`pdbjax.io.minilm_path`; 24 of
  384 x 384, 6 of 1536 x 384, 6 of 384 x 1536), the flat safetensors dict as loaded.
* ``synthetic``: ``B`` simulated PDB matrices 512 x 512 with 3 spikes
  (``estimation.simulate_batch``), one stacked leaf ``{"w": (B, 512, 512)}`` with ``layer_axis=0``.
  ``B`` = 1024 (``--quick``: 64) on a GPU/TPU. On a CPU host the default is 32 (``--quick``: 8), to
  keep a run within minutes on a small shared machine; ``--synthetic 1024`` forces the full size.

What is timed, all in one run on one device (``jax.devices()[0]``, printed by each worker):

1. ``analyze(params, baselines=False)`` and ``compress(params, rank="upper-bulk")`` (the default
   method ``"pdb"``): whole-model times (selection, host/device transfers, fits, filtering, report
   rows). The first call of each follows ``jax.clear_caches()``, so it compiles everything it needs
   (neither reuses the other's compiled fits); ``compile = first call - steady state``.
2. The floor: the bare batched ``jnp.linalg.svd`` of the same matrices, one call per shape group,
   stacks already on the device and placed as :func:`pdbjax.tree.map_groups` places them (sharded
   over the batch when there are several local devices), compiled ahead of time and run once
   untimed: singular values only (``compute_uv=False``, the least :func:`analyze` must compute) and
   the thin SVD with vectors (``full_matrices=False``, the least :func:`compress` must compute).
   Ratios: ``analyze / svd values`` and ``compress / svd U,s,V``.
3. The loop: per matrix, one ``numpy.linalg.svd`` (thin, with vectors), PDBLS by
   ``benchmarks/_reference.py`` (``scipy.optimize.curve_fit`` from pdbjax's 13 starts on the
   median-scaled spectrum, ``numpy.roots`` edges: the algorithm of ``mode="scaled"``) and Algorithm 2
   in NumPy (outliers, each shifted to the admissible root of the cubic ``g(alpha) = lambda`` by
   ``numpy.roots``, keep the ``upper-bulk`` count, rebuild). It is timed on the first ``--loop``
   matrices of each shape group and extrapolated linearly to the group (it has no batch effects);
   ``speed-up = loop / compress``. Its keep counts and outputs are compared with ``compress``'s.

Steady state: after the first calls, ``--repeat`` rounds (default 3; 2 on a CPU host) each run the
svd-values floor, analyze, the svd-U,s,V floor, compress and the loop in turn; every column reports
its fastest round. Interleaving matters on a shared host, where the same SVD was measured anywhere
between 0.3 s and 7.6 s of CPU time a few seconds apart: a change of load then hits every column of a
round alike. Wall-clock and process CPU seconds (all threads) are both reported.

Memory: peak resident set size of the workload's process (``resource.getrusage``; each workload runs
in its own process, so its peak and its compiles are its own) and, where the device reports it
(GPU/TPU), ``jax.devices()[0].memory_stats()["peak_bytes_in_use"]``. The parent process never
initialises a JAX backend (a TPU can be opened by one process only). Results go to
``benchmarks/results/speed.{md,json}`` (``--quick``: ``speed_quick.{md,json}``), written atomically.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if importlib.util.find_spec("pdbjax") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import _reference as ref  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from estimation import Clock, device_line, simulate_batch  # noqa: E402

import pdbjax  # noqa: E402
import pdbjax.io  # noqa: E402
from pdbjax._atomic import atomic_write_text  # noqa: E402
from pdbjax.estimate import _STARTS  # noqa: E402
from pdbjax.tree import default_where, group_by_shape, to_matrices  # noqa: E402

WORKLOADS = ("fcnn", "minilm", "synthetic")
RESULTS_DIR = Path(os.environ.get("PDBJAX_RESULTS_DIR", BENCH_DIR / "results"))
RANK = "upper-bulk"
# Synthetic matrices by (platform is CPU, quick): the 1024 / 64 on accelerators.
SYNTHETIC = {(False, False): 1024, (False, True): 64, (True, False): 32, (True, True): 8}


# --------------------------------------------------------------------------------------------------
# workloads: (params, analyze/compress keyword arguments, description)


def fcnn_workload() -> tuple[Any, dict, str]:
    """The trained fcnn-fmnist (noise 0.0) model, or a fresh FCNN; only its three hidden kernels."""
    from common import build_model, checkpoint_path, get_experiment, read_record, settings_of

    from pdbjax.experiments.train import load_checkpoint

    experiment = get_experiment("fcnn-fmnist")
    path = checkpoint_path("fcnn-fmnist", 0.0)
    settings = settings_of(experiment, read_record("fcnn-fmnist", 0.0))
    model = build_model(experiment, settings["width"], settings["config"]["seed"])
    if path.is_file():
        load_checkpoint(path, model)
        source = f"trained checkpoint {path.name}"
    else:
        source = f"freshly initialised ({path.name} not found)"
    hidden = {"/".join(str(k) for k in keys) for keys in model.hidden_kernel_paths()}  # pdbjax's plain names
    return model, {"where": lambda name, x: name in hidden}, f"FCNN hidden kernels, {source}"


def minilm_workload() -> tuple[Any, dict, str]:
    """all-MiniLM-L6-v2 as a flat safetensors dict; the encoder's weight matrices (no pooler)."""
    params = pdbjax.io.load(pdbjax.io.minilm_path())
    where = lambda name, x: default_where(name, x) and "encoder." in name  # noqa: E731
    return params, {"where": where}, "all-MiniLM-L6-v2 encoder matrices (safetensors)"


def synthetic_workload(batch: int) -> tuple[Any, dict, str]:
    """``batch`` simulated PDB matrices 512 x 512 in one stacked leaf."""
    W = np.asarray(simulate_batch(batch))
    return {"w": W}, {"layer_axis": 0}, f"{batch} simulated PDB 512 x 512, 3 spikes, one stacked leaf"


# --------------------------------------------------------------------------------------------------
# the reference-style loop


def _real_roots(coeffs: np.ndarray) -> np.ndarray:
    roots = np.roots(coeffs)
    return np.sort(roots[np.abs(roots.imag) <= 1e-9 * max(np.abs(roots).max(), 1e-300)].real)


def ref_filter(W: np.ndarray, U: np.ndarray, s: np.ndarray, Vh: np.ndarray, fit: ref.RefFit) -> tuple[np.ndarray, int, int]:
    """Algorithm 2 the reference's way for one matrix and its thin SVD: ``(W', keep, n_outliers)``,
    keeping the ``upper-bulk`` count."""
    lam = s.astype(np.float64) ** 2
    p = lam.size
    t, s1, s2, c = fit.t, fit.sigma1_sq, fit.sigma2_sq, fit.c
    a, b = np.poly1d([1.0, -s1]), np.poly1d([1.0, -s2])
    crit = _real_roots((a**2 * b**2 - c * t * s1**2 * b**2 - c * (1 - t) * s2**2 * a**2).coeffs)
    if not fit.converged or crit.size == 0:
        return W, p, 0
    beta = fit.edges
    outliers = lam > fit.lambda_plus
    gap = np.zeros_like(outliers)
    if np.all(np.isfinite(beta)):
        gap = (lam > beta[1]) & (lam < beta[2])
        outliers |= gap
    s_new = s.astype(np.float64).copy()
    for j in np.flatnonzero(outliers):  # alpha_j: the admissible root of g(alpha) = lambda_j, a cubic
        cubic = np.poly1d([1.0, -lam[j]]) * a * b + c * np.poly1d([1.0, 0.0]) * (t * s1 * b + (1 - t) * s2 * a)
        roots = _real_roots(cubic.coeffs)
        lo, hi = (crit[1], crit[2]) if gap[j] and crit.size == 4 else (crit[-1], np.inf)
        ok = roots[(roots > lo) & (roots < hi)]
        s_new[j] = np.sqrt(ok[-1] if ok.size else lo)  # none (rounding at an edge): the edge's alpha
    k = int(outliers.sum())
    w_high = t if s1 > s2 else (1 - t if s2 > s1 else 0.0)
    keep = k + int(np.round(w_high * (p - k)))
    W_new = ((U[:, :keep] * s_new[:keep]) @ Vh[:keep]).astype(W.dtype)
    return W_new, keep, k


def ref_compress(W: np.ndarray) -> tuple[np.ndarray, int, int]:
    """One matrix through one thin SVD, reference PDBLS (pdbjax's ``scaled`` mode) and Algorithm 2."""
    U, s, Vh = np.linalg.svd(W, full_matrices=False)
    fit = ref.pdbls(s.astype(np.float64) ** 2, max(W.shape), starts=_STARTS, scaled=True, penalty=False)
    return ref_filter(W, U, s, Vh, fit)


# --------------------------------------------------------------------------------------------------
# one workload, in its own process


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def peak_device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use")


def matrix_groups(params: Any, kw: dict) -> tuple[dict[tuple[int, int], np.ndarray], list[str]]:
    """The selected matrices as NumPy stacks per shape (selection order) and their row names."""
    sels = pdbjax.select(params, kw.get("where"), layer_axis=kw.get("layer_axis"))
    names, mats = [], []
    for sel in sels:
        stack = np.asarray(to_matrices(sel.value, sel))
        for i in range(sel.num_matrices):
            names.append(sel.name if sel.layer_axis is None else f"{sel.name}[{i}]")
            mats.append(stack[i])
    groups = group_by_shape(mats)
    return {shape: np.stack([mats[i] for i in idx]) for shape, idx in groups.items()}, [
        names[i] for idx in groups.values() for i in idx
    ]


def place(stack: np.ndarray) -> jax.Array:
    """``stack`` on the device(s) as :func:`pdbjax.tree.map_groups` puts it: padded with copies of its first
    matrix to a multiple of the local device count and sharded over the batch when there are several."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return jax.device_put(stack)
    pad = -len(stack) % len(devices)
    stack = np.concatenate([stack, np.repeat(stack[:1], pad, axis=0)]) if pad else stack
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    return jax.device_put(stack, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))


def timed(fn) -> tuple[dict[str, float], Any]:
    """(wall/CPU seconds, result) of one call, waiting for the device."""
    with Clock() as c:
        out = jax.block_until_ready(fn())
    return {"wall": c.wall, "cpu": c.cpu}, out


def svd_floor(stacks: list[np.ndarray], compute_uv: bool):
    """A function running one bare batched ``jnp.linalg.svd`` per stack, compiled ahead of time and
    run once (so that a timed run is a second run, as the steady-state analyze/compress calls are)."""
    svd = partial(jnp.linalg.svd, compute_uv=compute_uv, full_matrices=False)
    on_device = [place(x) for x in stacks]
    compiled = [jax.jit(svd).lower(x).compile() for x in on_device]
    run = lambda: [f(x) for f, x in zip(compiled, on_device)]  # noqa: E731
    jax.block_until_ready(run())
    return run


def reference_loop(groups: dict[tuple[int, int], np.ndarray], n_loop: int):
    """A function running :func:`ref_compress` on the first ``n_loop`` matrices of each shape group and
    returning ``({shape: (wall, cpu, n)}, {shape: outputs})``."""

    def run():
        times, outs = {}, {}
        for shape, stack in groups.items():
            n = min(n_loop, len(stack))
            with Clock() as c:
                outs[shape] = [ref_compress(W) for W in stack[:n]]
            times[shape] = (c.wall, c.cpu, n)
        return times, outs

    return run


def extrapolated(times: dict, groups: dict) -> dict[str, float]:
    """Loop seconds for every matrix: per shape group, the mean over the timed ones times the count."""
    return {clock: sum(t[k] / t[2] * len(groups[shape]) for shape, t in times.items()) for k, clock in enumerate(("wall", "cpu"))}


def run_workload(name: str, batch: int | None, n_loop: int, repeat: int | None, quick: bool) -> dict[str, Any]:
    """Every measurement of one workload (section "What is timed" of the module docstring)."""
    rss: dict[str, int] = {"start": peak_rss_bytes()}
    log = lambda msg: print(f"  [{name}] {msg}", flush=True)  # noqa: E731
    line = device_line()
    log(line)
    cpu = jax.devices()[0].platform == "cpu"
    batch = batch or SYNTHETIC[cpu, quick]
    repeat = repeat or (2 if cpu else 3)
    if name == "fcnn":
        params, kw, description = fcnn_workload()
    elif name == "minilm":
        params, kw, description = minilm_workload()
    else:
        params, kw, description = synthetic_workload(batch)
    groups, names = matrix_groups(params, kw)
    rss["loaded"] = peak_rss_bytes()
    log(f"{description}: {len(names)} matrices, shapes {', '.join(f'{len(x)} x {a}x{b}' for (a, b), x in groups.items())}")

    floors = {"svd_values": svd_floor(list(groups.values()), False), "svd_uv": svd_floor(list(groups.values()), True)}
    rss["svd"] = peak_rss_bytes()
    calls = {
        "svd_values": floors["svd_values"],
        "analyze": lambda: pdbjax.analyze(params, baselines=False, **kw),
        "svd_uv": floors["svd_uv"],
        "compress": lambda: pdbjax.compress(params, rank=RANK, **kw),
        "loop": reference_loop(groups, n_loop),
    }
    first = {}
    for key in ("analyze", "compress"):  # each compiles from scratch
        jax.clear_caches()
        first[key], _ = timed(calls[key])
        log(f"{key}: first call {first[key]['wall']:.2f} s wall")
        rss[key] = peak_rss_bytes()
    jax.block_until_ready(calls["analyze"]())  # recompile what clear_caches dropped; untimed
    # Steady state: `repeat` interleaved rounds, so that a change of the load hits every column alike.
    rounds: dict[str, list[dict[str, float]]] = {key: [] for key in calls}
    last: dict[str, Any] = {}
    for r in range(repeat):
        for key, fn in calls.items():
            t, last[key] = timed(fn)
            rounds[key].append(extrapolated(last[key][0], groups) if key == "loop" else t)
        log(f"round {r + 1}/{repeat}: " + ", ".join(f"{k} {v[-1]['wall']:.2f} s" for k, v in rounds.items()) + " wall")
    steady = {key: {clock: min(t[clock] for t in ts) for clock in ("wall", "cpu")} for key, ts in rounds.items()}
    rss["rounds"] = peak_rss_bytes()
    device_peak = peak_device_bytes()

    report, (new_params, c_report), (loop_times, loop_outs) = last["analyze"], last["compress"], last["loop"]
    keep_jax = {row["name"]: int(row["keep"]) for row in c_report if "keep" in row}
    compressed, _ = matrix_groups(new_params, kw)
    agree, max_rel, offset = 0, 0.0, 0
    for shape, stack in groups.items():
        for i, (W_ref, keep, _) in enumerate(loop_outs[shape]):
            agree += int(keep == keep_jax.get(names[offset + i]))
            rel = float(np.linalg.norm(W_ref - compressed[shape][i]) / max(np.linalg.norm(W_ref), 1e-30))
            max_rel = max(max_rel, rel)
        offset += len(stack)
    loop = {
        **steady["loop"],
        "timed": sum(t[2] for t in loop_times.values()),
        "keep_agree": agree,
        "max_rel_diff": max_rel,
        "per_matrix": {f"{a}x{b}": {"wall": t[0] / t[2], "cpu": t[1] / t[2], "timed": t[2], "count": len(groups[a, b])}
                       for (a, b), t in loop_times.items()},
    }
    return {
        "workload": name,
        "description": description,
        "matrices": len(names),
        "repeat": repeat,
        "shapes": {f"{a}x{b}": len(x) for (a, b), x in groups.items()},
        "device": device_info(),
        "device_line": line,
        "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "analyze": {"first": first["analyze"], "steady": steady["analyze"], "ok": sum(r.get("status") == "ok" for r in report)},
        "compress": {"first": first["compress"], "steady": steady["compress"], "totals": c_report.totals},
        "svd_floor": {"svd_values": steady["svd_values"], "svd_uv": steady["svd_uv"]},
        "loop": loop,
        "rounds": rounds,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_bytes": rss,
        "peak_device_bytes": device_peak,
    }


def device_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "kind": dev.device_kind, "count": len(jax.devices()), "jax": jax.__version__}


def worker(name: str, batch: int | None, n_loop: int, repeat: int | None, quick: bool, out: str) -> None:
    """Child-process entry: run one workload and write its JSON record to ``out``."""
    result = run_workload(name, batch, n_loop, repeat, quick)
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# parent: run the workloads, print and write the table


def run_child(name: str, batch: int | None, n_loop: int, repeat: int | None, quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pdbjax-speed-") as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--loop", str(n_loop),
               "--worker-out", str(out), *(["--synthetic", str(batch)] if batch else []),
               *(["--repeat", str(repeat)] if repeat else []), *(["--quick"] if quick else [])]
        proc = subprocess.run(cmd)
        if proc.returncode != 0 or not out.is_file():
            return {"workload": name, "error": f"worker exited with status {proc.returncode}"}
        return json.loads(out.read_text())


def _gib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**30:.2f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    head = ("| workload | matrices | device | clock | analyze compile (s) | analyze (s) | compress compile (s) "
            "| compress (s) | svd values (s) | svd U,s,V (s) | analyze / svd values | compress / svd U,s,V "
            "| loop (s) | speed-up vs loop | peak RSS (GiB) | peak device (GiB) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['error']} |")
            continue
        dev = r["device"]["platform"] + (f" x{r['device']['count']}" if r["device"]["count"] > 1 else "")
        for clock in ("wall", "cpu"):
            an, co = r["analyze"], r["compress"]
            a, c = an["steady"][clock], co["steady"][clock]
            sv, su = r["svd_floor"]["svd_values"][clock], r["svd_floor"]["svd_uv"][clock]
            loop = r["loop"][clock]
            extrap = "" if r["loop"]["timed"] == r["matrices"] else f" (from {r['loop']['timed']})"
            lines.append(
                f"| {r['workload']} | {r['matrices']} | {dev} | {clock} | {an['first'][clock] - a:.2f} | {a:.2f} "
                f"| {co['first'][clock] - c:.2f} | {c:.2f} | {sv:.2f} | {su:.2f} | {a / sv:.2f} | {c / su:.2f} "
                f"| {loop:.1f}{extrap} | {loop / c:.1f}x | {_gib(r['peak_rss_bytes'])} | {_gib(r['peak_device_bytes'])} |"
            )
    return lines


def notes(results: list[dict[str, Any]], n_loop: int) -> list[str]:
    out = []
    for r in results:
        if "error" in r:
            continue
        shapes = ", ".join(f"{n} x {s}" for s, n in r["shapes"].items())
        loop = r["loop"]
        out.append(f"* **{r['workload']}**: {r['description']} ({shapes}); repeat {r['repeat']}. "
                   f"analyze ok {r['analyze']['ok']}/{r['matrices']}; "
                   f"compress unchanged {r['compress']['totals'].get('unchanged')}, low-rank storage ratio "
                   f"{r['compress']['totals'].get('lowrank_compression_ratio', float('nan')):.3f}; "
                   f"the loop's keep counts equal compress's on {loop['keep_agree']}/{loop['timed']} looped matrices, "
                   f"largest ||W_loop - W_compress||_F / ||W_loop||_F {loop['max_rel_diff']:.1e}.")
    out += [
        "",
        "analyze / compress = steady-state whole-model call; compile = first call (after `jax.clear_caches()`) "
        "minus that. svd values / svd U,s,V = one bare batched `jnp.linalg.svd` per shape group "
        "(`compute_uv=False` / thin with vectors), compiled ahead of time. "
        f"loop = per-matrix `numpy.linalg.svd` + reference PDBLS (`curve_fit`, {len(_STARTS)} starts, `np.roots`) + "
        f"Algorithm 2 in NumPy, timed on the first {n_loop} matrices of each shape group and extrapolated "
        "linearly (`(from n)` when it was); speed-up = loop / compress. Steady-state columns: fastest of `repeat` "
        "interleaved rounds (svd values, analyze, svd U,s,V, compress, loop). CPU = process time over all threads. "
        "Peak RSS = `ru_maxrss` of the workload's own process; peak device = `memory_stats()['peak_bytes_in_use']` "
        "(n/a: the device does not report it, e.g. CPU).",
    ]
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Speed and scale: analyze / compress vs the bare SVD and a per-matrix NumPy/SciPy loop",
        "",
        f"Written by `python benchmarks/speed.py{' --quick' if data['quick'] else ''}` ({data['date']}); "
        f"raw numbers in `{data['json_name']}`.",
        "",
        *(f"* {name}: {line}" for name, line in data["device_lines"].items()),
        "",
        *table(data["results"]),
        "",
        *notes(data["results"], data["loop"]),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 synthetic matrices (CPU: 8), loop on 1 per shape group")
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--synthetic", type=int, default=None, help="synthetic matrices (default 1024, quick 64; CPU: 32, 8)")
    ap.add_argument("--loop", type=int, default=None, help="looped matrices per shape group (default 2, quick 1)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed steady-state calls, fastest reported (default 3; CPU: 2)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write benchmarks/results/")
    ap.add_argument("--tag", default=None, help="write speed_TAG.{md,json} (e.g. gpu) instead of speed.{md,json}")
    ap.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n_loop = args.loop or (1 if args.quick else 2)
    if args.worker:
        return worker(args.worker, args.synthetic, n_loop, args.repeat, args.quick, args.worker_out)

    print(f"workloads: {', '.join(args.workloads)} (one process each); synthetic: "
          f"{args.synthetic or 'platform default'} x 512 x 512; loop: {n_loop} per shape group", flush=True)
    with Clock() as total:
        results = [run_child(name, args.synthetic, n_loop, args.repeat, args.quick) for name in args.workloads]
    stem = f"speed_{args.tag}" if args.tag else "speed_quick" if args.quick else "speed"
    data = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "device_lines": {r["workload"]: r["device_line"] for r in results if "device_line" in r},
        "loop": n_loop,
        "elapsed_s": total.wall,
        "rank": RANK,
        "json_name": f"{stem}.json",
        "results": results,
    }
    print()
    print("\n".join(table(results)))
    print()
    print("\n".join(notes(results, n_loop)))
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RESULTS_DIR / f"{stem}.json", json.dumps(data, indent=1) + "\n")
        atomic_write_text(RESULTS_DIR / f"{stem}.md", markdown(data))
        print(f"\nwrote {RESULTS_DIR / (stem + '.md')} and {stem}.json")
    print(f"total {total.wall:.0f} s wall")


if __name__ == "__main__":
    main()
