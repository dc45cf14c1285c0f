"""What a second selection of the same model compiles: ``analyze`` of four selections of MiniLM-L6 in turn,
each a fresh process on one persistent cache (empty before the first).

The fits run in calls of :data:`pdbjax.api.FIT_ROWS` rows per spectrum length (the last padded with copies
of a first row), so any selection of matrices of lengths analysed before reuses their compiled fits. Before
that (6e70be8 to c205b32) they ran at one of the sizes 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ...
(``fit_batch``), so only a count in the size of one analysed before reused them; before 6e70be8 every new
count compiled them again. The selections:

1. the 36 encoder matrices (24 x 384x384, 6 x 1536x384, 6 x 384x1536), as in ``ww.py`` and ``compiles.py``;
2. the same and the pooler (37, one more 384x384);
3. the 30 matrices of layers 0-4;
4. the 24 attention matrices;
5. the 6 matrices of layer 0;
6. one matrix (layer 0's query).

    python benchmarks/selections.py                  # this checkout
    python benchmarks/selections.py --tree /tmp/old  # and a checkout of another commit, alternating

Columns from ``compiles.py``'s child process (cProfile on): the programs XLA built (JAX logs a program read
from the persistent cache like one it compiled), the seconds that took, and the ``analyze`` call's seconds.
Writes ``benchmarks/results/selections.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from compiles import WHERE, _run

from pdbjax._atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
_LAYER = r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight"
SELECTIONS = (
    ("36 encoder matrices", WHERE),
    ("37: the 36 and the pooler", rf"^(encoder\.layer\.\d+\.{_LAYER}|pooler\.dense\.weight)$"),
    ("30: layers 0-4", rf"^encoder\.layer\.[0-4]\.{_LAYER}$"),
    ("24 attention matrices", r"^encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight$"),
    ("6: layer 0", rf"^encoder\.layer\.0\.{_LAYER}$"),
    ("1: layer 0's query", r"^encoder\.layer\.0\.attention\.self\.query\.weight$"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="another checkout whose pdbjax/ to measure too")
    args = ap.parse_args()
    trees = [("this checkout", ROOT)] + [(t, Path(t)) for t in args.tree]
    caches = {label: tempfile.TemporaryDirectory() for label, _ in trees}
    results: dict[str, list[dict]] = {label: [] for label, _ in trees}
    for name, where in SELECTIONS:  # the trees alternate within each selection (the machine is shared)
        for label, tree in trees:
            results[label].append(_run(tree, caches[label].name, "analyze", where))
            print(label, name, results[label][-1], flush=True)
    lines = [
        "# A second selection of the same model: what `analyze` compiles (MiniLM-L6, one cache per checkout)",
        "",
        f"Command: `python benchmarks/selections.py{''.join(' --tree ' + t for t in args.tree)}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        "Each row a fresh process on the checkout's cache, in the order shown (the first starts empty); cProfile on "
        "(`compiles.py`'s child), so the seconds are inflated alike.",
        "",
        "| pdbjax | commit | selection | rows | programs built (compiled or read from the cache) | seconds building them "
        "| analyze s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, tree in trees:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        for (name, _), r in zip(SELECTIONS, results[label]):
            lines.append(f"| {label} | {commit} | {name} | {r['rows']} | {r['programs']} | {r['compile_s']:.1f} | {r['analyze_s']:.1f} |")
    for cache in caches.values():
        cache.cleanup()
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(ROOT / "benchmarks" / "results" / "selections.md", text)


if __name__ == "__main__":
    main()
