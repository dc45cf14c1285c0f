"""What the interpreter's shutdown costs a warm ``pdbjax analyze`` process, with and without ``gc.freeze``.

The executable (:func:`pdbjax.cli.console`) freezes the garbage collector's objects before it exits, so the
shutdown does not walk every object JAX created. This script measures that step alone: fresh processes
run ``pdbjax.cli.main(["analyze", MiniLM, ...])`` on a warm persistent cache, write the time at which
``main`` returned, then exit as the executable does (``freeze``) or without the freeze (``plain``); the
parent takes the time at which the process has ended (``os.wait4``). The two kinds alternate in each round.

    python benchmarks/exit.py --rounds 8

Writes ``benchmarks/results/exit.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pdbjax._atomic import atomic_write_text
from pdbjax.io import minilm_path

ROOT = Path(__file__).resolve().parent.parent
WHERE = r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"

_CHILD = r"""
import gc, sys, time
from pdbjax import cli
mode, stamp, model, where, out = sys.argv[1:6]
status = cli.main(["analyze", model, "--where", where, "--quiet", "--json", out, "--overwrite"])
with open(stamp, "w") as f:
    f.write(repr(time.time()))
if mode == "freeze":
    gc.freeze()
sys.exit(status)
"""


def _run(mode: str, work: Path) -> tuple[float, float]:
    """(whole process, main's return to the process's end) in seconds."""
    stamp = work / f"{mode}.stamp"
    cmd = [sys.executable, "-c", _CHILD, mode, str(stamp), str(minilm_path()), WHERE, str(work / "report.json")]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(work / "cache")})
    _, status, _ = os.wait4(proc.pid, 0)
    end = time.time()
    if status != 0:
        raise SystemExit(f"the {mode} child failed with wait status {status}")
    return end - start, end - float(stamp.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdbjax-exit-") as tmp:
        work = Path(tmp)
        _run("plain", work)  # fills the persistent cache: every later run is warm
        times: dict[str, list[tuple[float, float]]] = {"plain": [], "freeze": []}
        for _ in range(args.rounds):
            for mode in times:
                times[mode].append(_run(mode, work))
    med = {mode: np.median(np.asarray(v), axis=0) for mode, v in times.items()}
    rng = {mode: (min(e for _, e in v), max(e for _, e in v)) for mode, v in times.items()}
    lines = [
        "# Shutdown of a warm `pdbjax analyze` process (MiniLM-L6, 36 matrices), with and without `gc.freeze`",
        "",
        f"Command: `python benchmarks/exit.py --rounds {args.rounds}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"{args.rounds} rounds, each running both kinds in turn; medians (min-max of the shutdown). `freeze` exits "
        "as the `pdbjax` executable does (`pdbjax.cli.console`).",
        "",
        "| exit | whole process s | main's return to the process's end s |",
        "|---|---|---|",
        *(f"| {mode} | {med[mode][0]:.2f} | {med[mode][1]:.2f} ({rng[mode][0]:.2f}-{rng[mode][1]:.2f}) |" for mode in times),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / "exit.md", text)


if __name__ == "__main__":
    main()
