"""analyze / compress over whole param pytrees: plain dicts, Linen, NNX, conv and scanned kernels."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx
from tolerances import BATCH_PARTNERS, FLOAT32_FIT, OTHER_PROCESS, SAME_ARITHMETIC, assert_close

import pdbjax
import pdbjax.plot
from pdbjax.api import FIT_ROWS, in_fit_rows
from pdbjax.experiments.models import FCNN

A, B = 96, 48  # one matrix shape shared by most tests, so the estimators compile once


def _pdb_matrix(seed: int, spikes=(60.0, 40.0)) -> np.ndarray:
    W = pdbjax.simulate(jax.random.PRNGKey(seed), A, B, pdbjax.PDB(0.7, 1.0, 4.0), spikes=spikes)
    return np.asarray(W)


@pytest.fixture(scope="module")
def params() -> dict:
    return {
        "dense1": {"kernel": _pdb_matrix(0), "bias": np.zeros(B, np.float32)},
        "dense2": {"kernel": _pdb_matrix(1)},
        "norm": {"scale": np.ones(B, np.float32)},
    }


@pytest.fixture(scope="module")
def report(params) -> pdbjax.Report:
    return pdbjax.analyze(params)


JSON_KEYS = {
    "name", "shape", "N", "p", "K", "t", "sigma1_sq", "sigma2_sq", "lambda_plus", "edges",
    "moments_empirical", "moments_pdb", "moments_bema", "moments_kernel", "ks_pdb", "ks_bema",
    "ks_kernel", "rank_kept", "status",
}


def test_analyze_rows_and_json_contract(params, report, tmp_path):
    assert [r["name"] for r in report] == ["dense1/kernel", "dense2/kernel"]
    for row in report:
        assert row["status"] == "ok"
        assert (row["N"], row["p"]) == (A, B)
        assert 0.5 <= row["t"] <= 1
        assert row["lambda_plus"] == pytest.approx(max(row["edges"]))
        assert set(row["rank_kept"]) >= {"spikes", "upper-bulk", "pub-bema", "pub-kernel"}
        assert row["rank_kept"]["spikes"] <= row["rank_kept"]["upper-bulk"] <= B
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert JSON_KEYS <= set(data[0])
    assert json.loads((tmp_path / "r.json").read_text()) == data
    csv_text = report.to_csv(tmp_path / "r.csv")
    assert csv_text.splitlines()[0].startswith("name,")
    assert len(csv_text.splitlines()) == 3


def test_analyze_matches_direct_fit(params, report):
    """The pytree API gives the numbers of the matrix-level estimator: the same in float64, and within
    FLOAT32_FIT in its default float32 (the fit of the normalised spectrum, brought back to W's units)."""
    lam = pdbjax.eigenvalues(params["dense2"]["kernel"], precision="float64")
    fit = pdbjax.fit_pdb(lam, A)
    row64 = pdbjax.analyze(params, precision="float64", baselines=False)[1]
    for row, tol in ((row64, BATCH_PARTNERS), (report[1], FLOAT32_FIT)):
        assert row["K"] == int(fit.K)
        assert_close([row["t"], row["sigma1_sq"], row["sigma2_sq"]], [fit.t, fit.sigma1_sq, fit.sigma2_sq], tol)


def test_in_fit_rows_calls_fixed_size_slices_and_drops_the_padding():
    """Slices of FIT_ROWS rows, the last padded with copies of its own first row; None passes through; the
    outputs concatenated to the input's rows."""
    rows = 2 * FIT_ROWS + 3
    seen = []

    def fn(x, nothing, pair):
        seen.append((x.shape, nothing, pair[1][:1].tolist()))
        return {"sum": x.sum(axis=1), "first": pair[0]}

    x = np.arange(rows * 2.0).reshape(rows, 2)
    out = in_fit_rows(fn, x, None, (np.arange(rows), -np.arange(rows)))
    assert seen == [((FIT_ROWS, 2), None, [0]), ((FIT_ROWS, 2), None, [-FIT_ROWS]), ((FIT_ROWS, 2), None, [-2 * FIT_ROWS])]
    np.testing.assert_array_equal(out["sum"], x.sum(axis=1))
    np.testing.assert_array_equal(out["first"], np.arange(rows))


def test_any_count_of_one_length_shares_the_compiled_fits():
    """One, five and six matrices of one length all run the fits in calls of FIT_ROWS rows (padded with
    copies of a first row): the second and third analyses compile no fit or figures program, and each
    row is its own matrix's fit: the K and, to SAME_ARITHMETIC, the parameters of that matrix in the
    batch of six, which runs the same compiled program (no row of a vmap sees another). The six matrices'
    ``t`` differ by far more than that tolerance (checked), so a shifted row would fail."""
    spikes = [(), (60.0,), (60.0, 40.0), (80.0, 60.0, 40.0), (), (60.0,)]
    mats = {f"m{i}": {"kernel": _pdb_matrix(10 + i, spikes=s)} for i, s in enumerate(spikes)}
    programs = (pdbjax.estimate.fit_pdb_singular_values, pdbjax.figures._figures)
    whole = pdbjax.analyze(mats).rows
    compiled = [f._cache_size() for f in programs]
    padded = pdbjax.analyze({k: mats[k] for k in list(mats)[:5]}).rows
    alone = pdbjax.analyze({"m3": mats["m3"]}).rows
    assert [f._cache_size() for f in programs] == compiled
    assert np.min(np.diff(np.sort([r["t"] for r in whole]))) > 1e-4
    assert [r["K"] for r in padded] == [r["K"] for r in whole[:5]] and alone[0]["K"] == whole[3]["K"]
    for a, b in zip([*padded, *alone], [*whole[:5], whole[3]]):
        assert_close([a["t"], a["sigma1_sq"], a["sigma2_sq"]], [b["t"], b["sigma1_sq"], b["sigma2_sq"]], SAME_ARITHMETIC)


def test_compress_decides_once_per_spectrum_length():
    """Five 96 x 48 and two 48 x 96 matrices are two shape groups of one spectrum length: compress rebuilds
    each group apart but decides the keep counts and shrinkage of all seven in one compiled program (one
    call of FIT_ROWS rows), and keeps what analyze reports for each matrix (the same fit program, on the
    same padded batch; the contract test_bulks.py checks for every rule)."""
    tall = [_pdb_matrix(20 + i) for i in range(5)]
    wide = [_pdb_matrix(30 + i).T for i in range(2)]
    params = {f"t{i}": {"kernel": m} for i, m in enumerate(tall)} | {f"w{i}": {"kernel": m} for i, m in enumerate(wide)}
    jax.clear_caches()
    _, report = pdbjax.compress(params)
    assert pdbjax.filter._decide._cache_size() == 1
    reported = {r["name"]: r["rank_kept"][pdbjax.DEFAULT_RANK] for r in pdbjax.analyze(params, baselines=False)}
    assert {r["name"]: r["keep"] for r in report} == reported


def test_compress_dense_keeps_structure_and_dtypes(params):
    before = copy.deepcopy(params)
    new, rep = pdbjax.compress(params, rank="spikes")
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    for old_leaf, new_leaf in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new)):
        assert old_leaf.shape == new_leaf.shape and old_leaf.dtype == new_leaf.dtype
    # params untouched
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, before)
    # kernels have rank = keep, biases untouched
    for row, leaf in zip(rep, (new["dense1"]["kernel"], new["dense2"]["kernel"])):
        assert np.linalg.matrix_rank(np.asarray(leaf, np.float64), tol=1e-4) == row["keep"]
    np.testing.assert_array_equal(new["dense1"]["bias"], params["dense1"]["bias"])
    assert rep.totals["compression_ratio"] == pytest.approx(1.0)  # dense storage
    keeps = [row["keep"] for row in rep]
    assert rep.totals["lowrank_compression_ratio"] == pytest.approx(sum(k * (A + B) for k in keeps) / (2 * A * B))
    assert all(2 <= k < B // 4 for k in keeps)  # the two spikes and little of the bulk


def test_compress_factored_round_trip(params):
    new, rep = pdbjax.compress(params, method="svd", rank=0.75, factored=True)
    low = new["dense1"]["kernel"]
    assert isinstance(low, pdbjax.LowRank)
    r = round(0.25 * B)
    assert low.a.shape == (A, r) and low.b.shape == (r, B)
    dense = pdbjax.densify(new, params)
    U, s, Vh = np.linalg.svd(params["dense1"]["kernel"].astype(np.float64), full_matrices=False)
    expected = (U[:, :r] * s[:r]) @ Vh[:r]
    np.testing.assert_allclose(dense["dense1"]["kernel"], expected, atol=2e-4 * np.abs(expected).max())
    assert rep.totals["params_after"] == 2 * r * (A + B)
    assert rep.totals["compression_ratio"] == pytest.approx(2 * r * (A + B) / (2 * A * B))


def test_densify_follows_the_layer_axis_and_conv_layout():
    """densify maps each factor product back through the selection compress used: layers stacked on axis 1 of
    an (in, L, out) leaf, a PyTorch conv kernel (out, in, kh, kw); without the layout it refuses, naming the leaf."""
    rng = np.random.default_rng(3)
    params = {"blocks": {"w": rng.standard_normal((40, 3, 24)).astype(np.float32)},
              "conv": {"kernel": rng.standard_normal((16, 4, 3, 3)).astype(np.float32)}}
    options = dict(where="blocks|conv", layer_axis={"blocks": 1}, conv_reshape="out", method="svd", rank=5)
    dense, _ = pdbjax.compress(params, **options)
    factored, _ = pdbjax.compress(params, factored=True, **options)
    assert factored["blocks"]["w"].a.shape == (3, 40, 5) and factored["conv"]["kernel"].a.shape == (16, 5)
    back = pdbjax.densify(factored, params, layer_axis={"blocks": 1}, conv_reshape="out")
    for name in ("blocks", "conv"):
        (key,) = back[name]
        # float32 products of the same rank-5 factors: equal to rounding (1e-5 of the largest entry)
        np.testing.assert_allclose(back[name][key], dense[name][key], atol=1e-5 * np.abs(dense[name][key]).max())
    with pytest.raises(ValueError, match=r"blocks/w: factors a \(3, 40, 5\).*layer_axis"):
        pdbjax.densify(factored, params, conv_reshape="out")
    # as an Orbax checkpoint of a --factored run holds them: {"a": ..., "b": ...} dicts, left as they are
    saved = {"blocks": {"w": dict(factored["blocks"]["w"]._asdict())}, "conv": {"kernel": dict(factored["conv"]["kernel"]._asdict())}}
    again = pdbjax.densify(saved, params, layer_axis={"blocks": 1}, conv_reshape="out")
    np.testing.assert_array_equal(again["blocks"]["w"], back["blocks"]["w"])
    assert set(saved["conv"]["kernel"]) == {"a", "b"}
    # a leaf of the tree literally named a / b is not a factor pair
    plain = {"mix": {"a": params["conv"]["kernel"][:, :, 0, 0], "b": params["conv"]["kernel"][:, :, 0, 0].T}}
    assert pdbjax.densify(plain, plain)["mix"].keys() == {"a", "b"}


def test_densify_gives_jax_arrays_for_jax_factors():
    """compress's rule for the dense leaves it writes: JAX arrays in place of JAX leaves (densify gave NumPy)."""
    W = jnp.asarray(np.random.default_rng(4).standard_normal((40, 24)).astype(np.float32))
    params = {"w": W, "bias": jnp.zeros(24)}
    factored, _ = pdbjax.compress(params, where="^w$", method="svd", rank=3, factored=True)
    back = pdbjax.densify(factored, params)
    assert isinstance(back["w"], jax.Array) and back["w"].dtype == W.dtype
    numpy_back = pdbjax.densify(jax.tree_util.tree_map(np.asarray, factored), jax.tree_util.tree_map(np.asarray, params))
    assert isinstance(numpy_back["w"], np.ndarray)


def test_nnx_model_and_state():
    model = FCNN(nnx.Rngs(0), sizes=(A, B, A))  # kernels (96, 48) and (48, 96): one compiled fit
    state_before = jax.tree_util.tree_map(np.asarray, nnx.state(model))
    rep = pdbjax.analyze(model, baselines=False)
    assert [r["name"] for r in rep] == ["layers/0/kernel", "layers/1/kernel"]
    assert [(r["N"], r["p"]) for r in rep] == [(A, B), (A, B)]
    # Glorot-uniform init is an unspiked Marchenko-Pastur matrix: one bulk, nothing beyond the edge
    for row in rep:
        assert row["status"] == "ok" and row["ks_pdb"] < 0.1
    new_state, crep = pdbjax.compress(nnx.state(model), method="svd", rank=5, on_error="skip")
    assert isinstance(new_state, nnx.State)
    merged = nnx.merge(nnx.graphdef(model), new_state)
    k0 = np.asarray(merged.layers[0].kernel[...])
    assert np.linalg.matrix_rank(k0, tol=1e-5) == 5
    # the model itself is untouched
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.asarray, nnx.state(model)), state_before)


def test_linen_params_with_conv_and_where():
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.Conv(16, (3, 3))(x)
            return linen.Dense(B)(x.reshape(x.shape[0], -1))

    variables = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 2, 3, 8)))  # Dense kernel (96, 48)
    rep = pdbjax.analyze(variables, baselines=False)
    conv = next(r for r in rep if "Conv_0" in r["name"])
    assert conv["shape"] == [3, 3, 8, 16] and conv["matrix_shape"] == [72, 16]
    only_dense = pdbjax.analyze(variables, where=r"Dense_0.*kernel", baselines=False)
    assert [r["name"] for r in only_dense] == ["params/Dense_0/kernel"]


def test_linen_partitioned_params_are_selected_and_stay_boxed():
    """Kernels of nn.with_partitioning / nn.with_logical_partitioning initialisers sit in Partitioned boxes: they are
    named without the box's 'value' (the default rule missed them), compress keeps the boxes and their axis
    names, and factored=True, which has no box to put a LowRank in, refuses them."""
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            init = linen.initializers.lecun_normal()
            x = linen.Dense(A, kernel_init=linen.with_partitioning(init, (None, "model")))(x)
            return linen.Dense(B, kernel_init=linen.with_logical_partitioning(init, ("embed", "mlp")))(x)

    variables = Net().init(jax.random.PRNGKey(0), jnp.ones((1, B)))
    before = jax.tree_util.tree_map(np.asarray, variables)
    rep = pdbjax.analyze(variables, baselines=False)
    assert [r["name"] for r in rep] == ["params/Dense_0/kernel", "params/Dense_1/kernel"]
    new, crep = pdbjax.compress(variables, method="svd", rank=3)
    for name, kind, names in (("Dense_0", linen.Partitioned, (None, "model")), ("Dense_1", linen.LogicallyPartitioned, ("embed", "mlp"))):
        box = new["params"][name]["kernel"]
        assert type(box) is kind and box.names == names
        assert np.linalg.matrix_rank(np.asarray(box.value, np.float64), tol=1e-5) == 3
    x = jnp.ones((2, B))
    assert Net().apply(new, x).shape == (2, B) and not np.allclose(Net().apply(new, x), Net().apply(variables, x))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.asarray, variables), before)
    with pytest.raises(ValueError, match="Linen metadata boxes"):
        pdbjax.compress(variables, method="svd", rank=3, factored=True)


def test_scanned_kernels_give_one_row_per_layer():
    stack = np.stack([_pdb_matrix(s) for s in range(3)])  # [L, in, out]
    params = {"blocks": {"kernel": stack}}
    rep = pdbjax.analyze(params, layer_axis=0, baselines=False)
    assert [r["layer"] for r in rep] == [0, 1, 2]
    new, crep = pdbjax.compress(params, rank=10, method="svd", layer_axis=0)
    assert new["blocks"]["kernel"].shape == stack.shape
    for i in range(3):
        assert np.linalg.matrix_rank(new["blocks"]["kernel"][i].astype(np.float64), tol=1e-4) == 10
    moved = {"blocks": {"kernel": np.moveaxis(stack, 0, 1)}}  # [in, L, out]
    rep2 = pdbjax.analyze(moved, layer_axis=1, baselines=False)
    np.testing.assert_allclose([r["t"] for r in rep2], [r["t"] for r in rep], rtol=1e-6)


def test_bad_leaves_named_or_skipped(params):
    bad = {"good": {"kernel": params["dense1"]["kernel"]}, "broken": {"kernel": params["dense2"]["kernel"].copy()}}
    bad["broken"]["kernel"][3, 4] = np.nan
    with pytest.raises(ValueError, match=r"broken/kernel"):
        pdbjax.analyze(bad)
    new, rep = pdbjax.compress(bad, on_error="skip", rank="spikes")
    status = {r["name"]: r["status"] for r in rep}
    assert status["good/kernel"] == "ok"
    assert status["broken/kernel"].startswith("skipped")
    np.testing.assert_array_equal(new["broken"]["kernel"], bad["broken"]["kernel"])
    with pytest.raises(ValueError, match="int"):
        pdbjax.analyze({"w": np.ones((20, 10), np.int32)}, where="w")
    # JSON and CSV hold every column of the report on every row, in the fitted rows' order, whichever comes first
    for report in (rep, pdbjax.analyze(bad, on_error="skip")):
        assert report.rows[0]["name"] == "broken/kernel" and len(report.rows[0]) < len(report.rows[1])
        objects = json.loads(report.to_json())
        assert [list(o) for o in objects] == [list(report.rows[1])] * 2
        assert objects[0]["K"] is None and objects[0]["status"].startswith("skipped")
        assert report.to_csv().splitlines()[0].split(",") == list(report.rows[1])


def test_degenerate_matrix_left_unchanged():
    zero = {"layer": {"kernel": np.zeros((A, B), np.float32)}, "ok": {"kernel": _pdb_matrix(3)}}
    new, rep = pdbjax.compress(zero, rank="spikes")
    row = next(r for r in rep if "layer" in r["name"])
    assert row["status"].startswith("unchanged")
    np.testing.assert_array_equal(new["layer"]["kernel"], zero["layer"]["kernel"])


def test_one_strong_component_is_not_rank_deficiency():
    """A constant offset on Marchenko-Pastur noise: one singular value 600 times the bulk's (float32). Zeros are judged
    on the SVD's singular values (errors ~ eps s_1), not on their squares at eps lambda_1, which called the bulk below
    3.4e-3 s_1 zero and the row NO_BULK. A rank-2 matrix still is NO_BULK."""
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((800, 400)) / np.sqrt(800) + 2.0).astype(np.float32)
    low = (rng.standard_normal((64, 2)) @ rng.standard_normal((2, 64))).astype(np.float32)
    rep = pdbjax.analyze({"offset": {"kernel": W}, "low": {"kernel": low}})
    low_row, row = rep.rows
    assert row["status"] == "ok" and row["K"] == 1 and row["K_bema"] == 1 and row["K_kernel"] == 1
    # Marchenko-Pastur edge (1 + sqrt(1/2))^2 = 2.914 for N = 800, p = 400, sigma^2 = 1: 1% (finite-N edge bias)
    assert row["lambda_plus"] == pytest.approx((1 + np.sqrt(0.5)) ** 2, rel=0.01)
    assert low_row["status"].startswith("no bulk")
    _, crep = pdbjax.compress({"offset": {"kernel": W}}, rank="upper-bulk")  # one bulk: "auto" would keep all 400
    assert crep[0]["status"] == "ok" and crep[0]["keep"] == 1


def test_compress_rows_come_in_tree_order_as_analyze_rows():
    bad = np.array(_pdb_matrix(2))
    bad[0, 0] = np.nan
    params = {"a": {"kernel": _pdb_matrix(1)}, "b": {"kernel": bad}, "c": {"kernel": _pdb_matrix(3)}}
    names = [r["name"] for r in pdbjax.analyze(params, on_error="skip", baselines=False)]
    _, rep = pdbjax.compress(params, on_error="skip")
    assert [r["name"] for r in rep] == names == ["a/kernel", "b/kernel", "c/kernel"]
    assert rep[1]["status"].startswith("skipped")


def test_unchanged_float64_matrices_are_returned_bit_for_bit():
    """The rebuild works in float32; a float64 matrix whose fit is not ok must still come back as it was, not
    through a float32 round trip (here next to a compressed layer of the same stacked leaf)."""
    rng = np.random.default_rng(1)
    low = rng.standard_normal((A, 2)) @ rng.standard_normal((2, B))  # rank 2: no bulk, fit not ok
    stack = np.stack([low, _pdb_matrix(5).astype(np.float64)])
    new, rep = pdbjax.compress({"low": {"kernel": low}, "s": {"kernel": stack}}, layer_axis={"s": 0})
    assert [r["status"][:9] for r in rep] == ["unchanged", "unchanged", "ok"]
    np.testing.assert_array_equal(new["low"]["kernel"], low)
    np.testing.assert_array_equal(new["s"]["kernel"][0], low)
    assert not np.array_equal(new["s"]["kernel"][1], stack[1])


@pytest.mark.parametrize("factored", [False, True])
def test_float16_weights_that_would_overflow_are_flagged_and_left_unchanged(factored):
    """float16 weights clipped at 65504: the rank-k rebuild (or its factors U s) exceeds float16's range. The row
    says so and the weight is the input's, never a tensor of inf reported ok."""
    rng = np.random.default_rng(0)
    top = np.outer(rng.uniform(0.5, 1, 256), rng.uniform(0.5, 1, 128))
    W = (np.clip(top * 75000 / top.max(), None, 65504) + rng.normal(size=top.shape) * 5000).clip(-65504, 65504).astype(np.float16)
    new, rep = pdbjax.compress({"l": {"kernel": W}}, factored=factored, rank="upper-bulk")  # one bulk: not "auto"
    assert rep[0]["status"] == "unchanged: " + pdbjax.Reason.OUT_OF_RANGE.text and rep[0]["rel_change"] == 0.0
    assert new["l"]["kernel"] is not W and np.array_equal(new["l"]["kernel"], W)  # a dense copy, the input untouched
    assert rep.totals["params_after"] == W.size


def test_factored_stacked_leaf_with_an_unchanged_layer_is_stored_dense():
    """A stacked float16 leaf: layer 0 rank 2 with entries near 3e4 (fit not ok, left as it is), layer 1
    compressible. Stored as factors, layer 0 would need its full factors, p (m + n) > m n, and every layer the
    leaf's width: the leaf is stored dense instead, layer 0 bit for bit, layer 1 the product of its factors (the
    dense output's rebuild, both rounded to float16 from float32 products: 2 float16 ulps of the largest entry)."""
    rng = np.random.default_rng(0)
    low = rng.uniform(0.5, 1, (A, 2)) @ rng.uniform(0.5, 1, (2, B))
    stack = np.stack([low * 3e4 / low.max(), _pdb_matrix(4)]).astype(np.float16)
    params = {"s": {"kernel": stack}}
    new, rep = pdbjax.compress(params, layer_axis=0, factored=True)
    dense, dense_rep = pdbjax.compress(params, layer_axis=0)
    leaf = new["s"]["kernel"]
    assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float16 and leaf.shape == stack.shape
    np.testing.assert_array_equal(leaf[0], stack[0])
    assert [r["status"][:9] for r in rep] == [r["status"][:9] for r in dense_rep] == ["unchanged", "ok"]
    top = float(np.abs(dense["s"]["kernel"][1]).max())
    np.testing.assert_allclose(leaf[1].astype(np.float32), dense["s"]["kernel"][1].astype(np.float32), atol=2 * np.spacing(np.float16(top)))
    assert [r["params_after"] for r in rep] == [A * B, A * B] and rep.totals["params_after"] == 2 * A * B
    # a JAX tree gets JAX leaves back, as in dense mode: the dense stacked leaf and a LowRank's factors
    jax_new, _ = pdbjax.compress({"s": {"kernel": jnp.asarray(stack)}, "d": {"kernel": jnp.asarray(_pdb_matrix(4))}},
                                 layer_axis={"s": 0}, factored=True)
    assert isinstance(jax_new["s"]["kernel"], jax.Array) and jax_new["s"]["kernel"].dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(jax_new["s"]["kernel"]), leaf)
    assert all(isinstance(x, jax.Array) for x in jax_new["d"]["kernel"])


def test_bfloat16_kernels_are_upcast_and_cast_back():
    params = {"d": {"kernel": jnp.asarray(_pdb_matrix(4), jnp.bfloat16)}}
    new, rep = pdbjax.compress(params, rank="upper-bulk")
    assert new["d"]["kernel"].dtype == jnp.bfloat16
    assert rep[0]["status"] == "ok"


def test_sharded_over_four_devices_equals_single_device(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, jax, numpy as np, pdbjax
        assert jax.device_count() == 4
        mats = {{f"l{{i}}": {{"kernel": np.asarray(pdbjax.simulate(jax.random.PRNGKey(i), {A}, {B}, pdbjax.PDB(0.7, 1.0, 4.0)))}}
                 for i in range(3)}}
        rep = pdbjax.analyze(mats, baselines=False)
        json.dump([[r["K"], r["t"], r["sigma1_sq"], r["sigma2_sq"]] for r in rep], open({str(tmp_path / "out.json")!r}, "w"))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    sharded = json.loads((tmp_path / "out.json").read_text())
    mats = {f"l{i}": {"kernel": np.asarray(pdbjax.simulate(jax.random.PRNGKey(i), A, B, pdbjax.PDB(0.7, 1.0, 4.0)))} for i in range(3)}
    single = [[r["K"], r["t"], r["sigma1_sq"], r["sigma2_sq"]] for r in pdbjax.analyze(mats, baselines=False)]
    # Decomposition and fits run in float32, sharded over the 4 devices: each row is fitted with other batch
    # partners in another program, as in another process (OTHER_PROCESS: measured 2.7e-4 relative on
    # sigma2_sq here); that still catches a wrong row or a mixed-up order (the three matrices differ by far more).
    assert_close(np.asarray(sharded, float), np.asarray(single, float), OTHER_PROCESS)


def test_compress_method_is_keyword_only():
    """A method name in where's position (the old positional signature) is a TypeError naming the fix."""
    params = {"d": {"kernel": np.ones((16, 12), np.float32)}}
    with pytest.raises(TypeError, match=r"method='svd'"):
        pdbjax.compress(params, "svd")


#: Functions that repeat an option of another (the selection of ``tree.select``, the precision of
#: ``linalg.spectrum``, the filtering options of ``filter_matrix``). The options are declared in each
#: signature so that ``help()`` and editors show them; this test is what keeps the copies one concept.
_SHARING = [
    pdbjax.analyze, pdbjax.compress, pdbjax.tree.select, pdbjax.plot.spectra, pdbjax.filter_matrix,
    pdbjax.eigenvalues, pdbjax.linalg.spectrum, pdbjax.linalg.factors,
]
#: The one intended difference: ``filter_matrix`` is Algorithm 2 as published (``rank="spikes"``);
#: ``compress`` defaults to the library's measured choice (``None`` -> ``DEFAULT_RANK``).
_OWN_DEFAULT = {("compress", "rank"), ("filter_matrix", "rank")}


def test_shared_options_agree_in_name_type_default_and_order():
    import inspect

    sigs = {f.__name__: inspect.signature(f).parameters for f in _SHARING}
    seen: dict[str, tuple[str, object, str]] = {}
    for fname, params in sigs.items():
        for name, p in list(params.items())[1:]:  # the first is the data (params or W)
            if (fname, name) in _OWN_DEFAULT:
                continue
            if name in seen:
                assert (p.annotation, p.default) == seen[name][:2], (fname, name, seen[name][2])
            else:
                seen[name] = (p.annotation, p.default, fname)
    # every pair of functions lists the options they share in the same order
    names = {f: [n for n in params][1:] for f, params in sigs.items()}
    for f, g in [(f, g) for f in names for g in names if f < g]:
        shared = [n for n in names[f] if n in names[g]]
        assert shared == [n for n in names[g] if n in names[f]], (f, g)
    # every selection option of tree.select is accepted by analyze and compress
    selection = set(names["select"]) - {"allow_empty"}
    assert selection <= set(names["analyze"]) and selection <= set(names["compress"])


def test_compress_numpy_scalar_ranks_and_factored_copies():
    """A NumPy/JAX scalar rank is its value (an array of ranks is a TypeError, not a NumPy concatenation error),
    and a leaf that factored=True leaves unchanged is a copy, as in dense mode (an in-place update of the
    output must not reach the caller's params)."""
    W = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    params = {"w": W, "z": np.zeros((64, 32), np.float32)}  # z: all zeros, its fit is not ok
    every = lambda name, x: True  # noqa: E731
    for rank in (np.array(5), np.int64(5), jnp.asarray(5)):
        _, report = pdbjax.compress(params, where=every, rank=rank, on_error="skip")
        assert report.rows[0]["keep"] == 5, rank
    with pytest.raises(TypeError, match=r"array of shape \(2,\)"):
        pdbjax.compress(params, where=every, rank=np.array([3, 4]))
    for factored in (False, True):
        out, _ = pdbjax.compress(params, where=every, factored=factored, on_error="skip")
        assert not np.shares_memory(np.asarray(out["z"]), params["z"]), factored


def test_float64_leaves_outside_float32s_range_are_flagged_not_reported_as_zero():
    """A float64 matrix of entries ~1e40 (or ~1e-40) decomposed in float32 became inf (flushed zeros): the row said
    "matrix is all zeros". It is a bad leaf now, named, with the precision that fits it; float64 fits it, lambda_+
    scaling by exactly 1e80 (1e-80) against the unit matrix, within float64 rounding."""
    import pdbjax

    W = np.random.default_rng(0).standard_normal((200, 100))
    params = {"big": W * 1e40, "small": W * 1e-40, "unit": W}
    rows = {r["name"]: r for r in pdbjax.analyze(params, where=".", baselines=False, on_error="skip").rows}
    for name in ("big", "small"):
        assert rows[name]["status"].startswith("skipped: largest entry") and "precision='float64'" in rows[name]["status"]
    assert rows["unit"]["status"] == "ok"
    with pytest.raises(ValueError, match=r"big: largest entry 4\.02e\+40 is outside float32's range"):
        pdbjax.analyze({"big": W * 1e40}, where=".")
    new, report = pdbjax.compress(params, where=".", on_error="skip")
    assert np.array_equal(new["big"], params["big"]) and np.array_equal(new["small"], params["small"])
    exact = {r["name"]: r for r in pdbjax.analyze(params, where=".", baselines=False, precision="float64").rows}
    assert all(r["status"] == "ok" for r in exact.values())
    np.testing.assert_allclose(exact["big"]["lambda_plus"] / exact["unit"]["lambda_plus"], 1e80, rtol=1e-12)
    np.testing.assert_allclose(exact["small"]["lambda_plus"] / exact["unit"]["lambda_plus"], 1e-80, rtol=1e-12)
