"""What padding spectra to a common length costs and saves: ``pdbjax.api.padded_length``.

``analyze`` and ``compress`` fit every spectrum of ``p`` singular values at the padded length
``P = padded_length(p)`` (512 up to 512, then the least power of two ``>= p``), with ``p`` as data, so the widths of a model
that pad to one ``P`` share one set of compiled programs. Two measurements:

1. **A call at the padded length** (in one process, steady state, compile excluded): ``spectrum_figures``
   (the PDB fit, both PUB fits and every figure: analyze's whole pass 2) of 8 spectra of Gaussian
   ``1.5p x p`` matrices at their own length ``p`` against the same spectra padded to ``P``, the two taking
   turns in each of ``--rounds`` rounds; and the first call at each length (its compile: seconds).
2. **Models of several widths** (fresh processes, empty persistent compilation cache): ``analyze`` of
   freshly initialised FCNN, VGG16 and ResNet18 of ``pdbjax.experiments.models`` (the paper's
   architectures: their kernels' spectrum lengths are listed), with this checkout and with ``--tree``
   checkouts of other commits: XLA programs compiled, their compile seconds, and the ``analyze`` call.
3. **What padding costs a model of one length** (``--minilm ROUNDS``, instead of 1 and 2): whole warm CLI
   processes (``pdbjax analyze`` of MiniLM-L6's 36 encoder matrices, p = 384, padded to 512 now), each
   checkout on its own persistent cache filled by a first run, the checkouts taking turns in each round.

    python benchmarks/padding.py --tree /tmp/prev --rounds 5        # 1 and 2: padding.md
    python benchmarks/padding.py --tree /tmp/prev --minilm 8        # 3: padding_minilm.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from compiles import COMPILE_LOG, WHERE, run_child

from pdbjax import figures, linalg
from pdbjax._atomic import atomic_write_text
from pdbjax.api import padded_length
from pdbjax.io import minilm_path
from pdbjax.linalg import Spectrum

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = (9, 27, 100, 384, 700, 1500, 3000)
MODELS = ("FCNN", "VGG16", "ResNet18")

_CHILD = COMPILE_LOG + r"""
from flax import nnx
import pdbjax
from pdbjax.experiments import models
model = getattr(models, sys.argv[2])(nnx.Rngs(0))
jax.block_until_ready(nnx.state(model))
seconds.clear()
start = time.perf_counter()
report = pdbjax.analyze(model)
wall = time.perf_counter() - start
lengths = sorted({r["p"] for r in report.rows if r.get("p")})
try:
    from pdbjax.api import padded_length
    padded = sorted({padded_length(p) for p in lengths})
except ImportError:  # a checkout before padding: one program set per length
    padded = None
print(json.dumps({"rows": len(report.rows), "programs": len(seconds), "compile_s": sum(seconds), "analyze_s": wall,
                  "lengths": lengths, "padded": padded, "module": pdbjax.__file__}))
"""


def _spectra(p: int) -> tuple[Spectrum, np.ndarray]:
    rng = np.random.default_rng(p)
    W = rng.standard_normal((8, p + p // 2, p)).astype(np.float32)
    return jax.device_get(linalg.spectrum(jnp.asarray(W))), np.full(8, p + p // 2)


def _padded(spec: Spectrum, size: int) -> Spectrum:
    return spec._replace(s=np.pad(spec.s, [(0, 0), (0, size - spec.s.shape[-1])]))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def call_costs(rounds: int) -> list[str]:
    """Part 1: ``spectrum_figures`` of 8 spectra at their own length and padded, steady state."""
    rows = []
    for p in LENGTHS:
        spec, N = _spectra(p)
        size = padded_length(p)
        padded, length = _padded(spec, size), np.full(8, p, np.int32)
        own = lambda spec=spec, N=N: figures.spectrum_figures(spec, N)  # noqa: E731
        pad = lambda padded=padded, N=N, length=length: figures.spectrum_figures(padded, N, length=length)  # noqa: E731
        first = {"own": _timed(own), "pad": _timed(pad) if size != p else float("nan")}
        times: dict[str, list[float]] = {"own": [], "pad": []}
        for _ in range(rounds):
            times["own"].append(_timed(own))
            if size != p:
                times["pad"].append(_timed(pad))
        ratio = [b / a for a, b in zip(times["own"], times["pad"])]
        best_pad = min(times["pad"]) if times["pad"] else float("nan")
        rows.append(f"| {p} | {size} | {1e3 * min(times['own']):.1f} | {1e3 * best_pad:.1f} | "
                    f"{min(times['pad'], default=float('nan')) / min(times['own']):.2f}x"
                    f"{f' ({statistics.median(ratio):.2f}x)' if ratio else ''} | {first['own']:.1f} | {first['pad']:.1f} |")
        print(rows[-1], flush=True)
    return rows


def model_costs(trees: list[tuple[str, Path]], rounds: int) -> list[str]:
    """Part 2: cold ``analyze`` of each model in fresh processes, the trees alternating in each round."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(rounds):
        for model in MODELS:
            for label, tree in trees:
                with tempfile.TemporaryDirectory() as cache:
                    runs.setdefault((model, label), []).append(run_child(tree, _CHILD, cache, model))
                print(model, label, runs[model, label][-1], flush=True)
    rows = []
    for model in MODELS:
        for label, tree in trees:
            rs = runs[model, label]
            commit = _commit(tree)
            med = {k: statistics.median(r[k] for r in rs) for k in ("programs", "compile_s", "analyze_s")}
            lengths = rs[0]["lengths"]
            rows.append(f"| {model} | {rs[0]['rows']} | {', '.join(map(str, lengths))} | "
                        f"{', '.join(map(str, rs[0]['padded'])) if rs[0]['padded'] else 'none'} | {label} ({commit}) | "
                        f"{med['programs']:g} | {med['compile_s']:.1f} | {med['analyze_s']:.1f} |")
    return rows


def minilm_warm(trees: list[tuple[str, Path]], rounds: int) -> list[str]:
    """Part 3: warm ``pdbjax analyze`` CLI processes on MiniLM, each tree on its own filled cache, alternating."""
    caches = {label: tempfile.mkdtemp() for label, _ in trees}

    def run(label: str, tree: Path) -> float:
        env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": caches[label]}
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "pdbjax", "analyze", str(minilm_path()), "--where", WHERE, "--json",
                   str(Path(out) / "r.json"), "--quiet"]
            start = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True)
            return time.perf_counter() - start

    for label, tree in trees:
        run(label, tree)  # fills the cache
    times: dict[str, list[float]] = {label: [] for label, _ in trees}
    for _ in range(rounds):
        for label, tree in trees:
            times[label].append(run(label, tree))
    base = times[trees[0][0]]
    return [f"| {label} ({_commit(tree)}) | {min(t):.2f} | {statistics.median(t):.2f} | "
            f"{statistics.median(a / b for a, b in zip(t, base)):.3f} |" for (label, tree), t in zip(trees, times.values())]


def _commit(tree: Path) -> str:
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD", "--", "pdbjax"]).returncode:
        commit += " with uncommitted changes"
    return commit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="another checkout whose pdbjax/ to measure too")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--minilm", type=int, metavar="ROUNDS", help="only part 3, this many rounds (padding_minilm.md)")
    args = ap.parse_args()
    trees = [("this checkout", ROOT)] + [(t, Path(t)) for t in args.tree]
    head = [f"Command: `python benchmarks/padding.py{''.join(' --tree ' + t for t in args.tree)} "
            f"{f'--minilm {args.minilm}' if args.minilm else f'--rounds {args.rounds}'}`  ",
            f"Machine: {platform.machine()} ({jax.default_backend()}), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
            f"jax {jax.__version__}; {datetime.datetime.now().isoformat(timespec='seconds')}"]
    if args.minilm:
        lines = [
            "# Padding spectra to a common length: what it costs a warm process on a model of one length", "", *head, "",
            f"`pdbjax analyze` of MiniLM-L6's 36 encoder matrices (p = 384) as whole CLI processes (`--quiet`, JSON "
            f"report), each checkout on its own persistent compilation cache filled by a first run, the checkouts taking "
            f"turns in each of {args.minilm} rounds.", "",
            "| pdbjax | best s | median s | per-round ratio to this checkout (median) |", "|---|---|---|---|",
            *minilm_warm(trees, args.minilm),
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        atomic_write_text(ROOT / "benchmarks" / "results" / "padding_minilm.md", text)
        return
    calls = call_costs(max(args.rounds, 5))
    models = model_costs(trees, args.rounds)
    lines = [
        "# Padding spectra to a common length: what a call costs, what a model compiles",
        "",
        *head,
        "",
        f"## 1. A call at the padded length ({max(args.rounds, 5)} rounds, best; per-round median ratio in brackets)",
        "",
        "`spectrum_figures` (PDB fit, PUB-BEMA, PUB-Kernel, every figure) of 8 spectra of Gaussian 1.5p x p matrices, "
        "steady state; first call = compile and run at that length (no persistent cache).",
        "",
        "| p | padded P | own length ms | padded ms | padded / own | first call s (own) | first call s (padded) |",
        "|---|---|---|---|---|---|---|",
        *calls,
        "",
        f"## 2. Models of several widths: cold `analyze` ({args.rounds} rounds, medians)",
        "",
        "Fresh process, empty persistent compilation cache, freshly initialised model of `pdbjax.experiments.models` "
        "(default selection: every kernel); XLA programs compiled and their seconds (`jax_log_compiles`), and the "
        "`analyze` call. The decompositions compile per matrix shape either way; the fits per spectrum length before, "
        "per padded length now.",
        "",
        "| model | matrices | spectrum lengths p | padded lengths P (none: a program set per p) | pdbjax | programs compiled "
        "| compile s | analyze s |",
        "|---|---|---|---|---|---|---|---|",
        *models,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / "padding.md", text)


if __name__ == "__main__":
    main()
