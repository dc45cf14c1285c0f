"""Tall matrices: what the default rank rule keeps of pure Gaussian noise as the aspect ratio N / p grows.

``benchmarks/bulks.py`` covers aspect ratios up to 4 (2048 x 512); this measures N / p from 10 to 200 at
p = 64 and 100 (Gaussian entries, float32, ``draws`` matrices per shape, one ``pdbjax.analyze`` call per
shape). Reported per shape: the largest and median initial spike count ``K`` (EDA/EDB, searched up to the
window ``floor(6 N^0.1)``) and the largest and median keep of the ``upper-bulk`` (default) and ``spikes``
rules, the keep of PUB-BEMA (the one-bulk baseline) and the statuses. Pure noise should keep nothing; how
much it keeps is the limit the README states.

Writes ``benchmarks/results/tall.md`` and ``tall.json`` with the command line at the top.

    python benchmarks/tall.py             # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import jax
import numpy as np

import pdbjax

RATIOS = (10, 20, 60, 100, 200)
WIDTHS = (64, 100)


def measure(draws: int, seed: int) -> list[dict]:
    """One row per shape: spike counts, keeps and statuses of ``draws`` noise matrices."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in WIDTHS:
        for ratio in RATIOS:
            N = ratio * p
            params = {f"w{i}": rng.standard_normal((N, p)).astype(np.float32) for i in range(draws)}
            report = pdbjax.analyze(params, where="w")
            K = [int(r["K"]) for r in report]
            upper = [int(r["rank_kept"]["upper-bulk"]) for r in report]
            spikes = [int(r["rank_kept"]["spikes"]) for r in report]
            bema = [int(r["rank_kept"]["pub-bema"]) for r in report]
            rows.append({"N": N, "p": p, "ratio": ratio, "window": int(6 * N**0.1), "K": K, "upper_bulk": upper,
                         "spikes": spikes, "pub_bema": bema, "status": sorted({r["status"] for r in report})})
    return rows


def summarise(rows: list[dict]) -> str:
    lines = ["| N x p | N / p | window | K max / median | upper-bulk keep max / median | spikes keep max / median "
             "| pub-bema keep max / median | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cell = lambda xs: f"{max(xs)} / {float(np.median(xs)):g}"  # noqa: E731
        lines.append(f"| {r['N']} x {r['p']} | {r['ratio']} | {r['window']} | {cell(r['K'])} | {cell(r['upper_bulk'])} "
                     f"| {cell(r['spikes'])} | {cell(r['pub_bema'])} | {', '.join(r['status'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=8, help="noise matrices per shape (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, devices {jax.devices()}"
    rows = measure(args.draws, args.seed)
    command = ("python benchmarks/tall.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    text = (f"# Tall matrices: pure Gaussian noise kept by the default rule as N / p grows\n\nCommand: `{command}`  \n"
            f"Machine: {machine}\n\n{args.draws} draws per shape, float32.\n\n{summarise(rows)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tall.md").write_text(text)
    (args.out / "tall.json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
