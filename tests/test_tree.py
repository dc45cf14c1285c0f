"""Tests for pdbjax.tree: selection, matrix views, grouped mapping (also sharded), rebuilding."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from pdbjax import tree
from pdbjax.experiments.models import FCNN

REPO = Path(__file__).resolve().parents[1]
BF16 = np.dtype(ml_dtypes.bfloat16)


def _rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _names(sels):
    return [s.name for s in sels]


def _assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------------ select


def test_select_plain_nested_dict_default_rule():
    params = {
        "enc": {"kernel": _rand(4, 3), "bias": _rand(3)},
        "blocks": [{"W": _rand(5, 4, seed=1)}, {"weight": _rand(2, 5, seed=2), "scale": _rand(2, 5)}],
        "embed": {"kernel": _rand(10, 4)},  # excluded: name contains 'embed'
        "int_kernel": {"kernel": np.ones((3, 3), np.int32)},  # not floating: not selected by default
        "count": 3,  # not an array
        "w": _rand(6, 6, seed=3).astype(BF16),
    }
    sels = tree.select(params)
    assert _names(sels) == [
        "blocks/0/W", "blocks/1/weight", "enc/kernel", "w",
    ]
    w = sels[-1]
    assert (w.shape, w.dtype, w.matrix_shape, w.num_matrices, w.ok) == ((6, 6), BF16, (6, 6), 1, True)
    assert sels[0].keys == ("blocks", 0, "W")
    assert sels[0].value is params["blocks"][0]["W"]


def test_select_flat_safetensors_names():
    params = {
        "encoder.layer.0.attention.self.query.weight": _rand(6, 6),
        "encoder.layer.0.attention.self.query.bias": _rand(6),
        "encoder.layer.0.attention.output.LayerNorm.weight": _rand(6),  # 1-D: not a matrix
        "embeddings.word_embeddings.weight": _rand(30, 6),
        "params/Dense_0/kernel": _rand(6, 2),
        "lm_head.weights": _rand(6, 3),  # 'weights' is not one of the names
    }
    assert _names(tree.select(params)) == [
        "encoder.layer.0.attention.self.query.weight",
        "params/Dense_0/kernel",
    ]
    # where replaces the default rule: embeddings can be selected explicitly.
    extended = tree.select(params, where=lambda n, x: tree.default_where(n, x) or "word_embeddings" in n)
    assert "embeddings.word_embeddings.weight" in _names(extended)


def test_select_linen_dict_and_frozendict():
    from flax.core import freeze

    params = {"params": {"Dense_0": {"kernel": _rand(8, 4), "bias": _rand(4)},
                         "Conv_0": {"kernel": _rand(3, 3, 2, 5)}}, "batch_stats": {"mean": _rand(5)}}
    for p in (params, freeze(params)):
        sels = tree.select(p)
        assert _names(sels) == ["params/Conv_0/kernel", "params/Dense_0/kernel"]
        assert [s.matrix_shape for s in sels] == [(18, 5), (8, 4)]


def test_select_nnx_state_split_and_module_agree():
    model = FCNN(nnx.Rngs(0), sizes=(7, 6, 5, 3))
    expected = ["layers/0/kernel", "layers/1/kernel", "layers/2/kernel"]
    _, split_state = nnx.split(model)
    for params in (nnx.state(model), split_state, model):
        sels = tree.select(params)
        assert _names(sels) == expected
        assert [s.matrix_shape for s in sels] == [(7, 6), (6, 5), (5, 3)]
        hidden = [tuple(p) for p in model.hidden_kernel_paths()]
        assert [s.keys for s in sels] == hidden + [("layers", 2, "kernel")]
        assert not isinstance(sels[0].value, nnx.Variable)
        np.testing.assert_array_equal(sels[0].value, model.layers[0].kernel.get_value())


def test_where_regex_and_predicate():
    params = {"a": {"kernel": _rand(3, 4)}, "b": {"kernel": _rand(4, 4)}, "c": {"kernel": _rand(4, 2)}}
    assert _names(tree.select(params, where=r"^[ab]/")) == ["a/kernel", "b/kernel"]
    assert _names(tree.select(params, where=re.compile("c"))) == ["c/kernel"]
    seen = []

    def pred(name, x):
        seen.append((name, x.shape))
        return x.shape[0] == 4

    assert _names(tree.select(params, where=pred)) == ["b/kernel", "c/kernel"]
    assert seen == [("a/kernel", (3, 4)), ("b/kernel", (4, 4)), ("c/kernel", (4, 2))]
    with pytest.raises(TypeError, match="where"):
        tree.select(params, where=3)


@pytest.mark.parametrize(
    "leaf, message",
    [
        (np.ones((3, 3), np.int32), "dtype int32 is not floating"),
        (_rand(5), r"shape \(5,\) is not a matrix"),
        (np.where(np.eye(3) > 0, np.nan, 1.0).astype(np.float32), "NaN or Inf"),
        (jnp.array([[1.0, jnp.inf], [0.0, 1.0]]), "NaN or Inf"),
        (np.zeros((0, 3), np.float32), "no entries"),
        (jax.random.split(jax.random.key(0), 9).reshape(3, 3), r"dtype key<fry> is not floating"),  # NNX's rngs
    ],
)
def test_bad_leaves_raise_naming_path_or_are_skipped(leaf, message):
    params = {"good": {"kernel": _rand(3, 3)}, "bad": {"layer": [leaf]}}
    with pytest.raises(ValueError, match=re.escape("bad/layer/0: ") + ".*" + message) as err:
        tree.select(params, where=lambda n, x: True)
    assert "on_error='skip'" in str(err.value)  # a user's `where` caught it: the message says how out
    sels = tree.select(params, where=lambda n, x: True, on_error="skip")
    bad, good = sels  # flattening order: 'bad' < 'good'
    assert good.ok and good.name == "good/kernel"
    assert not bad.ok and re.search(message, bad.status) and bad.name == "bad/layer/0"
    assert bad.matrix_shape is None and bad.num_matrices == 0
    with pytest.raises(ValueError, match="skipped"):
        tree.to_matrices(leaf, bad)
    assert tree.group_by_shape(sels) == {(3, 3): [1]}


def test_nan_in_default_selected_leaf_raises():
    params = {"dense": {"kernel": np.full((4, 4), np.nan, np.float32)}}
    with pytest.raises(ValueError, match=re.escape("dense/kernel: contains NaN")) as err:
        tree.select(params)
    assert "where" not in str(err.value)  # the default rule chose it: no hint about `where`


def test_nan_in_a_stacked_leaf_names_the_layers():
    leaf = np.stack([_rand(4, 3), _rand(4, 3, seed=1), _rand(4, 3, seed=2)])
    leaf[1, 0, 0], leaf[2, 3, 2] = np.nan, -np.inf
    for value in (leaf, jnp.asarray(leaf)):
        with pytest.raises(ValueError, match=re.escape("s/kernel: contains NaN or Inf values in layers [1, 2] of axis 0")):
            tree.select({"s": {"kernel": value}}, layer_axis=0)
        (sel,) = tree.select({"s": {"kernel": value}}, layer_axis=0, on_error="skip")
        assert not sel.ok and sel.num_matrices == 0
    with pytest.raises(ValueError, match=re.escape("s/kernel: contains NaN or Inf values in layer [0] of axis 2")):
        tree.select({"s": {"kernel": leaf[..., :1]}}, layer_axis=2)
    with pytest.raises(ValueError, match=re.escape("s/kernel: contains NaN or Inf values") + "$"):
        tree.select({"s": {"kernel": leaf}})


def test_jax_leaves_are_checked_for_nan_in_one_program():
    """A selection of JAX leaves of several shapes (one stacked, one holding an Inf, one a NumPy leaf beside them)
    compiles one finiteness program, and each leaf gets its own flag."""
    leaves = {f"d{i}": {"kernel": jnp.asarray(_rand(4 + i, 3, seed=i))} for i in range(4)}
    leaves["d1"]["kernel"] = leaves["d1"]["kernel"].at[0, 0].set(jnp.inf)
    leaves["s"] = {"kernel": jnp.stack([jnp.asarray(_rand(4, 3)), jnp.full((4, 3), jnp.nan)])}
    leaves["n"] = {"kernel": _rand(5, 2)}
    before = tree._finite_flags._cache_size()
    sels = {s.name: s for s in tree.select(leaves, layer_axis={"s/kernel": 0},
                                           on_error="skip")}
    assert tree._finite_flags._cache_size() == before + 1
    assert [name for name, s in sels.items() if not s.ok] == ["d1/kernel", "s/kernel"]
    assert sels["s/kernel"].status == "contains NaN or Inf values in layer [1] of axis 0"


def test_bare_array_is_an_error():
    for value in (_rand(4, 3), jnp.ones((2, 4, 3), jnp.bfloat16)):
        with pytest.raises(ValueError, match=r"params is a bare \w+ array of shape .*not a tree of named weights"):
            tree.select(value)
        with pytest.raises(ValueError, match="bare"):
            tree.select(value, where=lambda n, x: True)


@pytest.mark.parametrize(
    "params, where, message",
    [
        ({"a": {}, "b": [{}], "c": None}, None, r"by the default rule .*: the tree holds no leaves \(PyTreeDef"),
        ({"dense": {"kernel": np.ones((3, 3), np.int32), "bias": _rand(3)}, "name": "mlp"}, None,
         r"the tree holds 3 leaves: dense/bias float32 \(3,\), dense/kernel int32 \(3, 3\), name str$"),
        ({"kernel": _rand(3, 3)}, "encoder",
         r"by where='encoder' \(a regex searched in the leaf names\); the tree holds 1 leaf: kernel float32 \(3, 3\)$"),
        ({"kernel": _rand(3, 3)}, re.compile("enc"), r"by where='enc'"),
        ({"kernel": _rand(3, 3)}, lambda n, x: False, r"by the where predicate <lambda>"),
        ({f"k{i:02d}": {"kernel": _rand(2)} for i in range(12)}, None,
         r"the tree holds 12 leaves: .*k07/kernel float32 \(2,\), \.\.\. \(4 more\)$"),
    ],
)
def test_empty_selection_error_says_what_the_tree_holds(params, where, message):
    assert tree.select(params, where) == []  # allow_empty=True (the default) returns nothing
    with pytest.raises(ValueError, match="^no weight matrix selected " + ".*" + message):
        tree.select(params, where, allow_empty=False)


def test_option_validation():
    params = {"kernel": _rand(2, 2)}
    with pytest.raises(ValueError, match="conv_reshape"):
        tree.select(params, conv_reshape="spatial")
    with pytest.raises(ValueError, match="on_error"):
        tree.select(params, on_error="ignore")
    with pytest.raises(TypeError, match="layer_axis"):
        tree.select(params, layer_axis="0")


# ------------------------------------------------------------------------------------ matrix views


def test_conv_kernel_views_and_round_trip():
    k = _rand(3, 2, 4, 5)  # (kh, kw, in, out)
    (s_in,) = tree.select({"kernel": k})
    m = tree.to_matrices(k, s_in)
    assert m.shape == (1, 24, 5)
    # row index = (i, j, c) of patch position and input channel, column = output channel
    np.testing.assert_array_equal(np.asarray(m[0, (1 * 2 + 1) * 4 + 3, :]), k[1, 1, 3, :])
    (s_out,) = tree.select({"kernel": k}, conv_reshape="out")
    m_out = tree.to_matrices(k, s_out)
    assert s_out.matrix_shape == (3, 40) and m_out.shape == (1, 3, 40)
    np.testing.assert_array_equal(np.asarray(m_out[0, 2, 1 * 20 + 3 * 5 + 4]), k[2, 1, 3, 4])
    for sel, mats in ((s_in, m), (s_out, m_out)):
        back = tree.from_matrices(mats, sel)
        assert back.shape == k.shape and back.dtype == k.dtype
        np.testing.assert_array_equal(np.asarray(back), k)


def test_attention_kernels_take_a_conv_reshape_per_leaf():
    """nnx.MultiHeadAttention's q/k/v kernels (in, heads, head_dim) are the matrix (in, heads*head_dim) ("out"),
    its output kernel (heads, head_dim, out) the matrix (heads*head_dim, out) ("in", where no regex matches): a
    rank-16 compression of the query is a rank-16 map of the model's 96 x 96 (exact: the SVD truncation's rank)."""
    import pdbjax

    mha = nnx.MultiHeadAttention(num_heads=4, in_features=96, decode=False, rngs=nnx.Rngs(0))
    views = {"(query|key|value)/kernel": "out"}
    assert {s.name: s.matrix_shape for s in tree.select(mha)}["query/kernel"] == (384, 24)  # the conv view: wrong here
    assert {s.name: (s.conv_reshape, s.matrix_shape) for s in tree.select(mha, conv_reshape=views)} == {
        "key/kernel": ("out", (96, 96)), "out/kernel": ("in", (96, 96)), "query/kernel": ("out", (96, 96)),
        "value/kernel": ("out", (96, 96))}
    state, _ = pdbjax.compress(mha, method="svd", rank=16, where="query/kernel", conv_reshape=views)
    s = np.linalg.svd(np.asarray(state["query"]["kernel"][...], np.float64).reshape(96, 96), compute_uv=False)
    assert s[15] > 1e-3 * s[0] and s[16] < 1e-5 * s[0]
    with pytest.raises(ValueError, match="conv_reshape must be 'in', 'out' or a {regex: 'in' | 'out'} dict"):
        tree.select(mha, conv_reshape={"query": "sideways"})


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_scanned_layers_with_layer_axis(axis):
    L, din, dout = 4, 6, 3
    per_layer = _rand(L, din, dout)
    leaf = np.moveaxis(per_layer, 0, axis % 3)
    (sel,) = tree.select({"stack": {"kernel": leaf}}, layer_axis=axis)
    assert (sel.layer_axis, sel.num_matrices, sel.matrix_shape) == (axis % 3, L, (din, dout))
    mats = tree.to_matrices(leaf, sel)
    np.testing.assert_array_equal(np.asarray(mats), per_layer)
    back = tree.from_matrices(mats * 2, sel)
    np.testing.assert_array_equal(np.asarray(back), 2 * leaf)


def test_layer_axis_dict_bf16_and_jit():
    params = {
        "scan": {"kernel": _rand(3, 4, 5).astype(BF16)},
        "conv_scan": {"kernel": _rand(2, 3, 3, 4, 5)},  # (L, kh, kw, in, out)
        "head": {"kernel": _rand(5, 2)},
    }
    sels = tree.select(params, layer_axis={r"conv_scan": 0, r"^scan/": 0})
    by = {s.name: s for s in sels}
    assert by["scan/kernel"].matrix_shape == (4, 5) and by["scan/kernel"].num_matrices == 3
    assert by["conv_scan/kernel"].matrix_shape == (36, 5)
    assert by["head/kernel"].layer_axis is None and by["head/kernel"].num_matrices == 1
    for sel in sels:
        leaf = params[sel.keys[0]]["kernel"]
        round_trip = jax.jit(lambda x, s=sel: tree.from_matrices(tree.to_matrices(x, s).astype(jnp.float32), s))
        back = round_trip(leaf)
        assert back.dtype == leaf.dtype
        np.testing.assert_array_equal(np.asarray(back), leaf)


def test_layer_axis_on_a_2d_leaf_is_an_error():
    message = "kernel: shape (3, 4) is not a matrix after taking layer_axis=0"
    with pytest.raises(ValueError, match=re.escape(message)):
        tree.select({"kernel": _rand(3, 4)}, layer_axis=0)
    with pytest.raises(ValueError, match="out of range"):
        tree.select({"kernel": _rand(3, 4, 2)}, layer_axis=3)


def test_view_shape_mismatch_errors():
    (sel,) = tree.select({"kernel": _rand(3, 4)})
    with pytest.raises(ValueError, match=re.escape("kernel: leaf has shape (4, 3)")):
        tree.to_matrices(_rand(4, 3), sel)
    message = "kernel: matrix stack has shape (1, 4, 3), expected (1, 3, 4)"
    with pytest.raises(ValueError, match=re.escape(message)):
        tree.from_matrices(jnp.zeros((1, 4, 3)), sel)


# ----------------------------------------------------------------------------- grouping and mapping


def test_group_by_shape_arrays_and_selections():
    mats = [np.zeros((3, 4)), np.zeros((2, 2)), np.zeros((5, 3, 4)), np.zeros((2, 2))]
    assert tree.group_by_shape(mats) == {(3, 4): [0, 2], (2, 2): [1, 3]}
    sels = tree.select({"a": {"kernel": _rand(2, 3, 3)}, "b": {"kernel": _rand(3, 3)}}, layer_axis={"a": 0})
    assert tree.group_by_shape(sels) == {(3, 3): [0, 1]}
    with pytest.raises(ValueError, match="item 0"):
        tree.group_by_shape([np.zeros(3)])


def test_map_groups_order_and_one_call_per_group():
    mats = [_rand(4, 3, seed=0), _rand(2, 5, seed=1), _rand(4, 3, seed=2), _rand(3, 4, 3, seed=3),
            _rand(2, 5, seed=4).astype(BF16), _rand(4, 3, seed=5)]
    calls = []

    def fn(stack):
        calls.append((stack.shape, stack.dtype))
        return {"norm": jnp.sum(stack.astype(jnp.float32) ** 2, axis=(1, 2)), "t": jnp.swapaxes(stack, 1, 2)}

    out = tree.map_groups(fn, mats, shard=False)
    # (4, 3): items 0, 2, the 3 matrices of item 3, and 5; (2, 5): items 1 and 4 (bf16 upcast).
    assert calls == [((6, 4, 3), jnp.float32), ((2, 2, 5), jnp.float32)]
    for m, o in zip(mats, out):
        m32 = np.asarray(m, np.float32)
        np.testing.assert_allclose(np.asarray(o["norm"]), np.sum(m32**2, axis=(-2, -1)), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(o["t"]), np.swapaxes(m32, -1, -2))
    assert out[0]["norm"].shape == () and out[3]["norm"].shape == (3,) and out[3]["t"].shape == (3, 3, 4)


def test_map_groups_rejects_unbatched_outputs():
    with pytest.raises(ValueError, match="leading batch axis 2"):
        tree.map_groups(lambda s: {"total": jnp.sum(s)}, [np.ones((2, 2)), np.ones((2, 2))], shard=False)
    with pytest.raises(ValueError, match="item 1"):
        tree.map_groups(lambda s: s, [np.ones((2, 2)), np.ones(2)])


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from pdbjax import tree

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    shapes = [(6, 4), (3, 5), (6, 4), (2, 6, 4), (3, 5), (6, 4), (3, 5), (4, 4), (4, 4), (4, 4), (4, 4)]
    mats = [rng.normal(size=s).astype(np.float32) for s in shapes]
    seen = []

    @jax.jit
    def core(stack):
        return {"s": jnp.linalg.svd(stack, compute_uv=False), "row": stack[:, 0, :] * 2.0}

    def fn(stack):
        seen.append([stack.shape[0], len(stack.sharding.device_set)])
        return core(stack)

    sharded = tree.map_groups(fn, mats, shard=True)
    plain = tree.map_groups(fn, mats, shard=False)
    diff = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))))
               for a, b in zip(sharded, plain) for k in ("s", "row"))
    shapes_out = [[list(np.shape(a["s"])), list(np.shape(b["s"]))] for a, b in zip(sharded, plain)]
    print(json.dumps({"seen": seen, "diff": diff, "shapes": shapes_out}))
    """
)


def _run_on_4_devices(script: str):
    """Run ``script`` in a fresh process with 4 host CPU devices; the JSON of its last printed line."""
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_map_groups_sharded_equals_unsharded_on_4_devices():
    res = _run_on_4_devices(_SHARDED_SCRIPT)
    # sharded: groups of 5 (6x4), 3 (3x5), 4 (4x4) matrices padded to 8, 4, 4 over 4 devices;
    # then the unsharded calls on one device without padding.
    assert res["seen"] == [[8, 4], [4, 4], [4, 4], [5, 1], [3, 1], [4, 1]]
    assert res["diff"] < 1e-5
    assert all(a == b for a, b in res["shapes"])
    assert res["shapes"][3] == [[2, 4], [2, 4]]


_SHARDING_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np, pdbjax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from pdbjax import tree

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", "model"))
    W = jax.device_put(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), sharding)
    params = {"k": W, "b": jax.device_put(np.zeros(8, np.float32), NamedSharding(mesh, P("model")))}
    replaced = tree.replace(params, {"k": np.ones((16, 8), np.float32)})
    compressed = pdbjax.compress(params, where="^k$", method="svd", rank=2)[0]
    print(json.dumps([x["k"].sharding == sharding for x in (replaced, compressed)]
                     + [bool(np.allclose(np.asarray(compressed["k"]), np.asarray(W), atol=10))]))
    """
)


def test_replace_keeps_the_sharding_of_a_jax_leaf():
    """A sharded leaf's replacement is laid out as the leaf was (it came back on one device: a model sharded
    because it does not fit one device would be gathered onto one)."""
    assert _run_on_4_devices(_SHARDING_SCRIPT) == [True, True, True]


# ------------------------------------------------------------------------------------------ replace


def test_replace_plain_dict_keeps_structure_dtype_and_numpy():
    params = {"a": {"kernel": _rand(3, 4).astype(BF16), "bias": _rand(4)}, "b": [_rand(2, 2)]}
    before = copy.deepcopy(params)
    updates = {"a/kernel": jnp.ones((3, 4), jnp.float32), "b/0": jnp.zeros((2, 2))}
    new = tree.replace(params, updates)
    _assert_trees_equal(params, before)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    assert isinstance(new["a"]["kernel"], np.ndarray) and new["a"]["kernel"].dtype == BF16
    np.testing.assert_array_equal(new["a"]["kernel"].astype(np.float32), np.ones((3, 4)))
    assert new["a"]["bias"] is params["a"]["bias"]
    with pytest.raises(KeyError, match="not leaves"):
        tree.replace(params, {"a/w": np.ones((3, 4))})
    with pytest.raises(ValueError, match=re.escape("b/0: new leaf has shape (3, 3)")):
        tree.replace(params, {"b/0": np.ones((3, 3))})


def test_replace_linen_dict_with_jax_leaves():
    params = {"params": {"Dense_0": {"kernel": jnp.asarray(_rand(3, 2)), "bias": jnp.zeros(2)}}}
    before = copy.deepcopy(params)
    (sel,) = tree.select(params)
    new = tree.replace(params, {sel.name: tree.from_matrices(-tree.to_matrices(sel.value, sel), sel)})
    _assert_trees_equal(params, before)
    assert isinstance(new["params"]["Dense_0"]["kernel"], jax.Array)
    kernel = new["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel), -np.asarray(before["params"]["Dense_0"]["kernel"]))


@pytest.mark.parametrize("as_module", [False, True])
def test_replace_nnx_state_and_module(as_module):
    model = FCNN(nnx.Rngs(0), sizes=(7, 6, 5, 3))
    state = nnx.state(model)
    params = model if as_module else state
    before = copy.deepcopy(nnx.to_pure_dict(nnx.state(model)))
    updates = {s.name: jnp.zeros(s.shape, s.dtype) for s in tree.select(params)[:2]}
    new_state = tree.replace(params, updates)
    assert isinstance(new_state, nnx.State)
    # nothing of the caller's changed: neither the model nor the state it handed in
    _assert_trees_equal(nnx.to_pure_dict(nnx.state(model)), before)
    _assert_trees_equal(nnx.to_pure_dict(state), before)
    # new Variables throughout, so the new state does not alias the model
    assert new_state["layers"][2]["kernel"] is not model.layers[2].kernel
    assert isinstance(new_state["layers"][0]["kernel"], nnx.Param)
    # merge and update both work
    graphdef, _ = nnx.split(model)
    merged = nnx.merge(graphdef, new_state)
    x = jnp.ones((2, 7))
    np.testing.assert_array_equal(np.asarray(merged.layers[0].kernel.get_value()), 0.0)
    kept = merged.layers[2].kernel.get_value()
    np.testing.assert_array_equal(np.asarray(kept), before["layers"][2]["kernel"])
    nnx.update(model, new_state)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(merged(x)))
    np.testing.assert_array_equal(np.asarray(model.layers[1].kernel.get_value()), 0.0)


def test_select_and_views_do_not_mutate():
    params = {"conv": {"kernel": _rand(3, 3, 2, 4)}, "stack": {"kernel": _rand(2, 3, 4)}, "b": _rand(4)}
    before = copy.deepcopy(params)
    sels = tree.select(params, layer_axis={"stack": 0})
    outs = tree.map_groups(lambda s: s * 0.0, [tree.to_matrices(s.value, s) for s in sels], shard=False)
    tree.replace(params, {s.name: tree.from_matrices(o, s) for s, o in zip(sels, outs)})
    _assert_trees_equal(params, before)


def test_plain_names_and_ambiguous_names():
    params = {"enc": {"layers": [{"kernel": _rand(4, 3)}]}, "encoder.layer.0.weight": _rand(4, 3)}
    assert _names(tree.select(params)) == ["enc/layers/0/kernel", "encoder.layer.0.weight"]
    assert _names(tree.select(params, where=r"^enc/layers/0/kernel$")) == ["enc/layers/0/kernel"]
    clash = {"a/kernel": _rand(4, 3), "a": {"kernel": _rand(4, 3)}}
    with pytest.raises(ValueError, match="two leaves have the same name 'a/kernel'"):
        tree.select(clash)


def test_plain_pytrees_never_import_flax():
    """Flax is imported only by callers that build NNX objects: ``pdbjax analyze`` on a checkpoint (a plain
    dict) does not pay for it, and an NNX model still works once its caller has imported Flax."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import pdbjax
        W = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
        rows = pdbjax.analyze({"dense": {"kernel": W}}, baselines=False).rows
        assert rows[0]["status"] == "ok", rows[0]["status"]
        print(sorted(m for m in sys.modules if m.split(".")[0] == "flax"))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    model = FCNN(nnx.Rngs(0), sizes=(32, 16, 4))
    names = [s.name for s in tree.select(model)]
    assert len(names) == 2 and names == [s.name for s in tree.select(nnx.state(model))]


def test_leaf_names_are_the_names_reports_use():
    """leaf_names: the plain path names of every leaf (an NNX Variable is one leaf), as select names them."""
    params = {"dense": {"kernel": _rand(4, 3), "bias": np.zeros(3)}}
    assert tree.leaf_names(params) == ["dense/bias", "dense/kernel"]
    assert [s.name for s in tree.select(params)] == ["dense/kernel"]
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    assert tree.leaf_names(nnx.state(model)) == ["bias", "kernel"]
