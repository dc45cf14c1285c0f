"""Fine-tuning a factored network (pdbjax.experiments.finetune): one epoch on a tiny MLP."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import pdbjax
from pdbjax.experiments.finetune import balance, dense_state, finetune, recovery_config, stored_params
from pdbjax.experiments.models import FCNN
from pdbjax.experiments.train import TrainConfig, accuracy_with_state, train


def _problem(n: int = 512, d: int = 32, classes: int = 4, seed: int = 0):
    """Linearly separable classes: labels of a random linear map of Gaussian inputs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(d, classes)), axis=1).astype(np.int32)
    return x, y


def _loss(graphdef, state, x, y) -> float:
    model = nnx.merge(graphdef, state)
    model.eval()
    return float(optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean())


@pytest.fixture(scope="module")
def setup():
    x, y = _problem()
    model = FCNN(nnx.Rngs(0), sizes=(32, 48, 48, 4))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    factored, report = pdbjax.compress(params, method="svd", where=r"layers/[01]/kernel", rank=0.5, factored=True)
    return graphdef, state, params, factored, report, x, y


def test_finetune_lowers_loss_keeps_factor_shapes(setup):
    graphdef, state, params, factored, report, x, y = setup
    low = factored["layers"][0]["kernel"]
    assert isinstance(low, pdbjax.LowRank) and isinstance(factored["layers"][1]["kernel"], pdbjax.LowRank)
    before_state = dense_state(state, factored)
    before = _loss(graphdef, before_state, x, y)
    config = TrainConfig(learning_rate=0.2, momentum=0.9, batch_size=32, epochs=1, seed=3)
    new, new_state, record = finetune(graphdef, state, factored, x, y, config)
    after = _loss(graphdef, new_state, x, y)
    assert after < 0.85 * before, (before, after)
    assert record["steps"] == 16 and np.isfinite(record["loss"])
    # Same tree, same node types and factor shapes: the stored count is what it was.
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(factored)
    for node in (new["layers"][0]["kernel"], new["layers"][1]["kernel"]):
        assert isinstance(node, pdbjax.LowRank)
    assert [np.shape(v) for v in jax.tree_util.tree_leaves(new)] == [np.shape(v) for v in jax.tree_util.tree_leaves(factored)]
    assert stored_params(new) == stored_params(factored) < stored_params(params)
    # The factors themselves were trained (not only the dense leaves), and the returned dense state is their product.
    assert not np.allclose(new["layers"][0]["kernel"].b, low.b)
    np.testing.assert_allclose(np.asarray(new_state["layers"][0]["kernel"].get_value()),
                               np.asarray(new["layers"][0]["kernel"].a @ new["layers"][0]["kernel"].b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new_state["layers"][2]["kernel"].get_value()),
                               np.asarray(new["layers"][2]["kernel"]))


def test_finetune_leaves_inputs_alone_and_is_seeded(setup):
    graphdef, state, params, factored, report, x, y = setup
    copies = [np.array(v) for v in jax.tree_util.tree_leaves((state, params, factored))]
    config = TrainConfig(learning_rate=0.05, momentum=0.9, batch_size=64, epochs=1, seed=3)
    first, _, r1 = finetune(graphdef, state, factored, x, y, config)
    for old, now in zip(copies, jax.tree_util.tree_leaves((state, params, factored))):
        np.testing.assert_array_equal(old, np.asarray(now))
    second, _, r2 = finetune(graphdef, state, factored, x, y, config)
    assert r1["loss"] == r2["loss"]
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other, _, r3 = finetune(graphdef, state, factored, x, y, config, epoch=1)  # another data order
    assert r3["loss"] != r1["loss"]


class _ConvBN(nnx.Module):
    """Conv-BatchNorm-ReLU twice, global average pooling, a dense classifier."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.fc = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(axis=(1, 2)))


def test_finetune_batchnorm_statistics_move():
    """A conv net with BatchNorm: the running statistics are carried and updated, conv factors trained."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)
    graphdef, state = nnx.split(_ConvBN(nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    factored, _ = pdbjax.compress(params, method="svd", where=r"conv2/kernel", rank=0.5, factored=True)
    assert factored["conv2"]["kernel"].a.shape == (72, 8)  # (3 3 8, 16) matrix view, rank 8
    new, new_state, record = finetune(graphdef, state, factored, x, y, TrainConfig(batch_size=32, momentum=0.9))
    assert isinstance(new["conv2"]["kernel"], pdbjax.LowRank)
    assert not np.allclose(new["conv2"]["kernel"].a, factored["conv2"]["kernel"].a)
    for bn in ("bn1", "bn2"):
        assert not np.allclose(new[bn]["mean"], params[bn]["mean"])
        np.testing.assert_array_equal(np.asarray(new_state[bn]["var"].get_value()), np.asarray(new[bn]["var"]))
    assert stored_params(new) == stored_params(factored)
    assert 0.0 <= accuracy_with_state(graphdef, new_state, x, y) <= 1.0


def test_finetune_without_factors_is_one_epoch_of_train(setup):
    """No LowRank node: the same steps as the training recipe (same order, optimiser and loss)."""
    graphdef, state, params, factored, report, x, y = setup
    config = TrainConfig(learning_rate=0.05, momentum=0.9, batch_size=64, epochs=1, seed=2)
    _, new_state, _ = finetune(graphdef, state, params, x, y, config)
    model = nnx.merge(graphdef, state)
    train(model, x, y, config)
    for (path, a), (_, b) in zip(nnx.to_flat_state(new_state), nnx.to_flat_state(nnx.state(model))):
        np.testing.assert_allclose(np.asarray(a.get_value()), np.asarray(b.get_value()), rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_balance_keeps_product_and_equalises_norms():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2, 30, 5)).astype(np.float32) * np.array([9.0, 4.0, 1.0, 0.5, 0.0], np.float32)
    b = rng.normal(size=(2, 5, 20)).astype(np.float32)
    out = balance(pdbjax.LowRank(a, b))
    np.testing.assert_allclose(out.a @ out.b, a @ b, rtol=1e-5, atol=1e-5)
    na, nb = np.linalg.norm(out.a, axis=-2), np.linalg.norm(out.b, axis=-1)
    np.testing.assert_allclose(na[:, :4], nb[:, :4], rtol=1e-5)
    assert np.all(na[:, 4] == 0) and out.a.shape == a.shape and out.b.shape == b.shape


def test_recovery_config():
    config = recovery_config(TrainConfig(learning_rate=0.05, lr_decay=0.8, epochs=8, momentum=0.9), lr_scale=0.5)
    assert config.learning_rate == pytest.approx(0.5 * 0.05 * 0.8**7)
    assert (config.lr_decay, config.epochs, config.momentum) == (1.0, 1, 0.9)
    with pytest.raises(ValueError):
        recovery_config(TrainConfig(), lr_scale=0.0)


def test_finetune_rejects_mismatched_params(setup):
    graphdef, state, params, factored, report, x, y = setup
    broken = {"layers": {k: v for k, v in factored["layers"].items() if k != 2}}
    with pytest.raises(KeyError):
        finetune(graphdef, state, broken, x, y, TrainConfig(batch_size=64))
