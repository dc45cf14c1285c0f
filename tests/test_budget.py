"""Storage budgets: ``compress(budget=f)``, ``pdbjax compress --budget``, and :mod:`pdbjax.budget`.

Oracles: the greedy against a one-component-at-a-time implementation and against exhaustive search on
tiny problems (pure NumPy); compliance of ``compress`` checked from the report and the written file
with exact integer arithmetic; rebuilds against a float64 NumPy SVD; the spike score against the
Marchenko-Pastur closed form of spec section 4.
"""

from __future__ import annotations

import contextlib
import copy
import io as _io
import itertools
import math
from fractions import Fraction

import jax
import numpy as np
import pytest
from flax import nnx

import pdbjax
from pdbjax import budget as bud
from pdbjax.cli import main
from pdbjax.experiments.models import FCNN
from pdbjax.filter import estimate_fit, filter_matrix
from pdbjax.fits import PUBFit

A, B = 96, 48  # p = 48 everywhere below (with N = 96 or 144), so the PDB fit compiles once


def _pdb(seed: int, N: int = A, p: int = B, spikes=(60.0, 40.0)) -> np.ndarray:
    return np.array(pdbjax.simulate(jax.random.PRNGKey(seed), N, p, pdbjax.PDB(0.7, 1.0, 4.0), spikes=spikes))


# --------------------------------------------------------------------------------------------------
# The greedy against independent oracles (NumPy only)


def _one_at_a_time(scores: np.ndarray, cost: np.ndarray, cap: int, fill: bool) -> np.ndarray:
    """Reference greedy: repeatedly take, among each matrix's next component that still fits, the best
    one (components above the edge first, then score per parameter, then the lower matrix index)."""
    M, P = scores.shape
    keep, left = np.zeros(M, np.int64), cap
    while True:
        best = None
        for i in range(M):
            if keep[i] >= P:
                continue
            s = scores[i, keep[i]]
            if not (np.isfinite(s) and s > 0) or (not fill and s <= 1) or cost[i] > left:
                continue
            key = (s <= 1, -(s / cost[i]), i)
            if best is None or key < best[0]:
                best = (key, i)
        if best is None:
            return keep
        keep[best[1]] += 1
        left -= cost[best[1]]


def _random_problem(rng: np.random.Generator, equal_cost: bool = False):
    M, P = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    scores = -np.sort(-rng.exponential(1.5, (M, P)), axis=1)  # descending rows, about half above 1
    cut = rng.integers(0, P + 1, M)  # NaN padding (shorter spectra) and exact zeros (rank deficiency)
    scores[np.arange(P) >= cut[:, None]] = np.nan
    scores[rng.random((M, P)) < 0.1] = 0.0
    scores = -np.sort(-np.nan_to_num(scores, nan=-1.0), axis=1)
    scores[scores < 0] = np.nan
    cost = np.full(M, 7) if equal_cost else rng.integers(1, 20, M)
    cap = int(rng.integers(0, int(np.sum(cost) * P) + 2))
    return scores, cost, cap


@pytest.mark.parametrize("fill", [True, False])
def test_greedy_equals_one_at_a_time_oracle(fill):
    rng = np.random.default_rng(0)
    for _ in range(400):
        scores, cost, cap = _random_problem(rng)
        keep = bud.greedy(scores, cost, cap, fill=fill)
        np.testing.assert_array_equal(keep, _one_at_a_time(scores, cost, cap, fill))


def _brute_force(scores, cost, cap, tier0_only):
    """Best total score over every integer allocation (keep counts) that fits in ``cap``."""
    usable = np.isfinite(scores) & (scores > 0) & ((scores > 1) if tier0_only else True)
    n_usable = usable.sum(axis=1)  # usable components form a prefix of each row
    values = np.where(usable, scores, 0.0).cumsum(axis=1)
    best = 0.0
    for keep in itertools.product(*(range(k + 1) for k in n_usable)):
        if np.dot(keep, cost) <= cap:
            best = max(best, sum(values[i, k - 1] for i, k in enumerate(keep) if k))
    return best


def test_greedy_against_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(300):
        equal = trial % 3 == 0
        scores, cost, cap = _random_problem(rng, equal_cost=equal)
        for fill in (True, False):
            keep = bud.greedy(scores, cost, cap, fill=fill)
            used = int(np.dot(keep, cost))
            assert used <= cap
            usable = np.isfinite(scores) & (scores > 0) & ((scores > 1) if not fill else True)
            n_usable = usable.sum(axis=1)
            assert np.all(keep <= n_usable)
            # maximal: no matrix has a usable component left that would still fit
            assert not np.any((keep < n_usable) & (cost <= cap - used))
        # fill=False: the total score is at most one component short of the exhaustive optimum,
        # and exactly optimal when all components cost the same
        keep = bud.greedy(scores, cost, cap, fill=False)
        got = sum(np.nansum(scores[i, :k]) for i, k in enumerate(keep))
        best = _brute_force(scores, cost, cap, tier0_only=True)
        top = np.nanmax(np.where(scores > 1, scores, np.nan)) if np.any(scores > 1) else 0.0
        assert got <= best + 1e-12
        assert got >= best - top - 1e-12
        if equal:
            assert got == pytest.approx(best, rel=1e-12)


def test_allocate_cap_is_exact_and_names_dense_matrices():
    scores = np.array([[5.0, 2.0, 0.5], [9.0, 1.5, 0.2], [np.nan] * 3])
    shapes = [(10, 3), (7, 3), (20, 3)]
    dense = 30 + 21 + 60
    alloc = bud.allocate(scores, shapes, 0.9, names=["a", "b", "zeros"])
    assert alloc.dense == dense and alloc.cap == math.floor(Fraction(0.9) * dense) == 99
    assert alloc.params[2] == 60  # not allocatable: counted dense, 39 parameters left
    # visiting order (score per parameter): b 9/10, a 5/13, a 2/13, b 1.5/10 (no longer fits: 3 left),
    # then the components below the edge, a 0.5/13 and b 0.2/10, which do not fit either
    np.testing.assert_array_equal(alloc.keep, [2, 1, 0])
    np.testing.assert_array_equal(alloc.params, [26, 10, 60])
    assert alloc.ratio <= 0.9
    with pytest.raises(ValueError, match=r"zeros.*at least 0\.540541,"):  # 60 / 111 = 0.5405405..., rounded up
        bud.allocate(scores, shapes, 0.5, names=["a", "b", "zeros"])
    assert bud.allocate(scores, shapes, 0.540541).params[2] == 60  # the suggested budget holds them
    # 3200 / 15400 = 0.2077922...: printed to 6 digits it rounded down to 0.207792, whose cap is 3199
    shapes, fixed_only = [(160, 20), (100, 122)], np.array([False, True])  # D = 15400, 3200 not allocatable
    with pytest.raises(ValueError, match=r"at least 0\.207793,"):
        bud.allocate(np.full((2, 5), np.nan), shapes, 0.1, allocatable=fixed_only)
    assert bud.allocate(np.full((2, 5), np.nan), shapes, 0.207793, allocatable=fixed_only).params[0] == 3200


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_bad_budget_values(bad):
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        bud.check_budget(bad)
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        pdbjax.compress({"d": {"kernel": np.ones((4, 3), np.float32)}}, budget=bad)


@pytest.mark.parametrize("bad", [True, "0.5", [0.5]])
def test_budget_of_wrong_type(bad):
    with pytest.raises(TypeError, match="budget must be a number"):
        pdbjax.compress({"d": {"kernel": np.ones((4, 3), np.float32)}}, budget=bad)


def test_budget_conflicts_and_empty_selection():
    tree = {"d": {"kernel": np.ones((4, 3), np.float32)}}
    with pytest.raises(ValueError, match="either rank= or budget="):
        pdbjax.compress(tree, rank="spikes", budget=0.5)
    with pytest.raises(ValueError, match="SLR"):
        pdbjax.compress(tree, method="slr", budget=0.5)
    with pytest.raises(ValueError, match="no weight matrix selected"):
        pdbjax.compress({"d": {"bias": np.ones(3, np.float32)}}, budget=0.5)


def test_spike_score_matches_marchenko_pastur_closed_form():
    """PUB (spec section 4): alpha = (l + s(1-c) + sqrt((l + s(1-c))^2 - 4 l s)) / 2, alpha_max = s (1 + sqrt c)."""
    s, c = 2.0, 0.25
    edge = s * (1 + math.sqrt(c)) ** 2  # 4.5
    fit = PUBFit(K=np.int32(0), sigma_sq=np.float64(s), c=np.float64(c), lambda_plus=np.float64(edge),
                 threshold=np.float64(edge), ok=np.bool_(True), reason=np.int32(0))
    lam = np.array([30.0, 9.0, 6.0, 4.0, 1.0, np.nan])
    b = lam + s * (1 - c)
    alpha = (b + np.sqrt(np.maximum(b * b - 4 * lam * s, 0.0))) / 2  # only used above the edge
    want = np.where(lam > edge, alpha / (s * (1 + math.sqrt(c))), lam / edge)
    got = bud.component_scores(lam, fit, "spike")
    np.testing.assert_allclose(got, want, rtol=1e-9)  # bisection in float64 to ~1e-12 relative
    np.testing.assert_allclose(bud.component_scores(lam, fit, "edge"), lam / edge, rtol=0)
    assert np.array_equal(got > 1, lam > edge)


# --------------------------------------------------------------------------------------------------
# filter_matrix with an array of keep counts


def test_filter_takes_per_matrix_keep_counts():
    W = np.stack([_pdb(s) for s in range(3)])
    keeps = np.array([0, 5, 100])
    out, info = filter_matrix(W, "svd", keeps)
    np.testing.assert_array_equal(info.keep, [0, 5, B])
    for i, k in enumerate(keeps):
        single, _ = filter_matrix(W[i], "svd", int(k))
        np.testing.assert_allclose(out[i], single, atol=1e-6 * np.abs(single).max())  # batch = loop (float32 rounding)
    U, s, Vh = np.linalg.svd(W[1].astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(out[1], (U[:, :5] * s[:5]) @ Vh[:5], atol=2e-5 * s[0])  # float32 SVD
    run = jax.jit(lambda w, k: filter_matrix(w, "svd", k)[0])
    run(W, np.array([1, 2, 3], np.int32))
    run(W, np.array([4, 0, 9], np.int32))
    assert run._cache_size() == 1  # keep counts are traced, not compiled in
    with pytest.raises(ValueError, match=">= 0"):
        filter_matrix(W, "svd", np.array([1, -1, 2]))
    with pytest.raises(TypeError, match="integer keep counts"):
        filter_matrix(W, "svd", np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="do not broadcast"):
        filter_matrix(W, "svd", np.array([1, 2]))
    np.testing.assert_array_equal(filter_matrix(W, "svd", np.int64(7))[1].keep, [7, 7, 7])  # a 0-d array is an int


# --------------------------------------------------------------------------------------------------
# compress(budget=...): compliance on every kind of tree


def _check_compliance(rep: pdbjax.Report, budget: float, fill: bool = True) -> None:
    """Achieved storage <= floor(budget * dense), and no further component of any matrix would fit (with
    ``fill=False``, as ``shrink="optimal"`` allocates: no further component above the noise edge)."""
    rows = [r for r in rep if "budget_params" in r]
    dense = sum(r["params_before"] for r in rows)
    cap = math.floor(Fraction(budget) * dense)
    after = sum(r["budget_params"] for r in rows)
    t = rep.totals
    assert (t["budget"], t["budget_cap"], t["budget_params_after"]) == (budget, cap, after)
    assert after <= cap and t["budget_ratio"] == after / dense <= budget
    left = cap - after
    for r in rows:
        m, n = r["matrix_shape"]
        if r["status"] == "ok" and r["budget_params"] != m * n:  # (m n: a layer of a stacked leaf stored dense)
            assert r["budget_params"] == r["keep"] * (m + n)
            top = r["p"] if fill else r["n_outliers"]  # optimal shrinkage: n_outliers = components above lambda_+
            assert r["keep"] <= top and (r["keep"] == top or m + n > left), r["name"]  # the next would not fit


def _trees():
    stack = np.stack([_pdb(s, spikes=sp) for s, sp in ((0, (60.0,)), (1, (80.0, 50.0, 30.0)), (2, ()))])
    conv = _pdb(4, N=144).reshape(3, 3, 16, B)
    model = FCNN(nnx.Rngs(0), sizes=(A, B, A))
    return {
        "dict": ({"d1": {"kernel": _pdb(0), "bias": np.zeros(B, np.float32)}, "d2": {"kernel": _pdb(1).T},
                  "d3": {"kernel": _pdb(2, N=144, spikes=(90.0, 70.0, 50.0, 30.0)) * 1e-3}}, {}),
        "stacked": ({"blocks": {"kernel": stack}}, {"layer_axis": 0, "method": "svd"}),
        "conv": ({"conv": {"kernel": conv}, "dense": {"kernel": _pdb(5)}}, {"shrink": "optimal"}),
        "nnx": (nnx.state(model), {}),
    }


@pytest.mark.parametrize("kind", ["dict", "stacked", "conv", "nnx"])
def test_compress_budget_is_met_and_filled(kind):
    params, options = _trees()[kind]
    before = jax.tree_util.tree_map(np.array, params)
    factored = kind == "dict"
    new, rep = pdbjax.compress(params, budget=0.2, factored=factored, **options)
    _check_compliance(rep, 0.2, fill=options.get("shrink") != "optimal")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, before)  # the caller's params are untouched
    rows = {r["name"]: r for r in rep}
    if kind == "dict":
        for name in ("d1", "d2", "d3"):
            low = new[name]["kernel"]
            assert isinstance(low, pdbjax.LowRank) and low.a.shape[-1] == rows[f"{name}/kernel"]["keep"] >= 1
        np.testing.assert_array_equal(new["d1"]["bias"], params["d1"]["bias"])
    elif kind == "stacked":  # method svd: plain truncation at the allocated keep, against float64 NumPy
        assert [rows[f"blocks/kernel[{i}]"]["layer"] for i in range(3)] == [0, 1, 2]
        for i in range(3):
            k = rows[f"blocks/kernel[{i}]"]["keep"]
            U, s, Vh = np.linalg.svd(params["blocks"]["kernel"][i].astype(np.float64), full_matrices=False)
            np.testing.assert_allclose(new["blocks"]["kernel"][i], (U[:, :k] * s[:k]) @ Vh[:k], atol=2e-5 * s[0])
    elif kind == "conv":
        assert new["conv"]["kernel"].shape == (3, 3, 16, B) and rows["conv/kernel"]["matrix_shape"] == [144, B]
        for name, leaf in (("conv/kernel", new["conv"]["kernel"].reshape(144, B)), ("dense/kernel", new["dense"]["kernel"])):
            # optimal shrinkage: only components above the edge are allocated, and the rank is the keep
            assert rows[name]["keep"] <= rows[name]["n_outliers"]
            assert np.linalg.matrix_rank(leaf.astype(np.float64), tol=1e-4) <= rows[name]["keep"]
    else:
        assert isinstance(new, nnx.State) and [r["name"] for r in rep] == ["layers/0/kernel", "layers/1/kernel"]


def test_allocation_is_scale_invariant_per_layer():
    params = {f"l{i}": {"kernel": _pdb(10 + i, spikes=sp)} for i, sp in enumerate(((60.0, 40.0), (200.0,), (30.0, 25.0, 20.0)))}
    scaled = copy.deepcopy(params)
    scaled["l1"]["kernel"] = scaled["l1"]["kernel"] * 1000.0
    reports = [pdbjax.compress(p, method="svd", budget=0.12)[1] for p in (params, scaled)]
    _check_compliance(reports[1], 0.12)
    assert [r["keep"] for r in reports[0]] == [r["keep"] for r in reports[1]]
    # both scores, from the fits directly (float32 SVDs of W and 1000 W differ in the last bits)
    for name in ("edge", "spike"):
        per_tree = []
        for tree in (params, scaled):
            W = np.stack([tree[k]["kernel"] for k in sorted(tree)])
            lam = np.asarray(pdbjax.eigenvalues(W, precision="float64"))
            scores = bud.component_scores(lam, estimate_fit(lam, A, "pdb"), name)
            per_tree.append((scores, bud.allocate(scores, [(A, B)] * 3, 0.12).keep))
        np.testing.assert_allclose(per_tree[0][0], per_tree[1][0], rtol=1e-6)  # measured 2.5e-8
        np.testing.assert_array_equal(per_tree[0][1], per_tree[1][1])


def test_unfitted_leaves_stay_dense_and_count():
    nan = _pdb(1)
    nan[3, 4] = np.nan
    params = {"good": {"kernel": _pdb(0)}, "zero": {"kernel": np.zeros((A, B), np.float32)}, "nan": {"kernel": nan}}
    new, rep = pdbjax.compress(params, budget=0.6, factored=True, on_error="skip")
    _check_compliance(rep, 0.6)
    rows = {r["name"]: r for r in rep}
    assert rows["zero/kernel"]["status"].startswith("unchanged") and rows["zero/kernel"]["budget_params"] == A * B
    left = new["zero"]["kernel"]  # left dense (a copy, as in dense mode), not stored as full-rank factors
    assert isinstance(left, np.ndarray) and left is not params["zero"]["kernel"]
    np.testing.assert_array_equal(left, params["zero"]["kernel"])
    assert rows["nan/kernel"]["status"].startswith("skipped") and "budget_params" not in rows["nan/kernel"]
    np.testing.assert_array_equal(new["nan"]["kernel"], nan)  # skipped at selection: outside the count
    assert rep.totals["params_before"] == 2 * A * B
    with pytest.raises(ValueError, match=r"zero/kernel.*at least 0\.5\b"):
        pdbjax.compress(params, budget=0.4, on_error="skip")
    # Factored, a stacked leaf with an unfitted layer is stored dense (that layer's exact factors would take
    # p (m + n) > m n, and every layer the leaf's width): each layer counted at m n, the fitted one keeping all p.
    stack = np.stack([_pdb(0), np.zeros((A, B), np.float32)])
    with pytest.raises(ValueError, match=r"s/kernel\[0\], s/kernel\[1\]; use a budget of at least 1\b"):
        pdbjax.compress({"s": {"kernel": stack}}, budget=0.9, factored=True, layer_axis=0)
    params = {"s": {"kernel": stack}, "g": {"kernel": np.stack([_pdb(1)])}}
    new, rep = pdbjax.compress(params, budget=0.8, factored=True, layer_axis=0)
    _check_compliance(rep, 0.8)
    rows = {r["name"]: r for r in rep}
    assert rows["s/kernel[1]"]["status"].startswith("unchanged") and rows["s/kernel[0]"]["status"] == "ok"
    assert rows["s/kernel[0]"]["keep"] == B and rows["s/kernel[0]"]["budget_params"] == rows["s/kernel[1]"]["budget_params"] == A * B
    assert isinstance(new["s"]["kernel"], np.ndarray) and isinstance(new["g"]["kernel"], pdbjax.LowRank)
    np.testing.assert_array_equal(new["s"]["kernel"][1], 0.0)
    assert rows["g/kernel[0]"]["budget_params"] == new["g"]["kernel"].a.shape[-1] * (A + B) > 0


@pytest.mark.parametrize("method", ["svd", "pdb"])
def test_budget_leaves_an_unfitted_matrix_unchanged_for_every_method(method):
    """svd allocates with the PDB fit: a rank-2 matrix (no bulk, fit not ok) is counted at m n, so it must be
    returned as it is, not truncated to the keep of 0 it was allocated."""
    rng = np.random.default_rng(5)
    low = (rng.standard_normal((A, 2)) @ rng.standard_normal((2, B))).astype(np.float32)
    params = {"good": {"kernel": _pdb(0)}, "low": {"kernel": low}}
    new, rep = pdbjax.compress(params, method=method, budget=0.6)
    _check_compliance(rep, 0.6)
    row = {r["name"]: r for r in rep}["low/kernel"]
    assert row["status"].startswith("unchanged") and row["budget_params"] == A * B and row["rel_change"] == 0.0
    np.testing.assert_array_equal(new["low"]["kernel"], low)


# --------------------------------------------------------------------------------------------------
# CLI


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_cli_budget_writes_factors_within_budget(tmp_path):
    src, out, report = tmp_path / "w.npz", tmp_path / "c.npz", tmp_path / "r.json"
    weights = {"params/Dense_0/kernel": _pdb(0), "params/Dense_1/kernel": _pdb(1, N=144, spikes=(90.0,)).T,
               "params/Dense_0/bias": np.zeros(B, np.float32)}
    np.savez(src, **weights)
    rc, stdout, err = _run(["compress", str(src), "-o", str(out), "--budget", "0.25", "--factored", "--json", str(report)])
    assert rc == 0, err
    assert "budget 0.25" in stdout
    saved = dict(np.load(out))
    dense = A * B + 144 * B
    stored = sum(saved[f"params/Dense_{i}/kernel/{f}"].size for i in (0, 1) for f in ("a", "b"))
    assert stored <= math.floor(0.25 * dense)
    import json

    rows = json.loads(report.read_text())
    assert stored == sum(r["budget_params"] for r in rows)  # every leaf keeps >= 1: no padding column
    np.testing.assert_array_equal(saved["params/Dense_0/bias"], weights["params/Dense_0/bias"])
    for argv, message in (
        (["--budget", "0"], "invalid budget"),
        (["--budget", "1.2"], "invalid budget"),
        (["--budget", "0.5", "--rank", "4"], "either --rank or --budget"),
        (["--budget", "0.5", "--method", "slr"], "does not store"),
    ):
        rc, _, err = _run(["compress", str(src), "-o", str(tmp_path / "x.npz"), *argv])
        assert rc == 2 and message in err, err


@pytest.mark.parametrize("budget", [0.1, 0.2])
def test_factored_stacked_leaf_stores_what_the_budget_counts(budget):
    """A stacked leaf's factors are as wide as its widest keep: one layer of 16 spikes and three of noise used
    to keep [10, 2, 2, 3] and store 0.234 of the dense count at budget 0.1 while reporting 0.100. Its layers
    are now allocated together (one width): what is stored, a.size + b.size, is what the report counts, within
    the cap; each layer keeps the leaf's width."""
    keys = jax.random.split(jax.random.PRNGKey(8), 4)
    sig = pdbjax.simulate(keys[0], 128, 64, pdbjax.PDB(1, 1, 1), spikes=list(np.linspace(200, 20, 16)))
    stack = np.stack([np.asarray(sig)] + [np.asarray(pdbjax.simulate(k, 128, 64, pdbjax.PDB(1, 1, 1))) for k in keys[1:]])
    new, rep = pdbjax.compress({"blocks": {"kernel": stack}}, layer_axis=0, budget=budget, factored=True)
    leaf = new["blocks"]["kernel"]
    stored = leaf.a.size + leaf.b.size
    assert stored == rep.totals["budget_params_after"] == rep.totals["params_after"] <= rep.totals["budget_cap"]
    assert len({r["keep"] for r in rep}) == 1 and leaf.a.shape[-1] == rep[0]["keep"] >= 1
    # the next column of all four layers would not fit, so the leaf uses the budget it can
    assert stored + 4 * (128 + 64) > rep.totals["budget_cap"]
