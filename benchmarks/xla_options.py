"""Compile time against run time of the three fitting programs under XLA compiler options (cold-start study).

A cold ``pdbjax analyze`` of MiniLM-L6 is mostly XLA compiling the three fitting programs of
:mod:`pdbjax.figures` (the PDB fit, the PUB fits, their figures). This script lowers each once for the 24
384 x 384 attention matrices of MiniLM-L6 and compiles it under each set of options given (``compile
(..., compiler_options=...)``, the shorter of two compiles from fresh lowerings), then times a first and three
more runs of the compiled program: whether an option buys a shorter compile without a slower run. The PDB fit
and the figures programs are compiled with :data:`pdbjax.exported.FAST_COMPILE` because of this table.

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

from pdbjax import estimate, exported, figures, io, linalg
from pdbjax._atomic import atomic_write_text
from pdbjax.estimate import fit_inputs
from pdbjax.inputs import screen_rtol
from pdbjax.precision import scope
from pdbjax.pub import ALPHA, BETA, pub_inputs

ROOT = Path(__file__).resolve().parent.parent
WHERE = r"^encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight$"
OPTIONS = {
    "default": {},
    "xla_backend_optimization_level=0": {"xla_backend_optimization_level": 0},
    "xla_backend_optimization_level=1": {"xla_backend_optimization_level": 1},
    "xla_llvm_disable_expensive_passes": {"xla_llvm_disable_expensive_passes": True},
    "FAST_COMPILE: " + ", ".join(f"{k}={v}" for k, v in exported.FAST_COMPILE.items()): exported.FAST_COMPILE,
}
REPS = 2  # compiles per program and option set (the shorter is kept: the machine is shared)


def _programs(spec: linalg.Spectrum, N: np.ndarray) -> dict:
    """The three programs' jitted functions and arguments, as :func:`pdbjax.figures.spectrum_figures` calls them."""
    n, window = fit_inputs(spec.s, N)
    table = pub_inputs(spec.s, N, ALPHA, BETA)[1]
    rtol = screen_rtol(spec.s.dtype)
    fit = lambda s, n, w: estimate.fit_pdb_singular_values.__wrapped__(s, n, w, mode="scaled", rtol=rtol)  # noqa: E731
    fits = {"pdb": estimate.fit_pdb_singular_values(spec.s, n, window, mode="scaled", rtol=rtol),
            **figures._fit_baselines(spec.s, n, table)}
    return {
        "PDB fit": (fit, (spec.s, n, window)),
        "PUB fits": (figures._fit_baselines.__wrapped__, (spec.s, n, table)),
        "figures": (figures._figures.__wrapped__, (spec.s, n, fits)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    params = io.load(io.minilm_path())
    keys = sorted(k for k in params if re.match(WHERE, k))
    spec = linalg.spectrum(np.stack([np.asarray(params[k], np.float32) for k in keys]))
    N = np.full(len(keys), 384)
    rows = []
    with scope(spec):
        programs = _programs(spec, N)
        for name, (fn, args) in programs.items():
            fusions = None
            for label, options in OPTIONS.items():
                compile_s = float("inf")
                for _ in range(REPS):
                    jax.clear_caches()  # no compiled program is reused from memory (the figures' inputs compiled some)
                    lowered = jax.jit(fn).lower(*args)  # a fresh lowering: a Lowered keeps what it compiled
                    start = time.perf_counter()
                    compiled = lowered.compile(compiler_options=options)
                    compile_s = min(compile_s, time.perf_counter() - start)
                jax.block_until_ready(compiled(*args))
                start = time.perf_counter()
                for _ in range(3):
                    jax.block_until_ready(compiled(*args))
                run_s = (time.perf_counter() - start) / 3
                if fusions is None:
                    fusions = len(re.findall(r"kind=kLoop", compiled.as_text()))
                rows.append((name, label, compile_s, run_s, fusions))
                print(f"{name:9s} {label:36s} compile {compile_s:5.2f} s  run {run_s:.3f} s", flush=True)
    lines = [
        "# Compile time against run time of the three fitting programs under XLA compiler options",
        "",
        "Command: `python benchmarks/xla_options.py`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, jax {jax.__version__}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"The programs of `pdbjax.figures` for the {len(keys)} 384 x 384 attention matrices of MiniLM-L6 (one batch), "
        f"compiled under each option set (compile = the shorter of {REPS}, each from a fresh lowering); run = mean of "
        "three runs after a first one. Loop fusions counted in the default compile's optimised HLO. pdbjax compiles "
        "the PDB fit and the figures programs with `pdbjax.exported.FAST_COMPILE`, the PUB fits with XLA's defaults.",
        "",
        "| program | options | compile s | run s | loop fusions |",
        "|---|---|---|---|---|",
        *(f"| {name} | {label} | {c:.2f} | {r:.3f} | {f} |" for name, label, c, r, f in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / "xla_options.md", text)


if __name__ == "__main__":
    main()
