"""Peak memory of ``pdbjax analyze`` on a 400 MB float16 checkpoint against the ``--max-memory`` budget.

The checkpoint is ``benchmarks/ww.py``'s (24 x 1024x4096 + 24 x 4096x1024 float16 matrices with spikes,
403 MB). One cold run fills a fresh compilation cache, then one warm whole-process run per budget:
wall and CPU seconds and peak RSS (``os.wait4``), against the file size and against a process that only
imports pdbjax. The CLI memory-maps the file and decomposes each shape group in chunks that fit the budget.
The checkpoint is generated in a child process and this parent imports neither pdbjax nor JAX: on Linux
a child's ``ru_maxrss`` includes what it inherited at ``fork``, so a large parent inflates every figure.

    python benchmarks/memory.py [--budgets 256M,512M,1G,4G]    # writes benchmarks/results/memory.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ww import F16_WHERE, pdbjax_env, run_process  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="256M,512M,1G,4G")
    args = ap.parse_args()
    budgets = args.budgets.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); from ww import make_f16; "
                f"from pathlib import Path; p, names = make_f16(Path({str(work)!r}), 'full'); print(len(names))")
        n_matrices = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        path = work / "f16-full.safetensors"
        size = path.stat().st_size
        env = pdbjax_env(cache)
        base = [sys.executable, "-m", "pdbjax", "analyze", str(path), "--where", F16_WHERE, "--quiet", "--no-baselines"]
        floor = run_process([sys.executable, "-c", "import pdbjax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()"], env=env)
        run_process(base + ["--json", str(work / "cold.json"), "--max-memory", budgets[0]], env=env)  # fill the cache
        for budget in budgets:
            res = run_process(base + ["--json", str(work / f"{budget}.json"), "--max-memory", budget], env=env)
            rows.append((budget, res))
            print(budget, res, flush=True)
    lines = [
        "# Peak memory of `pdbjax analyze` against `--max-memory` (403 MB float16 checkpoint, warm cache)",
        "",
        f"Command: `python benchmarks/memory.py --budgets {args.budgets}`  ",
        f"Machine: {os.uname().machine}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"File: {size / 1e6:.0f} MB, {n_matrices} matrices (24 x 1024x4096, 24 x 4096x1024, float16); `--no-baselines`. "
        f"A process that only imports pdbjax and runs one op peaks at {floor['peak_rss'] / 2**30:.2f} GiB.",
        "",
        "| --max-memory | wall s | CPU s | peak RSS GiB | peak RSS / file | (peak - import floor) / file |",
        "|---|---|---|---|---|---|",
    ]
    for budget, res in rows:
        lines.append(f"| {budget} | {res['wall_s']:.1f} | {res['cpu_s']:.1f} | {res['peak_rss'] / 2**30:.2f} | "
                     f"{res['peak_rss'] / size:.2f}x | {(res['peak_rss'] - floor['peak_rss']) / size:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    # Not pdbjax._atomic: importing pdbjax would put JAX into this parent, whose size every child inherits.
    out = Path(__file__).resolve().parent / "results" / "memory.md"
    tmp_out = out.with_suffix(".md.tmp")
    tmp_out.write_text(text)
    tmp_out.replace(out)


if __name__ == "__main__":
    main()
