"""Compile time against run time of the fitting programs under XLA compiler options (cold-start study).

A cold ``pdbjax analyze`` of MiniLM-L6 is mostly XLA compiling the three fitting programs of
:mod:`pdbjax.figures` (the PDB fit, the PUB fits, their figures), and a cold ``compress`` also compiles its
decisions (``filter._decide``, default rule and shrinkage). This script lowers each at the shape the pipeline
calls it with (:data:`pdbjax.api.FIT_ROWS` of MiniLM-L6's 384 x 384 attention spectra, zero-padded to
:func:`pdbjax.api.padded_length`) and compiles it under each set of options (``compile(...,
compiler_options=...)``, the shortest of three compiles from fresh lowerings, the option sets taking turns;
its wall and CPU seconds: XLA compiles a program's kernels on several threads), then times a first and ten more
runs of the compiled program: whether an option buys a shorter compile without a slower run. The same for
the programs each matrix shape compiles: the values-only decomposition, the Gram-matrix vectors and
``compress``'s rebuild, of MiniLM-L6's six 1536 x 384 intermediate matrices (in one batch).
pdbjax compiles all of them with :data:`pdbjax.exported.FAST_COMPILE` because of this table.

    python benchmarks/xla_options.py

Writes ``benchmarks/results/xla_options.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import time
from pathlib import Path

import jax
import numpy as np

from pdbjax import api, estimate, exported, figures, filter, io, linalg
from pdbjax._atomic import atomic_write_text
from pdbjax.estimate import fit_inputs
from pdbjax.precision import scope
from pdbjax.pub import ALPHA, BETA, pub_inputs

ROOT = Path(__file__).resolve().parent.parent
WHERE = r"^encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight$"
TALL = r"^encoder\.layer\.\d+\.intermediate\.dense\.weight$"  # 1536 x 384 (PyTorch's (out, in))
_LOOPS = {"xla_cpu_use_fusion_emitters": False}
OPTIONS = {
    "default": {},
    "xla_backend_optimization_level=1": {"xla_backend_optimization_level": 1},
    "xla_cpu_use_fusion_emitters=False": _LOOPS,
    "xla_cpu_use_fusion_emitters=False, xla_llvm_disable_expensive_passes": {**_LOOPS, "xla_llvm_disable_expensive_passes": True},
    "xla_cpu_use_fusion_emitters=False, xla_backend_optimization_level=1": {**_LOOPS, "xla_backend_optimization_level": 1},
    "xla_cpu_use_fusion_emitters=False, xla_backend_optimization_level=0": {**_LOOPS, "xla_backend_optimization_level": 0},
}
REPS = 3  # compiles per program and option set (the shortest is kept: the machine is shared)
RUNS = 10  # timed runs of each compiled program, after a first one


def _programs(spec: linalg.Spectrum, N: np.ndarray, length: np.ndarray) -> dict:
    """The programs' functions and arguments, as :func:`pdbjax.figures.spectrum_figures` and :func:`pdbjax.filter_matrix` call them."""
    n, window, length = fit_inputs(spec.s, N, length)
    table = pub_inputs(spec.s, N, ALPHA, BETA, length)[1]
    fit = lambda s, n, w, q: estimate.fit_pdb_singular_values.__wrapped__(s, n, w, q, spec.kurtosis, mode="scaled")  # noqa: E731
    fits = {"pdb": estimate.fit_pdb_singular_values(spec.s, n, window, length, spec.kurtosis, mode="scaled"),
            **figures._fit_baselines(spec.s, n, table, length)}
    return {
        "PDB fit": (fit, (spec.s, n, window, length)),
        "PUB fits": (figures._fit_baselines.__wrapped__, (spec.s, n, table, length)),
        "figures": (figures._figures.__wrapped__, (spec.s, n, fits, length)),
        "compress's decisions": (
            lambda s, finite, fit, fixed, q: filter._decide.__wrapped__(s, finite, fit, fixed, q, shrink="spikes",
                                                                         rule="upper-bulk"),
            (spec.s, spec.finite, fits["pdb"], np.zeros(len(N), np.int32), length),
        ),
    }


def _decompositions(W: np.ndarray) -> dict:
    """The decomposition programs (:mod:`pdbjax.linalg`) and ``compress``'s rebuild of a stack ``W``, as the
    pipeline calls them (the rebuild keeping a third of the ``p`` components)."""
    f = linalg.factors(W, via="gram")
    rebuild = lambda W, f, keep: filter._rebuild_fixed.__wrapped__(W, f, keep, factored=False, slr=None)  # noqa: E731
    return {
        "decomposition (values)": (linalg._spectrum.__wrapped__, (W,)),
        "decomposition (Gram vectors)": (linalg._gram_factors.__wrapped__, (W,)),
        "compress's rebuild": (rebuild, (W, f, np.full(len(W), min(W.shape[-2:]) // 3, np.int32))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    params = io.load(io.minilm_path())
    keys = sorted(k for k in params if re.match(WHERE, k))[: api.FIT_ROWS]
    spec = jax.device_get(linalg.spectrum(np.stack([np.asarray(params[k], np.float32) for k in keys])))
    p = spec.s.shape[-1]
    spec, length = api._padded_rows([spec], api.padded_length(p))
    N = np.full(len(keys), 384)
    rows = []
    tall = sorted(k for k in params if re.match(TALL, k))
    W = np.stack([np.asarray(params[k], np.float32) for k in tall])  # (6, 1536, 384)
    with scope(spec):
        programs = {**_programs(spec, N, length), **_decompositions(W)}
        for name, (fn, args) in programs.items():
            compile_s = dict.fromkeys(OPTIONS, (float("inf"), 0.0))
            compiled = {}
            for _ in range(REPS):  # the option sets in turn within each repetition: the machine's load drifts
                for label, options in OPTIONS.items():
                    jax.clear_caches()  # no compiled program is reused from memory (the figures' inputs compiled some)
                    lowered = jax.jit(fn).lower(*args)  # a fresh lowering: a Lowered keeps what it compiled
                    start, cpu = time.perf_counter(), time.process_time()
                    compiled[label] = lowered.compile(compiler_options=options)
                    compile_s[label] = min(compile_s[label], (time.perf_counter() - start, time.process_time() - cpu))
            fusions = len(re.findall(r"kind=kLoop", compiled["default"].as_text()))
            for label in OPTIONS:
                jax.block_until_ready(compiled[label](*args))
                start = time.perf_counter()
                for _ in range(RUNS):
                    jax.block_until_ready(compiled[label](*args))
                run_s = (time.perf_counter() - start) / RUNS
                rows.append((name, label, *compile_s[label], run_s, fusions))
                print(f"{name:9s} {label:36s} compile {compile_s[label][0]:5.2f} s  run {run_s * 1e3:.1f} ms", flush=True)
    lines = [
        "# Compile time against run time of the fitting programs under XLA compiler options",
        "",
        "Command: `python benchmarks/xla_options.py`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, jax {jax.__version__}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"The programs of `pdbjax.figures` and `compress`'s decisions (`filter._decide`, rule `upper-bulk`, spike "
        f"shrinkage) at the shape the pipeline calls them with: {len(keys)} (`FIT_ROWS`) spectra of MiniLM-L6's "
        f"384 x 384 attention matrices, zero-padded from p = {p} to {spec.s.shape[-1]}; "
        f"compiled under each option set (compile = the shortest of {REPS}, each from a fresh lowering, the option sets "
        f"taking turns, with the process's CPU seconds during that compile); run = mean of {RUNS} runs after a first "
        f"one. The decompositions and the rebuild (keeping {min(W.shape[-2:]) // 3} components): MiniLM-L6's {len(W)} "
        f"intermediate matrices, {W.shape[1]} x {W.shape[2]} (one batch). "
        "Loop fusions counted in the default compile's optimised HLO. pdbjax compiles all these programs with "
        "`pdbjax.exported.FAST_COMPILE` = `" + ", ".join(f"{k}={v}" for k, v in exported.FAST_COMPILE.items()) + "`.",
        "",
        "| program | options | compile s | compile CPU s | run ms | loop fusions |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {label} | {c:.2f} | {u:.2f} | {r * 1e3:.1f} | {f} |" for name, label, c, u, r, f in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / "xla_options.md", text)


if __name__ == "__main__":
    main()
