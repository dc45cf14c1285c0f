"""What a process pays to start pdbjax, by installed ml_dtypes version.

Every JAX process imports ``ml_dtypes`` (``jax._src.dtypes``). ml_dtypes 0.7.0 registers its NumPy ufunc
loops in time that grows with the loops already registered (``PyUFunc_AddLoop`` scans a list): its
import alone took 0.6 s here, about half of ``import pdbjax.cli``, and every CLI run and test process pays it.
``pyproject.toml`` therefore excludes that version. This script measures it: for each version given it
installs ml_dtypes (``pip install --no-deps --target``, into a temporary directory put first on
``PYTHONPATH``) and times fresh interpreters that import ``numpy, ml_dtypes`` and ``pdbjax.cli``, the
versions taking turns in each round; medians (min-max) of wall seconds and peak RSS.

Usage::

    python benchmarks/import_floor.py                      # ml_dtypes 0.6.0 against 0.7.0, 5 rounds
    python benchmarks/import_floor.py --versions 0.5.4 0.6.0 0.7.0 --rounds 3

Results: ``benchmarks/results/import_floor.md`` (``--out STEM`` for another place).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ww import RESULTS_DIR, run_process

IMPORTS = {"numpy, ml_dtypes": "import numpy, ml_dtypes", "pdbjax.cli": "import pdbjax.cli"}


def install(version: str, target: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"ml_dtypes=={version}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def time_import(code: str, site: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    check = f"{code}; import ml_dtypes, sys; sys.exit(0 if ml_dtypes.__file__.startswith({str(site)!r}) else 3)"
    return run_process([sys.executable, "-c", check], env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", nargs="+", default=["0.6.0", "0.7.0"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS_DIR / "import_floor"))
    args = ap.parse_args()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {v: {k: [] for k in IMPORTS} for v in args.versions}
    with tempfile.TemporaryDirectory() as work:
        sites = {v: Path(work) / v for v in args.versions}
        for v, site in sites.items():
            install(v, site)
        for site in sites.values():  # one unrecorded start each: byte-compile, page cache
            time_import(IMPORTS["pdbjax.cli"], site)
        for _ in range(args.rounds):
            for v, site in sites.items():
                for name, code in IMPORTS.items():
                    runs[v][name].append(time_import(code, site))
    load = os.getloadavg()
    command = "python benchmarks/" + Path(__file__).name + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    lines = [
        "# Process start-up by ml_dtypes version", "",
        f"Written by `{command}` on {datetime.datetime.now().isoformat(timespec='seconds')}; raw numbers in "
        f"`{Path(args.out).name}.json`.", "",
        f"* Machine: {platform.machine()}, {os.cpu_count()} CPUs ({_cpu()}), Python {platform.python_version()}, "
        f"load average at the end {load[0]:.1f}",
        f"* {args.rounds} rounds, the versions taking turns; a fresh interpreter per import; medians (min-max).", "",
        "| ml_dtypes | import | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|---|",
    ]
    for v in args.versions:
        for name in IMPORTS:
            rs = runs[v][name]
            wall = [r["wall_s"] for r in rs]
            lines.append(f"| {v} | `{name}` | {statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) | "
                         f"{statistics.median(r['cpu_s'] for r in rs):.2f} | {max(r['peak_rss'] for r in rs) / 2**20:.0f} |")
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "runs": runs}, indent=1) + "\n")
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
