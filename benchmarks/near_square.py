"""Near-square matrices: POOR_FIT on pure noise from the PDBLS residual's (0, l_min / 2) grid segment.

For ``p`` near ``N`` the bulk's lower edge ``~ (1 - sqrt c)^2`` approaches 0 and the segment ``(0, l_min / 2)``
measures the few smallest eigenvalues' fluctuation rather than the fit. This script draws float32 matrices of
known population (pure Gaussian noise; two bulks ``PDB(0.7, 1, 5)`` with one spike at 60) at ``p`` in
{100, 200, 400} and ``N = p + gap``, fits them with :func:`pdbjax.fit_pdb` under three rules for the segment,
and counts POOR_FIT rows and the largest relative ``lambda_+`` error of the ok rows:

* ``p != N``: the official code's rule (and pdbjax's before this measurement);
* ``>= 16``: used where ``p != N`` and ``N (1 - sqrt c_K) >= 16`` (:data:`pdbjax.estimate.LOWER_SEGMENT_MIN`);
* ``never``.

Usage: ``python benchmarks/near_square.py [--draws 8] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pdbjax
from pdbjax import PDB, Reason, eigenvalues, estimate, fit_pdb, simulate

RULES = {"p != N": 1e-9, ">= 16": 16.0, "never": float("inf")}
POPULATIONS = {"noise": (PDB(1.0, 1.0, 1.0), ()), "two bulks + spike": (PDB(0.7, 1.0, 5.0), (60.0,))}
SHAPES = {100: (0, 5, 10, 20, 50, 100), 200: (0, 2, 5, 10, 20, 30, 50, 100), 400: (0, 10, 20, 30, 50, 100, 400)}


def measure(draws: int) -> list[dict]:
    rows = []
    for p, gaps in SHAPES.items():
        for name, (pop, spikes) in POPULATIONS.items():
            for gap in gaps:
                N = p + gap
                W = jnp.stack([simulate(jax.random.PRNGKey(100_000 * p + 1000 * gap + s), N, p, pop, spikes) for s in range(draws)])
                lam, truth = eigenvalues(W), float(pdbjax.lambda_plus(pop, (p - len(spikes)) / N))
                for rule, threshold in RULES.items():
                    estimate.LOWER_SEGMENT_MIN = threshold
                    jax.clear_caches()  # the threshold is read when the fit is traced
                    fit = fit_pdb(lam, N)
                    ok = np.asarray(fit.ok)
                    err = np.abs(np.asarray(fit.lambda_plus, np.float64)[ok] / truth - 1)
                    rows.append({"p": p, "N": N, "population": name, "rule": rule,
                                 "poor_fit": int(np.sum(np.asarray(fit.reason) == int(Reason.POOR_FIT))), "draws": draws,
                                 "max_lambda_plus_error": float(err.max()) if err.size else None})
    estimate.LOWER_SEGMENT_MIN = RULES[">= 16"]
    return rows


def summarise(rows: list[dict]) -> str:
    lines = ["| p | N | N (1 - sqrt(p/N)) | population | " + " | ".join(f"POOR_FIT, {r}" for r in RULES)
             + " | " + " | ".join(f"max lambda_+ error, {r}" for r in RULES) + " |",
             "|" + "---|" * (4 + 2 * len(RULES))]
    keyed = {(r["p"], r["N"], r["population"], r["rule"]): r for r in rows}
    for p, N, name in dict.fromkeys((r["p"], r["N"], r["population"]) for r in rows):
        cells = [keyed[p, N, name, rule] for rule in RULES]
        poor = [f"{c['poor_fit']}/{c['draws']}" for c in cells]
        err = ["-" if c["max_lambda_plus_error"] is None else f"{c['max_lambda_plus_error']:.3f}" for c in cells]
        lines.append(f"| {p} | {N} | {N * (1 - (p / N) ** 0.5):.1f} | {name} | " + " | ".join(poor + err) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}"
    command = ("python benchmarks/near_square.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    rows = measure(args.draws)
    text = (f"# Near-square matrices: POOR_FIT from the (0, l_min / 2) grid segment\n\nCommand: `{command}`  \n"
            f"Machine: {machine}\n\nfloat32, {args.draws} draws per shape; the rules are described in the script's "
            "docstring (`>= 16` is pdbjax's, `p != N` the official code's).\n\n" + summarise(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "near_square.md").write_text(text)
    (args.out / "near_square.json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
