"""What a row costs in the fits' calls of ``pdbjax.api.FIT_ROWS`` rows, against other call sizes.

``analyze`` runs the fits, figures and (``compress``) decisions of every spectrum length in calls of
``FIT_ROWS`` rows, so every count of matrices shares one compiled program per length. This times
:func:`pdbjax.figures.spectrum_figures` (the PDB fit, the PUB fits and every figure: ``analyze``'s whole
pass 2) on MiniLM-L6's 36 encoder spectra (p = 384; rows cycled to fill a call) in calls of ``--sizes``
rows, steady state (each size compiled before timing; compile excluded), the sizes taking turns in each
of ``--rounds`` rounds; and then the whole pass over the 36 spectra as ``analyze`` runs it
(:func:`pdbjax.api.in_fit_rows`) in calls of 8 and 16 rows (and ``FIT_ROWS``), against one call of 48 rows (36
padded: the size it ran at before).
Writes ``benchmarks/results/fit_rows.md`` (``fit_rows_<tag>.md`` with ``--tag``; ``benchmarks/gpu.sh`` runs it
with ``--tag gpu``: whether an accelerator wants larger calls than the CPU).

    python benchmarks/fit_rows.py --rounds 7
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pdbjax
import pdbjax.io
from pdbjax import api, figures, linalg
from pdbjax._atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
WHERE = r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"


def _spectra() -> tuple[linalg.Spectrum, np.ndarray]:
    """MiniLM's 36 encoder spectra (host arrays) and their N."""
    mats = [np.asarray(v) for k, v in pdbjax.io.load(pdbjax.io.minilm_path()).items() if re.search(WHERE, k)]
    mats = [m if m.shape[0] >= m.shape[1] else m.T for m in mats]
    specs = [jax.device_get(linalg.spectrum(jnp.asarray(m)[None])) for m in mats]
    spec = jax.tree_util.tree_map(lambda *ys: np.concatenate(ys), *specs)
    return spec, np.asarray([m.shape[0] for m in mats])


def _time(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32, 48])
    ap.add_argument("--tag", default="", help="results file fit_rows_<tag>.md (e.g. gpu); default fit_rows.md")
    args = ap.parse_args()
    spec, N = _spectra()
    rows = len(N)
    take = lambda idx: (jax.tree_util.tree_map(lambda x: x[idx], spec), N[idx])  # noqa: E731
    calls = {b: take(np.arange(b) % rows) for b in args.sizes}
    whole48 = take(np.concatenate([np.arange(rows), np.zeros(48 - rows, int)]))
    chosen = api.FIT_ROWS

    def in_calls_of(r: int) -> None:  # analyze's pass 2 (api.in_fit_rows) with FIT_ROWS = r
        api.FIT_ROWS = r
        try:
            api.in_fit_rows(figures.spectrum_figures, spec, N)
        finally:
            api.FIT_ROWS = chosen

    runs = {
        **{f"call of {b}": (lambda b=b: figures.spectrum_figures(*calls[b])) for b in args.sizes},
        **{f"36 in calls of {r}": (lambda r=r: in_calls_of(r)) for r in sorted({8, 16, chosen})},
        "36 in one call of 48": lambda: figures.spectrum_figures(*whole48),
    }
    for f in runs.values():  # compile
        f()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, f in runs.items():
            times[name].append(_time(f))
    per_row = {f"call of {b}": b for b in args.sizes}  # the whole passes: per real row (36)
    lines = [
        "# The fits' call size: seconds per row of `spectrum_figures` (analyze's pass 2)",
        "",
        f"Command: `python benchmarks/fit_rows.py --rounds {args.rounds} --sizes {' '.join(map(str, args.sizes))}"
        f"{' --tag ' + args.tag if args.tag else ''}`  ",
        f"Machine: {platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} CPUs, device "
        f"{jax.devices()[0].device_kind}, load "
        f"{os.getloadavg()[0]:.1f}; jax {jax.__version__}; {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"MiniLM-L6's 36 encoder spectra (p = 384), PDB + PUB fits + figures, steady state (compile excluded), "
        f"{args.rounds} rounds with the calls taking turns; `FIT_ROWS` = {api.FIT_ROWS}.",
        "",
        "| call | best s | median s | ms per row (best) |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        n = per_row.get(name, rows)
        lines.append(f"| {name} | {min(ts):.4f} | {statistics.median(ts):.4f} | {1e3 * min(ts) / n:.2f} |")
    before = times["36 in one call of 48"]
    lines.append("")
    for r in sorted({8, 16, chosen}):
        ours = times[f"36 in calls of {r}"]
        ratio = [a / b for a, b in zip(ours, before)]
        lines.append(f"* 36 spectra in calls of {r} / in one call of 48: best {min(ours) / min(before):.2f}x, "
                     f"per-round median {statistics.median(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f}).")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / f"fit_rows{'_' + args.tag if args.tag else ''}.md", text)


if __name__ == "__main__":
    main()
