"""Pure Gaussian noise at the shapes ``benchmarks/bulks.py`` leaves out: what the ``upper-bulk`` rank rule keeps.

``benchmarks/bulks.py`` covers 8 shapes from 100 x 40 to 2048 x 512 (aspect ratios up to 4). This measures
the two ends beyond them, in float32, one ``pdbjax.analyze`` call per shape:

* tall: ``N / p`` from 10 to 200 at ``p = 64`` and 100 (``draws`` matrices a shape);
* small: ``p`` from 16 to 64, square and ``N / p = 2`` or 10 (``4 draws`` matrices a shape, they are cheap).

Reported per shape: how many PDB fits are ok, and over those the largest and median initial spike count ``K``
(EDA/EDB, searched up to the window ``floor(6 N^0.1)``) and keep of the ``upper-bulk`` and ``spikes``
rules (a row that is not ok is left unchanged); the keep of PUB-BEMA (the one-bulk baseline), how many
rows say ``beyond_window``, and the statuses. Pure noise should keep nothing; how much it keeps is the
limit the README states.

Writes ``benchmarks/results/noise_shapes.md`` and ``noise_shapes.json`` with the command line at the top.

    python benchmarks/noise_shapes.py     # about half a minute on 2 CPU cores
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

TALL = [(ratio * p, p) for p in (64, 100) for ratio in (10, 20, 60, 100, 200)]
SMALL = [(16, 16), (160, 16), (32, 32), (64, 32), (48, 48), (64, 64), (128, 64)]


def measure(shapes: list[tuple[int, int]], draws: int, rng: np.random.Generator, family: str) -> list[dict]:
    """One row per shape: spike counts, keeps, flags and statuses of ``draws`` noise matrices."""
    rows = []
    for N, p in shapes:
        params = {f"w{i}": rng.standard_normal((N, p)).astype(np.float32) for i in range(draws)}
        report = pdbjax.analyze(params, where="w")
        ok = [r for r in report if r["status"] == "ok"]  # a row that is not ok keeps everything (left unchanged)
        rows.append({
            "family": family, "N": N, "p": p, "ratio": N / p, "window": int(6 * N**0.1), "draws": draws, "ok": len(ok),
            "K": [int(r["K"]) for r in ok],
            "upper_bulk": [int(r["rank_kept"]["upper-bulk"]) for r in ok],
            "spikes": [int(r["rank_kept"]["spikes"]) for r in ok],
            "pub_bema": [int(r["rank_kept"]["pub-bema"]) for r in report],
            "beyond_window": sum(bool(r["beyond_window"]) for r in report),
            "status": sorted({r["status"] for r in report}),
        })
    return rows


def summarise(rows: list[dict]) -> str:
    lines = ["| family | N x p | N / p | draws | PDB fit ok | window | K max / median | upper-bulk keep max / median "
             "| spikes keep max / median | pub-bema keep max / median | beyond_window | statuses |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    cell = lambda xs: f"{max(xs)} / {float(np.median(xs)):g}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['family']} | {r['N']} x {r['p']} | {r['ratio']:g} | {r['draws']} | {r['ok']} | {r['window']} | {cell(r['K'])} "
                     f"| {cell(r['upper_bulk'])} | {cell(r['spikes'])} | {cell(r['pub_bema'])} | {r['beyond_window']} "
                     f"| {', '.join(r['status'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=8, help="noise matrices per tall shape (default 8; small: 4x)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, devices {jax.devices()}"
    rng = np.random.default_rng(args.seed)
    rows = measure(TALL, args.draws, rng, "tall") + measure(SMALL, 4 * args.draws, rng, "small")
    command = ("python benchmarks/noise_shapes.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    text = (f"# Pure Gaussian noise at tall and small shapes: what the default rule keeps\n\nCommand: `{command}`  \n"
            f"Machine: {machine}\n\nfloat32 Gaussian entries; one `analyze` call per shape.\n\n{summarise(rows)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise_shapes.md").write_text(text)
    record = {"command": command, "machine": machine, "rows": rows}
    (args.out / "noise_shapes.json").write_text(json.dumps(record, indent=1))
    print(text)


if __name__ == "__main__":
    main()
