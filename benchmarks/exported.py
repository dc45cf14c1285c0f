"""Warm-process time of ``analyze`` with and without :mod:`pdbjax.exported`, on MiniLM-L6's 36 matrices.

Baseline: the same process with JAX's persistent compilation cache warm but ``pdbjax.exported`` off (what
every process paid before: tracing and lowering of every program). Both arms share one warm compilation
cache filled first; the rounds alternate the arms; each child process times ``pdbjax.io.load`` plus
``pdbjax.analyze`` (imports reported beside) and writes its report, and the reports are compared.

    python benchmarks/exported.py [--rounds 5] [--out benchmarks/results/exported]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap

import jax

from pdbjax import io
from pdbjax._atomic import atomic_write_text

CHILD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import pdbjax, pdbjax.io
    from pdbjax import compilation_cache, exported
    compilation_cache.enable()
    if sys.argv[2] == "off":
        exported.disable()
    t1 = time.perf_counter()
    report = pdbjax.analyze(pdbjax.io.load(sys.argv[1]))
    t2 = time.perf_counter()
    rows = json.loads(json.dumps(report.rows, default=str))
    print(json.dumps({"imports": t1 - t0, "analyze": t2 - t1, "stats": exported.stats(), "rows": rows}))
    """
)


def child(path: str, arm: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, arm], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/exported")
    args = ap.parse_args()
    path = str(io.minilm_path())
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
        fill = child(path, "on", env)  # cold: fills both caches
        runs = {"off": [], "on": []}
        for _ in range(args.rounds):
            for arm in ("off", "on"):
                runs[arm].append(child(path, arm, env))
    same = all(r["rows"] == fill["rows"] for arm in runs.values() for r in arm)
    med = {arm: statistics.median(r["analyze"] for r in rs) for arm, rs in runs.items()}
    imports = statistics.median(r["imports"] for rs in runs.values() for r in rs)
    lines = [
        "# Warm processes with and without pdbjax.exported (MiniLM-L6, 36 matrices)",
        "",
        f"Written by `python benchmarks/exported.py --rounds {args.rounds} --out {args.out}`.",
        "",
        f"* Machine: {platform.machine()}, Python {platform.python_version()}, {len(os.sched_getaffinity(0))} cores, "
        f"jax {jax.__version__}, load average at the end {os.getloadavg()[0]:.1f}",
        "* Both arms: JAX's persistent compilation cache warm (filled by one cold process first); `off` = "
        "`pdbjax.exported.disable()` after `compilation_cache.enable()` (every program traced and lowered, "
        "as before), `on` = the traced programs read back. Rounds alternate the arms; medians (min-max).",
        "",
        "| arm | load + analyze s | programs read / exported / bypassed |",
        "|---|---|---|",
    ]
    for arm, rs in runs.items():
        times = [r["analyze"] for r in rs]
        st = rs[-1]["stats"]
        counts = f"{st['loaded']} / {st['exported']} / {st['bypassed']}"
        lines.append(f"| {arm} | {med[arm]:.2f} ({min(times):.2f}-{max(times):.2f}) | {counts} |")
    lines += [
        "",
        f"* Cold process (both caches empty): load + analyze {fill['analyze']:.2f} s.",
        f"* Imports (pdbjax, jax), beside: {imports:.2f} s median.",
        f"* on / off: {med['on'] / med['off']:.2f}x.",
        f"* Reports of every run identical to the cold run's: {same}.",
    ]
    data = {"runs": {a: [{k: v for k, v in r.items() if k != "rows"} for r in rs] for a, rs in runs.items()},
            "cold": fill["analyze"], "identical": same}
    atomic_write_text(args.out + ".md", "\n".join(lines) + "\n")
    atomic_write_text(args.out + ".json", json.dumps(data, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
