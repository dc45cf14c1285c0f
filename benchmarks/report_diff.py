"""What a change does to the MiniLM-L6 report: this checkout's ``analyze`` against another commit's, column by column.

Runs ``pdbjax.analyze`` on the 36 MiniLM-L6 encoder matrices (defaults: PDB fit plus both PUB baselines)
in a fresh process for this checkout and for ``--tree`` (a checkout of another commit, its ``pdbjax/``),
then compares the two reports row by row: for each column, whether it is identical, and otherwise the
largest relative difference ``|new - old| / |old|`` (integer and text columns: how many values differ).

    python benchmarks/report_diff.py --tree /tmp/old     # writes benchmarks/results/report_diff.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from pdbjax._atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
WHERE = r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"

_CHILD = r"""
import json, sys
import pdbjax
from pdbjax import io
print(json.dumps(pdbjax.analyze(io.load(io.minilm_path(), lazy=True), where=sys.argv[1]).rows))
"""


def _report(tree: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    # cwd = the tree: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", _CHILD, WHERE], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _leaves(value, path: str = ""):
    """``(column path, leaf)`` pairs of a row value (dicts and lists flattened, list items under ``[]``)."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield from _leaves(v, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, path + "[]")
    else:
        yield path, value


def compare(old: list[dict], new: list[dict]) -> dict[str, str]:
    """Per column: ``"identical"``, ``"max rel. diff X"`` (floats) or ``"N of M values differ"`` (others)."""
    if [r["name"] for r in old] != [r["name"] for r in new]:
        raise ValueError("the two reports list different matrices")
    worst: dict[str, float] = {}
    changed: dict[str, int] = {}
    seen: dict[str, int] = {}
    for a, b in zip(old, new):
        pairs = zip(_leaves(a), _leaves(b))
        for (col, x), (col_b, y) in pairs:
            if col != col_b:
                raise ValueError(f"column {col!r} against {col_b!r}: the reports have different layouts")
            seen[col] = seen.get(col, 0) + 1
            if isinstance(x, float) and isinstance(y, float):
                rel = 0.0 if x == y else abs(y - x) / max(abs(x), 1e-300)
                worst[col] = max(worst.get(col, 0.0), rel)
            else:
                changed[col] = changed.get(col, 0) + (x != y)
    out = {}
    for col, n in seen.items():
        if col in worst:
            out[col] = "identical" if worst[col] == 0 else f"max rel. diff {worst[col]:.2g}"
        else:
            out[col] = "identical" if changed[col] == 0 else f"{changed[col]} of {n} values differ"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, required=True, help="a checkout of the commit to compare against")
    args = ap.parse_args()
    old, new = _report(args.tree), _report(ROOT)
    result = compare(old, new)
    commit = lambda tree: subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],  # noqa: E731
                                         capture_output=True, text=True).stdout.strip()
    lines = [
        "# The MiniLM-L6 report: this checkout against another commit",
        "",
        f"Command: `python benchmarks/report_diff.py --tree {args.tree}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"`pdbjax.analyze` of the 36 encoder matrices (defaults), {len(new)} rows: this checkout ({commit(ROOT)}) "
        f"against {args.tree} ({commit(args.tree)}). Floats: the largest relative difference over the rows; "
        "other columns: how many values differ.",
        "",
        "| column | difference |",
        "|---|---|",
        *(f"| `{col}` | {text} |" for col, text in result.items()),
    ]
    out = ROOT / "benchmarks" / "results" / "report_diff.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    print(out.read_text(), end="")


if __name__ == "__main__":
    main()
