r"""pdbjax against WeightWatcher: whole processes, wall time and peak memory on the same matrices.

Usage::

    python benchmarks/ww.py                                  # minilm + 400 MB float16 checkpoint, 3 rounds
    python benchmarks/ww.py --size small --repeat 1          # a quick check (a 16 MB float16 checkpoint)
    python benchmarks/ww.py --workloads minilm --repeat 2 --no-mp-fit
    python benchmarks/ww.py --snapshot HEAD --repeat minilm=2,f16=1 --mp-fit-on minilm --breakdown-on minilm

WeightWatcher (``weightwatcher``, the tool users run today) lives in its own virtual environment so
that the project's stays clean::

    python3 -m venv /work/wwvenv && /work/wwvenv/bin/pip install weightwatcher==0.7.7 safetensors

and ``--ww-python`` (default ``$WW_PYTHON`` or ``/work/wwvenv/bin/python``) names its interpreter.

Workloads (each tool reads the same ``.safetensors`` file and analyses the same 2-D matrices):

* ``minilm``: all-MiniLM-L6-v2 (:func:`pdbjax.io.minilm_path`, float32, 90 MB), its 36 encoder
  matrices (24 x 384x384, 6 x 1536x384, 6 x 384x1536; no embeddings, no pooler).
* ``f16``: a generated float16 checkpoint, written to a temporary directory (never the repository):
  ``--size full`` = 24 x 1024x4096 (``model.layers.i.mlp.down_proj.weight``) + 24 x 4096x1024
  (``...up_proj.weight``), 403 MB, plus a 1-D norm vector per layer that neither tool selects;
  ``--size small`` = 4 + 4 matrices of 512x2048 / 2048x512 (17 MB). Each matrix is Gaussian noise
  ``N(0, 1/n)`` plus 3 rank-one spikes of strengths 3, 5 and 8 (seeded).

Processes timed, alternating pdbjax and WeightWatcher in every round (the host is shared; a change of
load then hits both tools of a round alike):

1. ``pdbjax cold``: ``pdbjax analyze FILE --where REGEX --quiet --json OUT`` (the CLI with its defaults,
   i.e. the PDB fit and the PUB-BEMA / PUB-Kernel baselines) with ``JAX_COMPILATION_CACHE_DIR`` set to a
   fresh empty directory: every XLA program is compiled.
2. ``WW default``: a child of the WeightWatcher interpreter (this file with ``--ww-child``) that imports
   ``weightwatcher``, loads FILE with ``safetensors.numpy.load_file``, builds ``WeightWatcher(model=dict)``
   (a flat state dict: WeightWatcher's ``pystatedict`` framework, numpy arrays are used as they are) and
   runs ``analyze(layers=[names])`` with every other option at its default (power-law fit of each ESD).
3. ``pdbjax warm``: the same CLI command again on the cache directory that run 1 filled.
4. ``WW mp_fit``: as 2 with ``analyze(mp_fit=True)`` (adds the Marchenko-Pastur fit; ``--mp-fit-on``
   picks the workloads that run it, ``--no-mp-fit`` none).

WeightWatcher 0.7.7 imports ``torch`` by name when it meets a state dict. The child puts a stub module
``torch`` in ``sys.modules`` after ``import weightwatcher`` and before ``WeightWatcher(...)``: ``Tensor``
(a class no array is an instance of), ``nn.Module``, ``cuda.is_available() -> False`` and a version
string. WeightWatcher's own SVD choice is thus the one of a CPU-only torch install (SciPy). Selection:
pdbjax's ``--where`` regex and WeightWatcher's ``layers=`` name filter (the keys without ``.weight``)
pick the same matrices; the script asserts that both reports hold exactly the expected names.

Measured per process: wall seconds (``time.perf_counter`` around ``Popen`` -> ``os.wait4``), CPU seconds
(user + system of the child, all threads) and peak RSS (``ru_maxrss`` of ``os.wait4``'s rusage: the child
and any descendants it waited for). Reported: the median over ``--repeat`` rounds (min-max in brackets),
peak RSS (the largest of the rounds) in GiB and over the file size, and ratios pdbjax / WW default of the
medians. Two floors give the memory a scale: a process that only imports the pdbjax CLI and JAX and runs
one tiny JAX op, and one that only imports weightwatcher. A last ``pdbjax warm`` run (not in the table; ``--breakdown-on``)
without ``--quiet`` timestamps the CLI's progress lines to split a run into start-up + imports, file
load, analyze and the rest (report, JSON, exit).

``--snapshot REV`` benchmarks pdbjax as committed at ``REV`` (``git archive`` of ``pdbjax/`` put first on
the children's ``PYTHONPATH``) rather than the installed editable package, i.e. the live working tree.

Results: ``benchmarks/results/ww.{md,json}`` (``--size small``: ``ww_small.{md,json}``; ``--out STEM``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = Path(os.environ.get("PDBJAX_RESULTS_DIR", BENCH_DIR / "results"))
WORKLOADS = ("minilm", "f16")
GIB = 1024**3

# The targets (issue 9, item 7).
TARGET_WARM = 0.8  # warm CLI wall <= 0.8 x WW default analyze
TARGET_COLD = 1.5  # cold CLI wall <= 1.5 x WW default analyze
TARGET_F16 = 1.0  # 400 MB checkpoint: pdbjax wall <= 1.0 x WW
TARGET_RSS, GOAL_RSS = 2.0, 1.5  # peak RSS <= 2 x file size (goal 1.5 x)

MINILM_WHERE = (r"^encoder\.layer\.\d+\."
                r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$")
F16_WHERE = r"^model\.layers\.\d+\.mlp\.(up|down)_proj\.weight$"
F16_SIZES = {"full": (24, 1024, 4096), "small": (4, 512, 2048)}  # (layers, d_model, d_ff)
SPIKES = (3.0, 5.0, 8.0)


# --------------------------------------------------------------------------------------------------
# WeightWatcher child (runs under the WeightWatcher interpreter; stdlib + weightwatcher + safetensors)


def _torch_stub() -> Any:
    """The least of ``torch`` that WeightWatcher 0.7.7 touches on a state dict of numpy arrays."""
    import types

    torch = types.ModuleType("torch")
    torch.__version__ = "0.0+stub (no torch installed)"

    class Tensor:  # no numpy array is one, so WeightWatcher keeps the arrays as they are
        pass

    class Module:
        pass

    torch.Tensor = Tensor
    torch.nn = types.SimpleNamespace(Module=Module)
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    return torch


def ww_child(path: str, where: str, mp_fit: bool, out: str) -> None:
    t0 = time.perf_counter()
    import weightwatcher as ww  # imports torch lazily: without torch it logs one line and uses SciPy

    t1 = time.perf_counter()
    sys.modules.setdefault("torch", _torch_stub())
    from safetensors.numpy import load_file

    state = load_file(path)
    t2 = time.perf_counter()
    rx = re.compile(where)
    names = [k[: -len(".weight")] for k, v in state.items() if rx.search(k) and v.ndim == 2 and k.endswith(".weight")]
    watcher = ww.WeightWatcher(model=state)
    details = watcher.analyze(layers=names, mp_fit=mp_fit)
    t3 = time.perf_counter()
    status = details["status"].tolist() if "status" in details else []
    record = {
        "ww_version": ww.__version__,
        "analysed": [str(n) for n in details["name"].tolist()],
        "success": sum(1 for s in status if s == "success"),
        "shapes": sorted({(int(n), int(m)) for n, m in zip(details["N"], details["M"])}),
        "alpha_median": float(details["alpha"].median()) if "alpha" in details else None,
        "phases": {"import": t1 - t0, "load": t2 - t1, "analyze": t3 - t2},
    }
    with open(out, "w") as f:
        json.dump(record, f)


# --------------------------------------------------------------------------------------------------
# processes


def run_process(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                stderr_lines: bool = False) -> dict[str, Any]:
    """Run ``cmd`` to its end: wall and CPU seconds, peak RSS bytes (``os.wait4``), exit status, stderr.

    With ``stderr_lines`` every stderr line is returned with the second it arrived (after the start).
    """
    load = os.getloadavg()[0]
    err = tempfile.TemporaryFile() if not stderr_lines else subprocess.PIPE
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    lines = []
    if stderr_lines:
        for raw in proc.stderr:  # type: ignore[union-attr]
            lines.append((time.perf_counter() - start, raw.decode(errors="replace").rstrip()))
        proc.stderr.close()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if not stderr_lines:
        err.seek(0)  # type: ignore[union-attr]
        text = err.read().decode(errors="replace")  # type: ignore[union-attr]
        err.close()  # type: ignore[union-attr]
    else:
        text = "\n".join(line for _, line in lines)
    rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    result = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": int(rss),
              "rc": proc.returncode, "load1": load}
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}:\n{text[-3000:]}")
    if stderr_lines:
        result["stderr"] = lines
    return result


# Source tree of pdbjax that the CLI children import: None = the installed package (the working tree of an
# editable install), else a directory put first on PYTHONPATH (``--snapshot``).
PDBJAX_SRC: Path | None = None


def pdbjax_env(cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    if PDBJAX_SRC is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(PDBJAX_SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def pdbjax_cmd(path: Path, where: str, json_out: Path, quiet: bool = True) -> list[str]:
    head = [sys.executable, "-m", "pdbjax"]  # = the `pdbjax` console script (pdbjax.cli:console), honours PYTHONPATH
    return head + ["analyze", str(path), "--where", where, "--json", str(json_out)] + (["--quiet"] if quiet else [])


def run_pdbjax(path: Path, where: str, cache: Path, work: Path, tag: str, expected: list[str]) -> dict[str, Any]:
    out = work / f"pdbjax-{tag}.json"
    env = pdbjax_env(cache)
    res = run_process(pdbjax_cmd(path, where, out), env=env, cwd=str(work))
    rows = json.loads(out.read_text())
    names = [r["name"] for r in rows]
    assert sorted(names) == sorted(expected), f"pdbjax analysed {len(names)} matrices, expected {len(expected)}"
    res["matrices"] = len(names)
    res["ok"] = sum(1 for r in rows if r.get("status") == "ok")
    res["K_median"] = statistics.median(r["K"] for r in rows if r.get("K") is not None) if rows else None
    out.unlink()
    return res


def run_ww(ww_python: str, path: Path, where: str, mp_fit: bool, work: Path, tag: str, expected: list[str]) -> dict[str, Any]:
    out = work / f"ww-{tag}.json"
    cmd = [ww_python, str(Path(__file__).resolve()), "--ww-child", str(path), "--where", where, "--out", str(out)]
    cmd += ["--mp-fit"] if mp_fit else []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = run_process(cmd, env=env, cwd=str(work))
    rec = json.loads(out.read_text())
    want = sorted(n[: -len(".weight")] for n in expected)
    assert sorted(rec["analysed"]) == want, f"WW analysed {len(rec['analysed'])} matrices, expected {len(want)}"
    res.update(matrices=len(rec["analysed"]), ok=rec["success"], ww_version=rec["ww_version"],
               phases=rec["phases"], alpha_median=rec["alpha_median"])
    out.unlink()
    return res


def floors(ww_python: str, work: Path) -> dict[str, dict[str, Any]]:
    """Peak RSS and wall time of processes that only start each tool (the memory any run pays)."""
    pdb = [sys.executable, "-c", "import jax, jax.numpy as jnp, pdbjax.api, pdbjax.cli, pdbjax.io; "
           "jax.block_until_ready(jnp.ones(8) + 1)"]
    ww = [ww_python, "-c", "import weightwatcher, safetensors.numpy"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {"pdbjax import": run_process(pdb, env=pdbjax_env(), cwd=str(work)), "WW import": run_process(ww, env=env, cwd=str(work))}


def breakdown(path: Path, where: str, cache: Path, work: Path) -> dict[str, Any]:
    """One warm CLI run without ``--quiet``: the progress lines' arrival times split it into phases."""
    out = work / "pdbjax-breakdown.json"
    env = pdbjax_env(cache)
    res = run_process(pdbjax_cmd(path, where, out, quiet=False), env=env, cwd=str(work), stderr_lines=True)
    out.unlink(missing_ok=True)
    at = {}
    for t, line in res.pop("stderr"):
        for key, prefix in (("loading", "loading "), ("fitting", "fitting "), ("analyzed", "analyzed "), ("wrote", "wrote ")):
            if line.startswith(prefix) and key not in at:
                at[key] = t
                if key == "analyzed":
                    m = re.search(r"in ([0-9.]+) s", line)
                    at["analyze_reported"] = float(m.group(1)) if m else None
    if not {"loading", "fitting", "analyzed", "wrote"} <= at.keys():
        return {"wall_s": res["wall_s"], "note": "progress lines not found"}
    return {
        "wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "peak_rss": res["peak_rss"],
        "startup_imports_s": at["loading"], "load_s": at["fitting"] - at["loading"],
        "analyze_s": at["analyzed"] - at["fitting"], "analyze_reported_s": at.get("analyze_reported"),
        "report_json_exit_s": res["wall_s"] - at["analyzed"],
    }


# --------------------------------------------------------------------------------------------------
# workloads


def make_f16(directory: Path, size: str, seed: int = 0) -> tuple[Path, list[str]]:
    """The generated float16 checkpoint and the names of its matrices (see the module docstring)."""
    import numpy as np
    from safetensors.numpy import save_file

    layers, d, f = F16_SIZES[size]
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for i in range(layers):
        for name, (m, n) in (("up_proj", (f, d)), ("down_proj", (d, f))):
            W = rng.standard_normal((m, n), dtype=np.float32)
            W *= 1.0 / np.sqrt(max(m, n))  # bulk singular values <= 1 + sqrt(min/max)
            for s in SPIKES:
                u = rng.standard_normal(m, dtype=np.float32)
                v = rng.standard_normal(n, dtype=np.float32)
                W += (s / (np.linalg.norm(u) * np.linalg.norm(v))) * np.outer(u, v)
            tensors[f"model.layers.{i}.mlp.{name}.weight"] = W.astype(np.float16)
            del W
        tensors[f"model.layers.{i}.norm.weight"] = np.ones(d, dtype=np.float16)
    path = directory / f"f16-{size}.safetensors"
    save_file(tensors, str(path))
    names = sorted(k for k in tensors if re.search(F16_WHERE, k))
    return path, names


def minilm() -> tuple[Path, list[str]]:
    sys.path.insert(0, str(REPO_DIR))
    from safetensors import safe_open

    import pdbjax.io  # the package's __init__ imports JAX in this (parent) process; only the path is used

    path = Path(pdbjax.io.minilm_path())
    with safe_open(str(path), "np") as f:
        names = sorted(k for k in f.keys() if re.search(MINILM_WHERE, k) and len(f.get_slice(k).get_shape()) == 2)
    assert len(names) == 36, f"expected the 36 MiniLM encoder matrices, found {len(names)}"
    return path, names


def shapes_of(path: Path, names: list[str]) -> str:
    from collections import Counter

    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        counts = Counter(tuple(f.get_slice(k).get_shape()) for k in names)
        dtypes = sorted({f.get_slice(k).get_dtype() for k in names})
    return ", ".join(f"{c} x {m}x{n}" for (m, n), c in counts.items()) + f" ({'/'.join(dtypes)})"


# --------------------------------------------------------------------------------------------------
# one workload


def bench_workload(name: str, path: Path, names: list[str], where: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    size = path.stat().st_size
    repeat, mp_fit, want_breakdown = args.repeat[name], name in args.mp_fit_on, name in args.breakdown_on
    print(f"== {name}: {path} ({size / 1e6:.0f} MB), {len(names)} matrices: {shapes_of(path, names)}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"pdbjax cold": [], "WW default": [], "pdbjax warm": []}
    if mp_fit:
        runs["WW mp_fit"] = []
    cache = None
    for r in range(repeat):
        cache = Path(tempfile.mkdtemp(prefix=f"jaxcache-{name}-{r}-", dir=work))
        steps = [
            ("pdbjax cold", lambda: run_pdbjax(path, where, cache, work, f"{name}-cold-{r}", names)),
            ("WW default", lambda: run_ww(args.ww_python, path, where, False, work, f"{name}-{r}", names)),
            ("pdbjax warm", lambda: run_pdbjax(path, where, cache, work, f"{name}-warm-{r}", names)),
        ]
        if mp_fit:
            steps.append(("WW mp_fit", lambda: run_ww(args.ww_python, path, where, True, work, f"{name}-mp-{r}", names)))
        for label, step in steps:
            res = step()
            runs[label].append(res)
            print(f"  round {r + 1}/{repeat} {label:12s} {res['wall_s']:7.1f} s wall {res['cpu_s']:7.1f} s cpu "
                  f"{res['peak_rss'] / GIB:5.2f} GiB  {res['matrices']} matrices (ok {res['ok']})  load {res['load1']:.1f}",
                  flush=True)
        if r < repeat - 1:
            shutil.rmtree(cache)
    bd = breakdown(path, where, cache, work) if want_breakdown else None  # type: ignore[arg-type]
    if bd:
        print(f"  breakdown (warm, not quiet): {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in bd.items()})}",
              flush=True)
    shutil.rmtree(cache)  # type: ignore[arg-type]
    return {"file": str(path), "file_bytes": size, "matrices": len(names), "shapes": shapes_of(path, names),
            "where": where, "repeat": repeat, "runs": runs, "summary": summarise(runs, size), "breakdown": bd}


def summarise(runs: dict[str, list[dict[str, Any]]], size: int) -> dict[str, dict[str, Any]]:
    out = {}
    for label, rs in runs.items():
        walls, cpus = [x["wall_s"] for x in rs], [x["cpu_s"] for x in rs]
        rss = max(x["peak_rss"] for x in rs)
        out[label] = {"wall_median": statistics.median(walls), "wall_min": min(walls), "wall_max": max(walls),
                      "cpu_median": statistics.median(cpus), "peak_rss_gib": rss / GIB, "rss_over_file": rss / size,
                      "matrices": rs[0]["matrices"], "ok": min(x["ok"] for x in rs)}
    base = out["WW default"]
    for s in out.values():
        s["wall_ratio"] = s["wall_median"] / base["wall_median"]
        s["cpu_ratio"] = s["cpu_median"] / base["cpu_median"]
    return out


# --------------------------------------------------------------------------------------------------
# report


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
        mem = f", {kib / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    versions = []
    for pkg in ("pdbjax", "jax", "jaxlib", "numpy"):
        try:
            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return (f"CPU ({cpu}), {platform.machine()}, {os.cpu_count()} CPU cores visible{mem}; Python {platform.python_version()}; "
            + ", ".join(versions))


def _target(label: str, workload: str, s: dict[str, Any]) -> str:
    """The issue's time target of a row and whether the measured ratio meets it."""
    if not label.startswith("pdbjax"):
        return ""
    parts = []
    if workload == "f16":
        parts.append((TARGET_F16, s["wall_ratio"]))
    parts.append((TARGET_WARM if label.endswith("warm") else TARGET_COLD, s["wall_ratio"]))
    limit = min(p[0] for p in parts)
    return f"<= {limit:.1f}x: {'met' if s['wall_ratio'] <= limit else 'NOT met'}"


def _rss_target(label: str, s: dict[str, Any]) -> str:
    if not label.startswith("pdbjax"):
        return ""
    x = s["rss_over_file"]
    return "met (goal met)" if x <= GOAL_RSS else ("met (goal not)" if x <= TARGET_RSS else "NOT met")


def render_md(data: dict[str, Any]) -> str:
    lines = [
        "# pdbjax vs WeightWatcher: whole-process time and peak memory",
        "",
        f"Written by `{data['command']}` on {data['date']}; raw numbers in `{data['json_name']}`.",
        "",
        f"* Machine: {data['machine']}",
        f"* pdbjax: {data['pdbjax_source']}",
        f"* WeightWatcher {data['ww_version']} (its own venv, `{data['ww_python']}`, torch stubbed: SciPy SVD), "
        f"Python {data['ww_python_version']}",
        f"* Load average (1/5/15 min) at the start {data['load_start']}, at the end {data['load_end']}; "
        f"the 2 cores were shared with other jobs, so wall times are inflated and noisy: compare the ratios of a "
        f"round, and the CPU-seconds column.",
        "* Rounds: " + ", ".join(f"{w} {v['repeat']}" for w, v in data["workloads"].items()) + "; each round runs "
        "`pdbjax cold`, `WW default`, `pdbjax warm` and (where listed) `WW mp_fit` in turn; medians (min-max), "
        "peak RSS = largest of the rounds.",
        "",
        "| workload | file | process | matrices (ok) | wall s, median (min-max) | CPU s | wall / WW default | CPU / WW default "
        "| time target | peak RSS GiB | RSS / file | RSS target (<= 2x, goal 1.5x) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wname, w in data["workloads"].items():
        file_txt = f"{w['file_bytes'] / 1e6:.0f} MB"
        for label, s in w["summary"].items():
            lines.append(
                f"| {wname} | {file_txt} | {label} | {s['matrices']} ({s['ok']}) | {s['wall_median']:.1f} "
                f"({s['wall_min']:.1f}-{s['wall_max']:.1f}) | {s['cpu_median']:.1f} | {s['wall_ratio']:.2f}x | "
                f"{s['cpu_ratio']:.2f}x | {_target(label, wname, s)} | {s['peak_rss_gib']:.2f} | {s['rss_over_file']:.1f}x | "
                f"{_rss_target(label, s)} |"
            )
    lines += ["", "Floors (a process that only starts the tool):", ""]
    for label, f in data["floors"].items():
        lines.append(f"* {label}: {f['wall_s']:.1f} s wall, {f['cpu_s']:.1f} s CPU, peak RSS {f['peak_rss'] / GIB:.2f} GiB")
    lines += ["", "Where the time goes: pdbjax warm (where `--breakdown-on` asked for it: one extra warm run without "
              "`--quiet`, its progress lines timestamped as they arrive on stderr), and WeightWatcher's phases (median "
              "over its default runs, timed inside the child):", ""]
    for wname, w in data["workloads"].items():
        bd = w.get("breakdown")
        sm = w["summary"]
        saved = (f"cold - warm (medians) = {sm['pdbjax cold']['wall_median'] - sm['pdbjax warm']['wall_median']:.1f} s wall, "
                 f"{sm['pdbjax cold']['cpu_median'] - sm['pdbjax warm']['cpu_median']:.1f} s CPU (the XLA compilation that "
                 "the persistent cache saves)")
        if bd and "startup_imports_s" in bd:
            lines.append(
                f"* {wname} pdbjax warm: {bd['wall_s']:.1f} s = start-up + imports {bd['startup_imports_s']:.1f} s, "
                f"file load {bd['load_s']:.1f} s, analyze {bd['analyze_s']:.1f} s, report + JSON + exit "
                f"{bd['report_json_exit_s']:.1f} s; {saved}"
            )
        else:
            lines.append(f"* {wname} pdbjax: {saved}")
        ph = [r["phases"] for r in w["runs"]["WW default"]]
        med = {k: statistics.median(p[k] for p in ph) for k in ph[0]}
        wall = w["summary"]["WW default"]["wall_median"]
        lines.append(f"* {wname} WW default: {wall:.1f} s = import weightwatcher {med['import']:.1f} s, load {med['load']:.1f} s, "
                     f"analyze {med['analyze']:.1f} s, interpreter start + exit {wall - sum(med.values()):.1f} s")
    lines += [
        "",
        "Selection: pdbjax `--where` = the regex below; WeightWatcher `analyze(layers=[...])` = the same keys without "
        "`.weight` (asserted: both reports list exactly these matrices).",
        "",
    ]
    for wname, w in data["workloads"].items():
        lines.append(f"* {wname}: `{w['where']}` -> {w['matrices']} matrices: {w['shapes']}")
    lines += [
        "",
        "Targets (issue 9, item 7): warm CLI <= 0.8x WW default analyze; cold CLI <= 1.5x; the 400 MB checkpoint "
        "<= 1.0x WW's time (f16 rows: the stricter of this and the cold/warm target); peak RSS <= 2x the file size "
        "(goal 1.5x). pdbjax = `pdbjax analyze FILE --where REGEX --quiet --json OUT` with its defaults (PDB fit "
        "plus the PUB-BEMA and PUB-Kernel baselines); cold = fresh empty `JAX_COMPILATION_CACHE_DIR`, warm = the "
        "second run on it. WW default = `WeightWatcher(model=state_dict).analyze(layers=names)` after "
        "`safetensors.numpy.load_file`, in a fresh interpreter (import included); WW mp_fit adds `mp_fit=True`. "
        "Wall = the whole process; CPU = user + system seconds of the process (all threads); peak RSS = "
        "`ru_maxrss` from `os.wait4`.",
        "",
    ]
    return "\n".join(lines)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _workload_set(text: str) -> set[str]:
    names = {w.strip() for w in text.split(",") if w.strip()}
    if names - set(WORKLOADS):
        raise argparse.ArgumentTypeError(f"unknown workload(s) {sorted(names - set(WORKLOADS))}; known: {', '.join(WORKLOADS)}")
    return names


def _per_workload_int(text: str) -> dict[str, int]:
    if re.fullmatch(r"\d+", text.strip()):
        return {w: int(text) for w in WORKLOADS}
    out = {w: 3 for w in WORKLOADS}
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+)\s*", part)
        if not m or m.group(1) not in WORKLOADS:
            raise argparse.ArgumentTypeError(f"expected N or WORKLOAD=N,... with WORKLOAD in {', '.join(WORKLOADS)}; got {text!r}")
        out[m.group(1)] = int(m.group(2))
    if min(out.values()) < 1:
        raise argparse.ArgumentTypeError("repeats must be >= 1")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=_per_workload_int, default={w: 3 for w in WORKLOADS},
                    help="rounds per workload: N, or WORKLOAD=N,... (e.g. minilm=2,f16=1); default 3")
    ap.add_argument("--size", choices=tuple(F16_SIZES), default="full", help="size of the generated f16 checkpoint")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {','.join(WORKLOADS)}")
    ap.add_argument("--ww-python", default=os.environ.get("WW_PYTHON", "/work/wwvenv/bin/python"),
                    help="interpreter of the WeightWatcher venv (default $WW_PYTHON or /work/wwvenv/bin/python)")
    ap.add_argument("--mp-fit-on", type=_workload_set, default=set(WORKLOADS), metavar="WORKLOADS",
                    help="workloads that also time WW analyze(mp_fit=True) (comma-separated; default all; '' = none)")
    ap.add_argument("--no-mp-fit", dest="mp_fit_on", action="store_const", const=set(), help="= --mp-fit-on ''")
    ap.add_argument("--breakdown-on", type=_workload_set, default=set(WORKLOADS), metavar="WORKLOADS",
                    help="workloads that get the extra timestamped warm pdbjax run (default all; '' = none)")
    ap.add_argument("--snapshot", metavar="REV", default=None,
                    help="benchmark pdbjax as committed at REV (git archive into the temporary directory, first on "
                         "PYTHONPATH) instead of the installed package / working tree; e.g. HEAD")
    ap.add_argument("--tmp", default=None, help="directory for the generated checkpoint and caches (default: system temp)")
    ap.add_argument("--out", default=None, help="results stem, without suffix (default benchmarks/results/ww; "
                    "--size small: benchmarks/results/ww_small)")
    # the WeightWatcher child
    ap.add_argument("--ww-child", metavar="FILE", help=argparse.SUPPRESS)
    ap.add_argument("--where", help=argparse.SUPPRESS)
    ap.add_argument("--mp-fit", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ww_child:
        ww_child(args.ww_child, args.where, args.mp_fit, args.out)
        return

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    if not Path(args.ww_python).exists():
        raise SystemExit(f"{args.ww_python} not found: python3 -m venv /work/wwvenv && "
                         "/work/wwvenv/bin/pip install weightwatcher==0.7.7 safetensors")
    command = "python " + shlex.join(["benchmarks/ww.py"] + (sys.argv[1:] if argv is None else list(argv)))
    stem = Path(args.out) if args.out else RESULTS_DIR / ("ww" if args.size == "full" else "ww_small")
    ww_python_version = subprocess.run([args.ww_python, "-c", "import platform; print(platform.python_version())"],
                                       capture_output=True, text=True, check=True).stdout.strip()
    load_start = "%.1f / %.1f / %.1f" % os.getloadavg()
    print(f"{machine_line()}; load average {load_start}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="pdbjax-ww-", dir=args.tmp))
    data: dict[str, Any] = {
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_line(),
        "ww_python": args.ww_python, "ww_python_version": ww_python_version, "repeat": {w: args.repeat[w] for w in workloads},
        "mp_fit_on": sorted(args.mp_fit_on), "size": args.size, "load_start": load_start, "json_name": stem.name + ".json",
        "targets": {"warm_over_ww": TARGET_WARM, "cold_over_ww": TARGET_COLD, "f16_over_ww": TARGET_F16,
                    "rss_over_file": TARGET_RSS, "rss_over_file_goal": GOAL_RSS},
        "workloads": {},
    }
    try:
        global PDBJAX_SRC
        if args.snapshot:
            rev = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", args.snapshot], capture_output=True,
                                 text=True, check=True).stdout.strip()
            PDBJAX_SRC = work / "src"
            PDBJAX_SRC.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO_DIR), "archive", rev, "pdbjax"], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(PDBJAX_SRC)], input=archive.stdout, check=True)
            data["pdbjax_source"] = f"commit {rev} (git archive, --snapshot {args.snapshot})"
        else:
            dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "pdbjax"], capture_output=True,
                                   text=True).stdout.strip()
            head = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
            data["pdbjax_source"] = f"installed package (working tree at {head}{', with uncommitted changes' if dirty else ''})"
        print(f"pdbjax: {data['pdbjax_source']}", flush=True)
        data["floors"] = floors(args.ww_python, work)
        for f in data["floors"].values():
            f.pop("rc", None)
        for w in workloads:
            if w == "minilm":
                path, names, where = *minilm(), MINILM_WHERE
            else:
                t = time.perf_counter()
                path, names = make_f16(work, args.size)
                where = F16_WHERE
                print(f"generated {path} in {time.perf_counter() - t:.1f} s", flush=True)
            data["workloads"][w] = bench_workload(w, path, names, where, args, work)
            if w == "f16":
                path.unlink()
        data["ww_version"] = next(r["ww_version"] for w in data["workloads"].values() for r in w["runs"]["WW default"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["load_end"] = "%.1f / %.1f / %.1f" % os.getloadavg()
    for w in data["workloads"].values():
        if w["file"].startswith(str(work)):
            w["file"] = "(generated, temporary) " + Path(w["file"]).name
    md = render_md(data)
    atomic_write(stem.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    atomic_write(stem.with_suffix(".md"), md)
    print()
    print(md)
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


if __name__ == "__main__":
    main()
