"""pdbjax.figures: analyze's one-program figures equal the public functions called one by one."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tolerances import ONE_PROGRAM, assert_close

import pdbjax
from pdbjax import api, estimate, exported, figures
from pdbjax.filter import fit_spectrum, keep_counts, normalised_fit, outlier_mask
from pdbjax.linalg import spectrum
from pdbjax.precision import scope
from pdbjax.quality import HEAVY_TAIL_KS, HEAVY_TAIL_SLOPE, fit_quality, heavy_tailed, tail_slope

P = 40  # every matrix has p = 40; N differs (data of the program)


def _spectra(shapes, seed=0):
    """One Spectrum per (N, p) shape of simulated PDB matrices, concatenated into one batch of length p."""
    mats = [np.asarray(pdbjax.simulate(jax.random.PRNGKey(seed + i), n, P, pdbjax.PDB(0.7, 1.0, 5.0), spikes=[40.0, 20.0]))
            for i, (n, _) in enumerate(shapes)]
    specs = [spectrum(m[None] * 0.01) for m in mats]  # units away from 1: the rescaling is exercised
    spec = jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *specs)
    return jax.tree_util.tree_map(jax.numpy.asarray, spec), np.array([n for n, _ in shapes])


def _one_by_one(spec, N):
    """The same figures from the public functions, each its own program."""
    fits = {"pdb": fit_spectrum(spec, N, "pdb"), **{m: fit_spectrum(spec, N, f"pub-{m}") for m in figures.BASELINES}}
    units = np.asarray(spec.scale, np.float64) ** 2
    with scope(spec):
        eigs = spec.s**2
        normed = {name: normalised_fit(fit, spec) for name, fit in fits.items()}
        quality = {name: fit_quality(eigs, N, fit) for name, fit in normed.items()}
        out = {**fits, **{f"q_{n}": jax.tree_util.tree_map(np.asarray, q).rescale(units) for n, q in quality.items()}}
        out["tail_slope"] = np.asarray(tail_slope(eigs))
        out["heavy_tailed"] = np.asarray(heavy_tailed(eigs, N, normed["pdb"], quality["pdb"]))
        out["n_outliers"] = np.asarray(outlier_mask(eigs, normed["pdb"]).sum(-1))
    out["keep"] = {"spikes": keep_counts(spec, fits["pdb"], "spikes"), "upper-bulk": keep_counts(spec, fits["pdb"], "upper-bulk"),
                   **{f"pub-{m}": keep_counts(spec, fits[m], "spikes") for m in figures.BASELINES}}
    return out


def _near(eigs: np.ndarray, *thresholds: np.ndarray) -> np.ndarray:
    """Per row, how many eigenvalues lie within twice ONE_PROGRAM's rtol of one of the thresholds: a count
    that compares eigenvalues with such a threshold may differ by that many between the two programs."""
    band = 2 * ONE_PROGRAM.rtol
    return sum(np.sum(np.abs(eigs / np.asarray(t, np.float64)[:, None] - 1) <= band, axis=-1) for t in thresholds)


def test_one_program_equals_the_public_functions():
    spec, N = _spectra([(80, P), (160, P), (80, P)])
    got, want = figures.spectrum_figures(spec, N), _one_by_one(spec, N)
    assert list(got["keep"]) == ["spikes", "upper-bulk", "auto", "pub-bema", "pub-kernel"]
    eigs = np.asarray(spec.s, np.float64) ** 2 * np.asarray(spec.scale, np.float64)[:, None] ** 2  # W's units
    # Counts at a threshold (no exact equality there): the floats agree to ONE_PROGRAM, so a count may move
    # by the eigenvalues that sit that close to its threshold (a PUB-Kernel edge here is 2.7e-4 from one).
    slack = {name: _near(eigs, want[name].lambda_plus) for name in ("pdb", *figures.BASELINES)}
    pdb = want["pdb"]
    edges = np.nan_to_num(np.asarray(pdb.edges, np.float64), nan=np.inf)
    slack["outliers"] = slack["pdb"] + _near(eigs, edges[:, 1], edges[:, 2])
    share = np.where(pdb.sigma1_sq > pdb.sigma2_sq, pdb.t, 1 - pdb.t) * (P - want["n_outliers"])
    assert np.all(np.abs(share - np.floor(share) - 0.5) > 0.05)  # upper-bulk's rounding is not at a tie
    assert np.all(np.abs(np.asarray(pdb.sphericity) - estimate.BULKS_Z) > 0.1)  # bulks is not at its threshold
    for name in ("pdb", *figures.BASELINES):
        for field in got[name]._fields:
            a, b = np.asarray(getattr(got[name], field)), np.asarray(getattr(want[name], field))
            if np.issubdtype(b.dtype, np.floating):
                assert_close(a, b, ONE_PROGRAM, f"{name}.{field}")
            elif field == "K":
                assert np.all(np.abs(a - b) <= slack[name]), (name, a, b, slack[name])
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{name}.{field}")
        for field in ("moments", "model_moments", "ks", "l2"):
            assert_close(getattr(got[f"q_{name}"], field), getattr(want[f"q_{name}"], field), ONE_PROGRAM, f"q_{name}.{field}")
    assert_close(got["tail_slope"], want["tail_slope"], ONE_PROGRAM)
    ks, slope = np.asarray(want["q_pdb"].ks), np.asarray(want["tail_slope"])
    assert np.all(np.abs(ks - HEAVY_TAIL_KS) > 1e-3) and np.all(np.abs(slope - HEAVY_TAIL_SLOPE) > 1e-3)
    np.testing.assert_array_equal(got["heavy_tailed"], want["heavy_tailed"])
    allowed = {"n_outliers": slack["outliers"], "spikes": slack["pdb"], "upper-bulk": slack["outliers"],
               **{f"pub-{m}": slack[m] for m in figures.BASELINES}}
    pairs = [("n_outliers", got["n_outliers"], want["n_outliers"])]
    pairs += [(rule, got["keep"][rule], np.asarray(keep)) for rule, keep in want["keep"].items()]
    for key, a, b in pairs:
        assert np.all(np.abs(np.asarray(a) - b) <= allowed[key]), (key, a, b, allowed[key])
    assert (got["pdb"].K >= 2).all() and got["pdb"].ok.all()  # the spikes are found: the comparison is not vacuous
    assert sum(int(v.sum()) for v in slack.values()) < 3  # and nearly every count is compared exactly


def test_reference_mode_reports_the_float64_fit_of_the_raw_eigenvalues():
    spec, N = _spectra([(80, P), (120, P)], seed=7)
    got = figures.spectrum_figures(spec, N, mode="reference", baselines=False)
    want = fit_spectrum(spec, N, "pdb", mode="reference")
    for field in want._fields:
        np.testing.assert_array_equal(np.asarray(getattr(got["pdb"], field)), np.asarray(getattr(want, field)), err_msg=field)
    assert set(got) == {"pdb", "q_pdb", "tail_slope", "heavy_tailed", "n_outliers", "keep"}
    assert list(got["keep"]) == ["spikes", "upper-bulk", "auto"]


def test_one_compilation_whatever_n(tmp_path):
    """Spectra of one length and batch size share the three programs however their N differ; with the exported
    cache on, a second process-like call (memory cleared) loads them instead of tracing again."""
    spec, N = _spectra([(80, P), (160, P)], seed=3)
    figures.spectrum_figures(spec, N)
    programs = (estimate.fit_pdb_singular_values, figures._fit_baselines, figures._figures)
    before = [program._cache_size() for program in programs]
    figures.spectrum_figures(spec, np.array([400, 90]))
    assert [program._cache_size() for program in programs] == before
    exported.enable(tmp_path)
    try:
        figures.spectrum_figures(spec, N)
        exported._state["memory"].clear()
        counts = exported.stats()
        again = figures.spectrum_figures(spec, N)
        assert exported.stats()["loaded"] == counts["loaded"] + len(programs)
        assert again["pdb"].ok.all()
    finally:
        exported.disable()


@pytest.mark.parametrize("baselines", [True, False])
def test_analyze_rows_come_from_the_program(baselines):
    W = np.asarray(pdbjax.simulate(jax.random.PRNGKey(11), 120, P, pdbjax.PDB(0.7, 1.0, 5.0), spikes=[40.0]))
    row = pdbjax.analyze({"w": W}, where="w", baselines=baselines).rows[0]
    spec = spectrum(W[None])
    fig = figures.spectrum_figures(spec, np.array([120]), baselines=baselines)
    assert row["K"] == int(fig["pdb"].K[0]) and row["rank_kept"] == {k: int(v[0]) for k, v in fig["keep"].items()}
    assert ("K_bema" in row) == baselines


def test_unknown_mode_is_refused_before_any_decomposition(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "spectrum", lambda *args, **kwargs: calls.append(args))
    W = np.ones((20, 10), np.float32)
    for fn in (pdbjax.analyze, pdbjax.compress):
        with pytest.raises(ValueError, match="mode must be .*'fast'"):
            fn({"w": W}, where="w", mode="fast")
    with pytest.raises(ValueError, match="mode must be .*'fast'"):
        figures.spectrum_figures(spectrum(W[None]), np.array([20]), mode="fast")
    with pytest.raises(ValueError, match="N must be an int >= p"):
        figures.spectrum_figures(spectrum(W[None]), np.array([5]))
    assert calls == []


def test_compress_fits_in_analyze_program():
    """compress's PDB fit (rule ranks) is the program analyze compiled for the same spectra: a model analysed
    first is not compiled again, and every rule keeps what analyze reported."""
    params = {f"l{i}": {"kernel": np.asarray(pdbjax.simulate(jax.random.PRNGKey(20 + i), 120, P,
                                                             pdbjax.PDB(0.7, 1.0, 5.0), spikes=[40.0]))}
              for i in range(2)}
    report = pdbjax.analyze(params, baselines=False)
    programs = (estimate.fit_pdb_singular_values, estimate.fit_pdb_batched)  # the shared one; a fit of its own
    before = [program._cache_size() for program in programs]
    for rule in ("spikes", "upper-bulk"):
        _, rep = pdbjax.compress(params, rank=rule)
        assert [r["keep"] for r in rep] == [r["rank_kept"][rule] for r in report]
    assert [program._cache_size() for program in programs] == before
