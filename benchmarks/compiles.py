"""How many XLA programs ``pdbjax.analyze`` (then ``compress``) compiles for a model, and what a warm cache leaves to pay.

For the 36 MiniLM-L6 encoder matrices (24 x 384x384, 6 x 1536x384, 6 x 384x1536), in fresh processes:

1. **cold**: an empty persistent compilation cache; counts the programs XLA compiles
   (``jax_log_compiles``) and their compile seconds, and times the ``analyze`` call;
2. **warm**: a second process on the same cache (every program stored: min compile time 0), under
   cProfile: the seconds spent tracing (``trace_to_jaxpr``), lowering to StableHLO
   (``lower_jaxpr_to_module``) and in the whole ``analyze`` call;
3. **compress after analyze**: a third process on that cache runs ``compress`` (its defaults): the programs
   and compile seconds that compressing an analysed model adds.

Also counts the eager primitive calls (``jax._src.dispatch.apply_primitive``: operations run one by one
outside a jitted program) of the cold call.

    python benchmarks/compiles.py                      # this checkout
    python benchmarks/compiles.py --tree /tmp/old      # also a checkout of another commit (its pdbjax/)
    python benchmarks/compiles.py --tree /tmp/old --rounds 4   # medians of 4 rounds, the trees alternating

Writes ``benchmarks/results/compiles.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pdbjax._atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
WHERE = r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"

#: The start of a child process: the persistent cache in ``sys.argv[1]`` (every program kept) and ``seconds``, the
#: compile seconds of each XLA program it compiles (``jax_log_compiles``).
COMPILE_LOG = r"""
import json, logging, re, sys, time
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_log_compiles", True)
seconds = []
class H(logging.Handler):
    def emit(self, r):
        m = re.search(r"Finished XLA compilation of .*? in ([0-9.e-]+) sec", r.getMessage())
        if m:
            seconds.append(float(m.group(1)))
h = H(); h.setLevel(logging.DEBUG)
for name in ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.compiler"):
    lg = logging.getLogger(name); lg.addHandler(h); lg.setLevel(logging.DEBUG)
"""

_CHILD = COMPILE_LOG + r"""
import cProfile, pstats
from jax._src import dispatch
eager = [0]
_apply = dispatch.apply_primitive
def counted(*args, **kwargs):
    eager[0] += 1
    return _apply(*args, **kwargs)
dispatch.apply_primitive = counted
import pdbjax
from pdbjax import io
params = io.load(io.minilm_path(), lazy=True)
prof = cProfile.Profile()
start = time.perf_counter()
prof.enable()
if sys.argv[3] == "compress":
    report = pdbjax.compress(params, where=sys.argv[2])[1]
else:
    report = pdbjax.analyze(params, where=sys.argv[2])
prof.disable()
wall = time.perf_counter() - start
stats = pstats.Stats(prof).stats
def cum(name):
    return max((v[3] for k, v in stats.items() if k[2] == name), default=0.0)
print(json.dumps({"rows": len(report.rows), "programs": len(seconds), "compile_s": sum(seconds), "analyze_s": wall,
                  "trace_s": cum("trace_to_jaxpr"), "lower_s": cum("lower_jaxpr_to_module"),
                  "module": pdbjax.__file__, "eager": eager[0]}))
"""


_FIELDS = ("programs", "eager", "compile_s", "analyze_s", "trace_s", "lower_s")


def _run(tree: Path, cache: str, verb: str = "analyze", where: str = WHERE) -> dict:
    return run_child(tree, _CHILD, cache, where, verb)


def run_child(tree: Path, child: str, *argv: str) -> dict:
    """Run the script ``child`` with ``argv`` in a fresh CPU process importing the pdbjax of ``tree``; its last
    line of output, a JSON object whose ``module`` (``pdbjax.__file__``) must lie in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    # cwd = the tree: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", child, *argv], env=env, cwd=tree, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["module"]).resolve().parent.parent != tree.resolve():
        raise RuntimeError(f"the child imported {result['module']}, not the pdbjax of {tree}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="another checkout whose pdbjax/ to measure too")
    ap.add_argument("--rounds", type=int, default=1, help="cold, warm and compress processes per tree and round, the "
                    "trees alternating within each round; the table gives medians (the machine is shared)")
    args = ap.parse_args()
    trees = [("this checkout", ROOT)] + [(t, Path(t)) for t in args.tree]
    runs: dict[str, list[tuple[dict, dict, dict]]] = {label: [] for label, _ in trees}
    for _ in range(args.rounds):
        for label, tree in trees:
            with tempfile.TemporaryDirectory() as cache:
                runs[label].append((_run(tree, cache), _run(tree, cache), _run(tree, cache, "compress")))
            print(label, *runs[label][-1], flush=True)
    rows = []
    for label, tree in trees:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        cold, warm, after = ({key: statistics.median(r[i][key] for r in runs[label]) for key in _FIELDS} for i in range(3))
        rows.append((label, commit, cold, warm, after))
    lines = [
        "# Compiled programs and per-process cost of `analyze` on MiniLM-L6 (36 encoder matrices)",
        "",
        f"Command: `python benchmarks/compiles.py{''.join(' --tree ' + t for t in args.tree)}"
        f"{f' --rounds {args.rounds}' if args.rounds > 1 else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"{args.rounds} round(s), medians. cold = fresh process, empty persistent cache; warm = a second fresh "
        "process on that cache (cProfile on; "
        "its overhead is in every column). analyze with its defaults (PDB + PUB-BEMA + PUB-Kernel + quality). "
        "compress after analyze = a third process on that cache running `compress` with its defaults (PDB, "
        "`upper-bulk`, spike shrinkage): what compressing an analysed model compiles.",
        "",
        "| pdbjax | commit | programs compiled (cold) | eager primitive calls | compile s (cold) | analyze s (cold) "
        "| analyze s (warm) | tracing s (warm) | lowering s (warm) | compress after analyze: programs compiled "
        "| compile s | compress s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, commit, cold, warm, after in rows:
        lines.append(f"| {label} | {commit} | {cold['programs']:g} | {cold['eager']:g} | {cold['compile_s']:.1f} | "
                     f"{cold['analyze_s']:.1f} | "
                     f"{warm['analyze_s']:.1f} | {warm['trace_s']:.1f} | {warm['lower_s']:.1f} | {after['programs']:g} | "
                     f"{after['compile_s']:.1f} | {after['analyze_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / "compiles.md", text)


if __name__ == "__main__":
    main()
