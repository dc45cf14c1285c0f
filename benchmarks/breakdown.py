"""Where a steady-state ``analyze`` of MiniLM-L6 spends its time: decompositions, then each part of the figures.

In one process, after a first call (compile excluded), the best of ``--reps`` timed calls of:

* ``spectra``: the values-only SVDs of the 36 encoder matrices (``pdbjax.api`` pass 1, three shape groups);
* ``figures``: the one program of pass 2 (:func:`pdbjax.figures.spectrum_figures`, every figure of the report);
* its parts, each compiled alone: PDBLS (``fit_pdb_batched``), PUB-BEMA and PUB-Kernel (``fit_pub_batched``) and one
  quality program (``quality_batched``; the figures program runs it for each of the three fits);
* ``analyze``: the whole :func:`pdbjax.analyze` call (select, spectra, figures, report rows);

and the size of the figures program's temporary buffers as XLA assigns them.

    python benchmarks/breakdown.py            # writes benchmarks/results/breakdown.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax import api, estimate, figures, io, pub, quality, tree
from pdbjax._atomic import atomic_write_text
from pdbjax.inputs import screen_rtol

ROOT = Path(__file__).resolve().parent.parent
WHERE = r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"


def _best(fn, reps: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    params = io.load(io.minilm_path())
    good = [s for s in tree.select(params, WHERE) if s.ok]
    spectra = lambda: api._spectra(good, "float32", True, None, api.DEFAULT_MAX_MEMORY)  # noqa: E731
    chunks = spectra()
    spec = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *(chunk.result for chunk in chunks))
    N = np.asarray([max(good[i].matrix_shape) for c in chunks for i in api._row_owners(c)[0]])
    eigs = spec.s**2
    n, window, length = estimate.fit_inputs(eigs, N)
    _, table, _ = pub.pub_inputs(eigs, N, pub.ALPHA, pub.BETA)
    rtol = screen_rtol(eigs.dtype)
    fit = estimate.fit_pdb_batched(eigs, n, window, length, "scaled", 200, rtol)
    parts = {
        "spectra (3 shape groups)": spectra,
        "figures (three programs: PDB fit, PUB fits, their figures)": lambda: figures.spectrum_figures(spec, N),
        "  PDBLS": lambda: estimate.fit_pdb_batched(eigs, n, window, length, "scaled", 200, rtol),
        "  PUB-BEMA": lambda: pub.fit_pub_batched(eigs, n, table, length, "bema"),
        "  PUB-Kernel": lambda: pub.fit_pub_batched(eigs, n, table, length, "kernel"),
        "  quality (one fit; the program computes the three fits' at once)": lambda: quality.quality_batched(
            eigs, fit.K.astype(jnp.int32), fit.population, fit.ok, jnp.asarray(n, jnp.int32), length),
        "analyze (whole call)": lambda: api.analyze(params, WHERE),
    }
    rows = [(name, _best(fn, args.reps)) for name, fn in parts.items()]
    fits = {"pdb": estimate.fit_pdb_singular_values(spec.s, n, window, length, spec.kurtosis, mode="scaled"),
            **figures._fit_baselines(spec.s, n, table, length)}
    lowered = {
        "PDB fit": estimate.fit_pdb_singular_values.lower(spec.s, n, window, length, spec.kurtosis, mode="scaled"),
        "PUB fits": figures._fit_baselines.lower(spec.s, n, table, length),
        "figures of the fits": figures._figures.lower(spec.s, n, fits, length),
    }
    temp_mb = {name: low.compile().memory_analysis().temp_size_in_bytes / 2**20 for name, low in lowered.items()}
    lines = [
        "# Steady-state analyze of MiniLM-L6 (36 encoder matrices): where the time goes",
        "",
        f"Written by `python benchmarks/breakdown.py --reps {args.reps}` on "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}.",
        "",
        f"* Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        f"* One process, compile excluded (a first call each), best of {args.reps}; parts compiled alone.",
        "",
        "| part | seconds |",
        "|---|---|",
        *(f"| {name} | {sec:.3f} |" for name, sec in rows),
        "",
        "XLA's temporary buffers (`memory_analysis().temp_size_in_bytes`) of the program of "
        + ", of the program of ".join(f"the {name}: {mb:.0f} MiB" for name, mb in temp_mb.items()) + ".",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / "breakdown.md", text)


if __name__ == "__main__":
    main()
