"""One bulk or two: what the ``upper-bulk`` rank rule keeps of pure noise, and the sphericity statistic.

Measures, through the public API (``pdbjax.analyze`` / ``pdbjax.compress``):

1. Pure i.i.d. noise (Gaussian, uniform, Rademacher, Laplace, Student-t 5 and 3, sparse uniform with 10% and
   3% non-zero entries) at several shapes, stored in
   float32 at scales 1e-30 .. 1e30 and in f16, bf16, f64 at unit scale: singular values kept by ``upper-bulk``
   and by ``spikes`` (the default ``auto`` leaves a one-bulk matrix as it is), and the ``bulks``
   decision. Target: at most 3 kept everywhere.
2. The standardised sphericity statistic ``T`` (John's test, ``PDBFit.sphericity``) on noise and on
   simulated two-bulk PDB matrices, with ``pdbjax.estimate.BULKS_Z`` between them.
3. analyze vs compress: every rule's keep is the same number in both (same decomposition).

Writes ``benchmarks/results/bulks.md`` and ``bulks.json`` with the command line at the top.

    python benchmarks/bulks.py            # about 5-10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

import pdbjax
from pdbjax.estimate import BULKS_Z

SHAPES = [(784, 512), (512, 784), (1024, 1024), (2048, 512), (400, 200), (300, 200), (600, 400), (100, 40)]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
SCALES = [1e-30, 1e-3, 1.0, 1e6, 1e30]
NOISE = {
    "gaussian": lambda rng, s: rng.standard_normal(s),
    "uniform": lambda rng, s: rng.uniform(-1, 1, s),
    "rademacher": lambda rng, s: rng.choice([-1.0, 1.0], s),
    "laplace": lambda rng, s: rng.laplace(size=s),
    "student-t5": lambda rng, s: rng.standard_t(5, s),
    # excess kurtosis 15, 57 and infinite: the sphericity statistic is corrected by the entries' column kurtosis
    "sparse-10%": lambda rng, s: rng.uniform(-1, 1, s) * (rng.random(s) < 0.1),
    "sparse-3%": lambda rng, s: rng.uniform(-1, 1, s) * (rng.random(s) < 0.03),
    "student-t3": lambda rng, s: rng.standard_t(3, s),
}
POPULATIONS = [(0.7, 1.0, 4.0), (0.5, 1.0, 2.0), (0.9, 1.0, 3.0), (0.95, 1.0, 5.0), (0.5, 1.0, 1.3)]


def _cast(x: np.ndarray, dtype: str, scale: float) -> np.ndarray:
    """``x * scale`` stored in ``dtype``; float16 cannot hold 1e+-30, so it is stored at unit scale."""
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    if dtype == "float16":
        scale = 1.0
    return (x * scale).astype(np.float32 if dtype != "float64" else np.float64).astype(dt)


def noise_keeps(seeds: int) -> list[dict]:
    rows = []
    for shape in SHAPES:
        rng = np.random.default_rng(shape[0] * 7 + shape[1])
        tree = {}
        for kind, draw in NOISE.items():
            for seed in range(seeds):
                base = draw(rng, shape)
                variants = [("float32", a) for a in SCALES] + [(d, 1.0) for d in DTYPES if d != "float32"]
                for dtype, scale in variants:
                    tree[f"{kind}/{seed}/{dtype}/{scale:g}/kernel"] = _cast(base, dtype, scale)
        t0 = time.perf_counter()
        report = pdbjax.analyze(tree, where="kernel", baselines=False)
        _, creport = pdbjax.compress(tree, where="kernel", rank="upper-bulk")  # the default "auto" keeps one bulk whole
        wall = time.perf_counter() - t0
        ckeep = {r["name"]: r["keep"] for r in creport}
        for r in report:
            kind, seed, dtype, scale = r["name"].split("/")[:4]
            rows.append({
                "shape": list(shape), "noise": kind, "seed": int(seed), "dtype": dtype, "scale": float(scale),
                "upper_bulk": r["rank_kept"]["upper-bulk"], "spikes": r["rank_kept"]["spikes"],
                "compress_keep": ckeep[r["name"]], "bulks": r["bulks"], "sphericity": r["sphericity"],
                "status": r["status"],
            })
        print(f"{shape}: {len(report)} matrices, max upper-bulk keep "
              f"{max(r['rank_kept']['upper-bulk'] for r in report)}, {wall:.1f} s", flush=True)
    return rows


def pdb_statistics(seeds: int) -> list[dict]:
    rows = []
    for shape in [(784, 512), (400, 200), (2048, 512)]:
        tree = {}
        for i, pop in enumerate(POPULATIONS):
            for seed in range(seeds):
                W = pdbjax.simulate(jax.random.PRNGKey(100 * i + seed), *shape, pdbjax.PDB(*pop), spikes=[80.0, 60.0, 40.0])
                tree[f"{i}/{seed}/kernel"] = np.asarray(W)
        report = pdbjax.analyze(tree, where="kernel", baselines=False)
        for r in report:
            i = int(r["name"].split("/")[0])
            t, s1, s2 = POPULATIONS[i]
            rows.append({"shape": list(shape), "population": POPULATIONS[i], "sphericity": r["sphericity"],
                         "bulks": r["bulks"], "upper_bulk": r["rank_kept"]["upper-bulk"],
                         "expected_upper": round((1 - t) * (shape[1] if shape[1] < shape[0] else shape[0])) + 3,
                         "status": r["status"]})
    return rows


def summarise(noise: list[dict], pdb: list[dict]) -> str:
    lines = [f"Threshold `BULKS_Z` = {BULKS_Z}.", "", ("### Pure i.i.d. noise: singular values kept by `upper-bulk` "
                                                       "(the default rule `auto` leaves one-bulk matrices as they are)"), "",
             "| shape | matrices | max keep | mean keep | max `spikes` | two bulks | max T | not ok | analyze == compress |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        rs = [r for r in noise if tuple(r["shape"]) == shape]
        ok = [r for r in rs if r["status"] == "ok"]
        T = [r["sphericity"] for r in rs if r["sphericity"] is not None]
        same = all(r["upper_bulk"] == r["compress_keep"] for r in rs)
        lines.append(f"| {shape[0]}x{shape[1]} | {len(rs)} | {max(r['upper_bulk'] for r in rs)} | "
                     f"{np.mean([r['upper_bulk'] for r in rs]):.2f} | {max(r['spikes'] for r in rs)} | "
                     f"{sum(r['bulks'] == 2 for r in ok)} | {max(T):.2f} | {len(rs) - len(ok)} | {same} |")
    lines += ["", "By noise family (all shapes, dtypes, scales):", "", "| noise | matrices | max keep | max T |", "|---|---|---|---|"]
    for kind in NOISE:
        rs = [r for r in noise if r["noise"] == kind]
        lines.append(f"| {kind} | {len(rs)} | {max(r['upper_bulk'] for r in rs)} | {max(r['sphericity'] for r in rs):.2f} |")
    lines += ["", "By storage dtype (all shapes and families): keep of the same draw against float32 at unit scale", "",
              "| dtype | max keep | max abs difference to float32 |", "|---|---|---|"]
    ref = {(tuple(r["shape"]), r["noise"], r["seed"]): r["upper_bulk"] for r in noise if r["dtype"] == "float32" and r["scale"] == 1.0}
    for dtype in DTYPES:
        rs = [r for r in noise if r["dtype"] == dtype]
        diff = max(abs(r["upper_bulk"] - ref[(tuple(r["shape"]), r["noise"], r["seed"])]) for r in rs)
        lines.append(f"| {dtype} | {max(r['upper_bulk'] for r in rs)} | {diff} |")
    lines += ["", "### Simulated two-bulk PDB matrices (spikes 80, 60, 40)", "",
              "| shape | population (t, s1, s2) | T min / max | two bulks | upper-bulk keep (mean) | (1 - t) p + 3 |",
              "|---|---|---|---|---|---|"]
    for shape in [(784, 512), (400, 200), (2048, 512)]:
        for pop in POPULATIONS:
            rs = [r for r in pdb if tuple(r["shape"]) == shape and tuple(r["population"]) == pop]
            T = [r["sphericity"] for r in rs]
            lines.append(f"| {shape[0]}x{shape[1]} | {pop} | {min(T):.1f} / {max(T):.1f} | {sum(r['bulks'] == 2 for r in rs)}/{len(rs)} | "
                         f"{np.mean([r['upper_bulk'] for r in rs]):.1f} | {rs[0]['expected_upper']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="draws per noise family and shape")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, devices {jax.devices()}"
    print(machine, flush=True)
    noise = noise_keeps(args.seeds)
    pdb = pdb_statistics(args.seeds)
    text = summarise(noise, pdb)
    print(text)
    command = "python benchmarks/bulks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = f"# One bulk or two: pure-noise keeps and the sphericity statistic\n\nCommand: `{command.strip()}`  \nMachine: {machine}\n\n"
    args.out.mkdir(parents=True, exist_ok=True)
    from pdbjax._atomic import atomic_write_text

    atomic_write_text(args.out / "bulks.md", header + text + "\n")
    atomic_write_text(args.out / "bulks.json",
                      json.dumps({"command": command.strip(), "machine": machine, "noise": noise, "pdb": pdb}, indent=1))


if __name__ == "__main__":
    main()
