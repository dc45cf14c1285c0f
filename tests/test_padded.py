"""Spectra of several lengths in one program: zero-padded to a common length, each row's ``p`` as data.

Every estimator must give the padded row the numbers of the unpadded spectrum (pdbjax.inputs): the
oracle here is the same function called on the spectrum at its own length.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tolerances import BATCH_PARTNERS, BATCH_PARTNERS_DIFFERENCE, assert_close

import pdbjax
from pdbjax import api, estimate, figures, pub
from pdbjax.api import padded_length
from pdbjax.filter import decide, fit_spectrum
from pdbjax.inputs import check_eigs, screen_rtol
from pdbjax.linalg import Spectrum, spectrum
from pdbjax.quality import _rice_bins

SIZE = 256
#: (N, p) of simulated PDB matrices: p from just above the TOO_SMALL limit (a 12 x 12 with too small a bulk) to SIZE.
SHAPES = [(12, 12), (90, 40), (64, 64), (300, 100), (400, 200), (600, 256)]


def _spectra():
    """Float64 spectra (each at its own length) of simulated PDB matrices with two spikes, and their N."""
    out = []
    for i, (n, p) in enumerate(SHAPES):
        W = pdbjax.simulate(jax.random.PRNGKey(i), n, p, pdbjax.PDB(0.7, 1.0, 5.0), spikes=[40.0, 20.0])
        out.append(jax.device_get(spectrum(np.asarray(W, np.float64)[None] * 0.01, precision="float64")))
    return out, np.array([n for n, _ in SHAPES])


def _padded(specs):
    s = np.concatenate([np.pad(sp.s, [(0, 0), (0, SIZE - sp.s.shape[-1])]) for sp in specs])
    return Spectrum(s, *(np.concatenate([getattr(sp, name) for sp in specs]) for name in ("scale", "finite", "kurtosis")))


def _within(values, thresholds, band=2 * BATCH_PARTNERS.rtol):
    """Whether any value lies within a relative ``band`` of its row's threshold: twice the tolerance to which the
    two sides' thresholds agree, so a count could differ there."""
    return any(np.any(np.abs(v / t - 1) <= band) for v, t in zip(values, thresholds) if np.isfinite(t))


def test_padded_rows_equal_each_spectrum_at_its_own_length():
    """spectrum_figures (the PDB fit, both PUB fits, their quality, the tail slope, every keep count) of six
    spectra padded to 256 in one call equals the same figures of each spectrum at its own length, to the
    tolerance of other batch partners (float64: XLA's reductions run over other lengths, in another order)."""
    specs, N = _spectra()
    with pdbjax.precision.scope(specs[0]):
        got = figures.spectrum_figures(_padded(specs), N, length=np.array([p for _, p in SHAPES]))
        want = [figures.spectrum_figures(sp, N[i : i + 1]) for i, sp in enumerate(specs)]
    for i, (_, p) in enumerate(SHAPES):
        row = jax.tree_util.tree_map(lambda x, i=i: x[i : i + 1], got)
        lam = specs[i].s[0] ** 2 * specs[i].scale[0] ** 2
        for name in ("pdb", "bema", "kernel"):
            assert int(row[name].reason[0]) == int(want[i][name].reason[0]), (p, name)
            for field in row[name]._fields:
                assert_close(np.asarray(getattr(row[name], field), float), np.asarray(getattr(want[i][name], field), float),
                             BATCH_PARTNERS, f"p={p} {name}.{field}")
            for field in row[f"q_{name}"]._fields:
                assert_close(np.asarray(getattr(row[f"q_{name}"], field), float),
                             np.asarray(getattr(want[i][f"q_{name}"], field), float),
                             BATCH_PARTNERS_DIFFERENCE if field == "moment_error" else BATCH_PARTNERS, f"p={p} q_{name}.{field}")
        assert_close(row["tail_slope"], want[i]["tail_slope"], BATCH_PARTNERS, f"p={p} tail_slope")
        edges = [row["pdb"].lambda_plus[0], row["bema"].lambda_plus[0], row["kernel"].lambda_plus[0], *row["pdb"].edges[0]]
        assert not _within([lam] * len(edges), edges)  # no eigenvalue at a count's threshold: counts compare exactly
        assert row["keep"] == want[i]["keep"], p
        assert int(row["n_outliers"][0]) == int(want[i]["n_outliers"][0])
    # The compared figures are fits: every row but the 12 x 12 one (too few bulk eigenvalues: NO_BULK, also compared).
    assert [int(r) for r in got["pdb"].reason] == [pdbjax.Reason.NO_BULK] + [pdbjax.Reason.OK] * 5


def test_padded_decisions_equal_each_spectrum_at_its_own_length():
    """compress's decisions (keep counts, outliers, new singular values) for padded rows: those of each
    spectrum at its own length, for a rule with both shrinkages and for a fixed removed fraction (decided on
    the host per row's p: round half to even)."""
    specs, N = _spectra()
    length = np.array([p for _, p in SHAPES])
    padded = _padded(specs)
    with pdbjax.precision.scope(specs[0]):
        fit = fit_spectrum(padded, N, "pdb", length=length)
        for rank, shrink in (("spikes", "spikes"), ("upper-bulk", "optimal"), (0.5, "none")):
            got = jax.device_get(decide(padded, fit, rank, shrink, length))
            for i, (_, p) in enumerate(SHAPES):
                one = jax.tree_util.tree_map(lambda x, i=i: x[i : i + 1], fit)
                want = jax.device_get(decide(specs[i], one, rank, shrink))
                assert int(got.keep[i]) == int(want.keep[0]), (p, rank)
                np.testing.assert_array_equal(got.replace[i, :p], want.replace[0])
                assert not got.replace[i, p:].any()
                assert_close(got.shrunk[i, :p], want.shrunk[0], BATCH_PARTNERS, f"p={p} {rank}")
    assert [int(k) for k in jax.device_get(decide(padded, None, 0.5, "none", length)).keep] == [round(p / 2) for p in length]


def test_padded_pdb_fit_matches_the_public_fit():
    """fit_pdb_batched of padded eigenvalues (unsorted within each row's p) against fit_pdb of each spectrum."""
    specs, N = _spectra()
    eigs = _padded(specs).s ** 2
    rng = np.random.default_rng(0)
    for i, (_, p) in enumerate(SHAPES):  # any order inside p: the fit sorts its rows, the padding stays last
        eigs[i, :p] = eigs[i, rng.permutation(p)]
    length = np.array([p for _, p in SHAPES])
    with pdbjax.precision.float64():
        n, window, length = estimate.fit_inputs(eigs, N, length)
        got = estimate.fit_pdb_batched(eigs, n, window, length, "scaled", estimate.N_ITER, screen_rtol(np.float64))
    for i, (_, p) in enumerate(SHAPES):
        want = pdbjax.fit_pdb(specs[i].s[0] ** 2, int(N[i]))
        assert abs(float(want.sphericity) - estimate.BULKS_Z) > 1e-3 * estimate.BULKS_Z  # bulks is not at its threshold
        assert int(got.K[i]) == int(want.K) and int(got.bulks[i]) == int(want.bulks), p
        assert_close(got.lambda_plus[i], want.lambda_plus, BATCH_PARTNERS, f"p={p}")


def test_bema_tables_hold_each_rows_own_ranks():
    """A padded row's BEMA table has the ranks and quantiles of its own p, then q = 0 and the last rank again."""
    n, table, length = pub.pub_inputs(np.zeros((2, 64)), np.array([90, 64]), pub.ALPHA, pub.BETA, np.array([40, 64]))
    ranks40 = pub._matched_ranks(40, pub.ALPHA)
    assert table.q.shape == table.index.shape == (2, pub._matched_ranks(64, pub.ALPHA).size)
    np.testing.assert_array_equal(table.index[0, : ranks40.size], ranks40 - 1)
    assert (table.index[0, ranks40.size :] == ranks40[-1] - 1).all() and (table.q[0, ranks40.size :] == 0).all()
    alone = pub.pub_inputs(np.zeros((1, 40)), 90, pub.ALPHA, pub.BETA)[1]
    np.testing.assert_array_equal(table.q[0, : ranks40.size], alone.q[0])
    assert table.edge[0] == alone.edge[0] and length.tolist() == [40, 64]


def test_rice_bins_are_exact():
    """ceil(2 p^(1/3)) in integer arithmetic: p = 27 has 6 bins (2 * 27 ** (1/3) is 6.000000000000001 in floats)."""
    p = np.arange(1, 5000)
    exact = np.array([next(b for b in range(1, 60) if b**3 >= 8 * q) for q in p])
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda q: _rice_bins(q, 60))(p)), exact)
    assert exact[26] == 6


def test_padded_length_buckets():
    assert [padded_length(p) for p in (1, 7, 8, 384, 512, 513, 2048, 2049)] == [1, 7, 512, 512, 512, 1024, 2048, 4096]
    assert padded_length(384, "reference") == 384


def test_check_eigs_checks_each_padded_row():
    """N >= p per row, and 1 <= length <= the padded length."""
    check_eigs(np.zeros((2, 64)), np.array([40, 64]), np.array([40, 64]))
    with pytest.raises(ValueError, match="N >= length per row"):
        check_eigs(np.zeros((2, 64)), np.array([40, 50]), np.array([40, 64]))
    with pytest.raises(ValueError, match="length <= 64"):
        check_eigs(np.zeros((1, 64)), np.array([90]), np.array([65]))


def test_a_model_of_several_widths_compiles_one_set_of_fits():
    """Widths 24, 40 and 64 pad to 512: analyze compiles one PDB fit, one PUB and one figures program for all
    three (after a first model of width 50 compiled them), and each row is its own matrix's figure."""
    rng = np.random.default_rng(1)
    first = {"d": {"kernel": rng.standard_normal((120, 50)).astype(np.float32)}}
    model = {f"d{p}": {"kernel": rng.standard_normal((3 * p, p)).astype(np.float32)} for p in (24, 40, 64)}
    pdbjax.analyze(first)
    programs = (estimate.fit_pdb_singular_values, figures._fit_baselines, figures._figures)
    before = [f._cache_size() for f in programs]
    report = pdbjax.analyze(model)
    assert [f._cache_size() for f in programs] == before
    for row, (name, leaf) in zip(report, model.items()):
        alone = pdbjax.analyze({name: leaf})[0]
        assert row["K"] == alone["K"] and row["bulks"] == alone["bulks"]
        assert_close(row["lambda_plus"], alone["lambda_plus"], BATCH_PARTNERS)
    assert api.padded_length(50) == 512
