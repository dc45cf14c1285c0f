"""Tests of pdbjax.plot: figures of one matrix and of a model, PNG files, spectra named like report rows.

Rows are built by hand from a known population (no estimator runs here), so the tests are fast.
"""

from __future__ import annotations

import functools
import math
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from pdbjax import plot  # noqa: E402
from pdbjax.simulate import simulate  # noqa: E402
from pdbjax.spectral import PDB, edges, lambda_plus  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N, P, SPIKES = 200, 100, (30.0, 60.0)
POP = PDB(0.7, 1.0, 4.0)


@pytest.fixture(scope="module")
def matrix() -> np.ndarray:
    return np.asarray(simulate(jax.random.key(0), N, P, POP, SPIKES), np.float64)


@pytest.fixture(scope="module")
def eigs(matrix) -> np.ndarray:
    return np.linalg.svd(matrix, compute_uv=False) ** 2


@functools.lru_cache(maxsize=None)
def _support(c: float) -> tuple[float, list[float]]:
    return float(lambda_plus(POP, c)), [float(e) for e in np.asarray(edges(POP, c)) if np.isfinite(e)]


def _row(name: str = "dense/kernel", baselines: bool = True) -> dict:
    """A report row holding the true population, as a perfect fit would."""
    K = len(SPIKES)
    c = (P - K) / N
    lam_plus, betas = _support(c)
    row = {
        "name": name, "shape": [N, P], "N": N, "p": P, "K": K, "t": 0.7, "sigma1_sq": 1.0, "sigma2_sq": 4.0,
        "c": c, "lambda_plus": lam_plus, "edges": betas,
        "ks_pdb": 0.02, "rank_kept": {"spikes": K, "upper-bulk": 30}, "status": "ok",
    }
    if baselines:
        # the ratio each fit_pub uses: p / N for BEMA, (p - K0) / N for the Kernel (K0 = 12 here)
        for m, s2, k0 in (("bema", 1.8, 0), ("kernel", 2.1, 12)):
            row.update({f"K_{m}": 5, f"sigma_sq_{m}": s2, f"lambda_plus_{m}": s2 * (1 + math.sqrt((P - k0) / N)) ** 2,
                        f"ks_{m}": 0.1})
    return row


def _failed_row(name: str = "bad/kernel") -> dict:
    return {"name": name, "shape": [N, P], "N": N, "p": P, "K": 0, "t": None, "sigma1_sq": None,
            "sigma2_sq": None, "c": None, "lambda_plus": None, "edges": [], "status": "least squares did not converge"}


def _png(fig, path) -> bytes:
    plot._save_png(fig, path)
    return path.read_bytes()


def test_plot_matrix_draws_fit_edges_spikes(eigs, tmp_path):
    row = _row()
    ax = plot.plot_matrix(eigs, row)
    labels = [line.get_label() for line in ax.lines]
    assert {"PDB density", "PUB-BEMA density", "PUB-Kernel density", "PDB edges"} <= set(labels)
    # each curve is a probability density (the grid covers its support) that vanishes above its lambda_plus
    for label, edge in (("PDB", row["lambda_plus"]), ("PUB-BEMA", row["lambda_plus_bema"]),
                        ("PUB-Kernel", row["lambda_plus_kernel"])):
        curve = next(line for line in ax.lines if line.get_label() == f"{label} density")
        x, y = (np.asarray(v, np.float64) for v in curve.get_data())
        assert abs(np.trapezoid(y, x) - 1) < 0.03, label
        assert np.all(y[x > edge * 1.01] < 1e-6) and np.all(y >= 0)
    # vertical lines: every PDB edge and lambda_plus
    vlines = {float(np.asarray(line.get_xdata())[0]) for line in ax.lines if len(np.asarray(line.get_xdata())) == 2
              and np.ptp(np.asarray(line.get_xdata(), float)) == 0}
    for value in row["edges"] + [row["lambda_plus"]]:
        assert any(math.isclose(value, v, rel_tol=1e-9) for v in vlines)
    # one marker per eigenvalue above lambda_plus on a log axis (the whole spectrum is shown)
    ax_log = plot.plot_matrix(eigs, row, log_x=True)
    markers = next(line for line in ax_log.lines if line.get_label().startswith("spikes"))
    assert len(markers.get_xdata()) == int(np.sum(eigs > row["lambda_plus"])) >= len(SPIKES)
    assert ax_log.get_xscale() == "log"
    assert _png(ax.figure, tmp_path / "lin.png")[:8] == PNG_MAGIC
    assert _png(ax_log.figure, tmp_path / "log.png")[:8] == PNG_MAGIC


def test_plot_matrix_into_given_axes_without_baselines(eigs):
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 2)
    out = plot.plot_matrix(eigs, _row(), axes[1], baselines=False, title="custom")
    assert out is axes[1] and out.get_title() == "custom"
    assert not any("PUB" in line.get_label() for line in out.lines)
    assert not axes[0].lines


def test_plot_matrix_failed_fit_and_bad_input(eigs):
    ax = plot.plot_matrix(eigs, _failed_row())
    assert "did not converge" in ax.get_title()
    assert not any("density" in line.get_label() for line in ax.lines)
    with pytest.raises(ValueError, match="finite"):
        plot.plot_matrix(np.array([1.0, np.nan]), _row())


def test_an_all_zero_matrix_is_drawn_on_a_linear_axis_when_log_x_is_asked(tmp_path):
    """--plots --log-x on a model with an all-zero matrix: np.geomspace cannot start at 0, which stopped the CLI
    before the remaining figures; the matrix is drawn on a linear axis instead."""
    import pdbjax

    row = pdbjax.analyze({"z": {"kernel": np.zeros((64, 32), np.float32)}}, baselines=False)[0]
    ax = plot.plot_matrix(np.zeros(32), row, log_x=True)
    assert ax.get_xscale() == "linear" and _png(ax.figure, tmp_path / "zero.png")[:8] == PNG_MAGIC


def test_plot_summary_writes_png(tmp_path):
    rows = [_row("a/kernel"), _row("b/kernel"), _failed_row()]
    fig = plot.plot_summary(rows, tmp_path / "summary.png", title="model")
    assert (tmp_path / "summary.png").read_bytes()[:8] == PNG_MAGIC
    assert len(fig.axes) == 3 and fig.get_suptitle() == "model"  # K, ranks kept, KS
    fig = plot.plot_summary([_row(baselines=False)])
    assert len(fig.axes) == 3
    kernel_bars = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert kernel_bars == ["PDB K"]


def test_save_figures_atomic_files(eigs, tmp_path):
    rows = [_row("a/kernel"), _failed_row(), _row("not plotted")]
    out = tmp_path / "figs"
    (out).mkdir()
    (out / "summary.png").write_bytes(b"old")
    paths = plot.save_figures(rows, {"a/kernel": eigs, "bad/kernel": eigs}, out)
    assert [p.name for p in paths] == ["000_a_kernel.png", "001_bad_kernel.png", "summary.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temporary leftovers
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_spectra_named_like_rows(matrix):
    stacked = np.stack([matrix, 2 * matrix]).astype(np.float32)
    params = {"dense": {"kernel": matrix, "bias": np.zeros(P)}, "stack": {"kernel": stacked}}
    got = plot.spectra(params, layer_axis={"stack": 0})
    assert sorted(got) == ["dense/kernel", "stack/kernel[0]", "stack/kernel[1]"]
    want = np.linalg.svd(matrix, compute_uv=False) ** 2
    np.testing.assert_allclose(got["dense/kernel"], want, rtol=1e-4, atol=1e-8 * want[0])
    np.testing.assert_allclose(got["stack/kernel[1]"], 4 * want, rtol=1e-3, atol=1e-5 * want[0])
    assert np.all(np.diff(got["dense/kernel"]) <= 0)


def test_report_spectra_are_what_analyze_fitted(matrix):
    """analyze's Report.spectra: every analysed row, descending, in the weights' units; equal to
    plot.spectra's decomposition (float32 SVD: 1e-5 of the top eigenvalue covers the wide matrix decomposed
    as its transpose), and plot.spectra gives the same values in chunks of a small memory budget."""
    import pdbjax

    stacked = np.stack([matrix, 2 * matrix]).astype(np.float32)
    params = {"dense": {"kernel": matrix.astype(np.float32)}, "wide": {"kernel": matrix.T.astype(np.float32)},
              "stack": {"kernel": stacked}, "tiny": {"kernel": np.ones((4, 3), np.float32)}}
    report = pdbjax.analyze(params, layer_axis={"stack": 0}, on_error="skip", baselines=False)
    analysed = [r["name"] for r in report.rows if not r["status"].startswith("skipped")]
    # the 4 x 3 matrix is a row (too small to fit, flagged) with its 3 eigenvalues
    names = ["dense/kernel", "stack/kernel[0]", "stack/kernel[1]", "tiny/kernel", "wide/kernel"]
    assert sorted(report.spectra) == sorted(analysed) == names
    whole = plot.spectra(params, layer_axis={"stack": 0}, max_memory=None)
    small = plot.spectra(params, layer_axis={"stack": 0}, max_memory=1 << 20)  # one matrix per chunk
    want = np.linalg.svd(matrix, compute_uv=False) ** 2
    for name, lam in report.spectra.items():
        assert lam.dtype == np.float64 and lam.shape == ((3,) if name == "tiny/kernel" else (P,)) and np.all(np.diff(lam) <= 0)
        np.testing.assert_allclose(lam, whole[name], rtol=0, atol=1e-5 * lam[0])
        np.testing.assert_allclose(small[name], whole[name], rtol=0, atol=1e-6 * lam[0])
    np.testing.assert_allclose(report.spectra["stack/kernel[1]"], 4 * want, rtol=0, atol=1e-5 * 4 * want[0])
    assert report == pdbjax.report.Report(report.rows, report.totals)  # not part of ==


def test_missing_matplotlib_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install"):
        plot.require_matplotlib()
