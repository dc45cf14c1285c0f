"""Fast checks of the networks (pdbjax.experiments.models) and the training recipe (pdbjax.experiments.train)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pdbjax.experiments.models import FCNN, VGG16, ResNet18, kernel_paths
from pdbjax.experiments.train import (
    TrainConfig,
    _count_correct,
    accuracy_with_state,
    epoch_permutation,
    evaluate,
    learning_rate_schedule,
    load_checkpoint,
    replace_arrays,
    save_checkpoint,
    train,
)

SMALL_SIZES = (20, 32, 32, 16, 3)


def separable_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated Gaussian blobs in 20 dimensions."""
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((3, SMALL_SIZES[0]))
    y = rng.integers(0, 3, n)
    x = centers[y] + 0.5 * rng.standard_normal((n, SMALL_SIZES[0]))
    return x.astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="module")
def trained() -> tuple[FCNN, dict, list, np.ndarray, np.ndarray]:
    x, y = separable_data(300)
    model = FCNN(nnx.Rngs(0), sizes=SMALL_SIZES)
    config = TrainConfig(learning_rate=0.01, momentum=0.9, batch_size=32, epochs=3)
    records = []
    history = train(model, x, y, config, x_test=x[:100], y_test=y[:100], log=records.append)
    return model, history, records, x, y


def test_fcnn_shapes_and_paths() -> None:
    model = FCNN(nnx.Rngs(0), sizes=SMALL_SIZES)
    assert model(jnp.ones((2, 20))).shape == (2, 3)
    assert model.hidden_kernel_paths() == [("layers", i, "kernel") for i in range(3)]
    assert kernel_paths(model) == [("layers", i, "kernel") for i in range(4)]
    assert [model.layers[i].kernel.shape for i in range(4)] == [(20, 32), (32, 32), (32, 16), (16, 3)]


@pytest.fixture(scope="module")
def full_fcnn() -> FCNN:
    return FCNN(nnx.Rngs(0))


@pytest.fixture(scope="module")
def convnets() -> dict[type, nnx.Module]:
    """One small model of each convolutional class, shared (model init compiles per shape)."""
    return {cls: cls(nnx.Rngs(0), num_classes=10, width=0.0625, in_channels=1) for cls in (VGG16, ResNet18)}


@nnx.jit
def forward(model: nnx.Module, x: jnp.ndarray) -> jnp.ndarray:
    return model(x)


def test_fcnn_default_sizes_and_flattening(full_fcnn: FCNN) -> None:
    assert forward(full_fcnn, jnp.ones((2, 28, 28))).shape == (2, 10)
    assert [full_fcnn.layers[i].kernel.shape for i in range(3)] == [(784, 512), (512, 512), (512, 350)]


def test_fcnn_init_glorot_uniform_zero_bias(full_fcnn: FCNN) -> None:
    for layer, (din, dout) in zip(full_fcnn.layers, [(784, 512), (512, 512), (512, 350), (350, 10)]):
        kernel = np.asarray(layer.kernel[...])
        limit = math.sqrt(6.0 / (din + dout))
        assert np.abs(kernel).max() <= limit
        assert np.abs(kernel).max() > 0.95 * limit
        # Uniform on [-limit, limit] has variance limit**2 / 3.
        assert kernel.var() == pytest.approx(limit**2 / 3, rel=0.05)
        assert np.all(np.asarray(layer.bias[...]) == 0)


@pytest.mark.parametrize("cls", [VGG16, ResNet18])
def test_convnet_shapes_train_and_eval(convnets: dict, cls: type) -> None:
    model = nnx.clone(convnets[cls])
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 1)), jnp.float32)
    assert forward(model, x).shape == (2, 10)
    model.eval()
    assert forward(model, x).shape == (2, 10)
    assert all(path[-1] == "kernel" for path in kernel_paths(model))


def test_convnet_channel_plan() -> None:
    vgg = nnx.eval_shape(lambda: VGG16(nnx.Rngs(0), width=0.125, in_channels=3))
    assert len(vgg.convs) == 13
    assert vgg.convs[0].kernel.shape == (3, 3, 3, 8)
    assert vgg.convs[-1].kernel.shape == (3, 3, 64, 64)
    assert vgg.classifier[1].kernel.shape == (64, 10)
    resnet = nnx.eval_shape(lambda: ResNet18(nnx.Rngs(0), width=0.125))
    assert len(resnet.blocks) == 8
    assert resnet.stem.kernel.shape == (3, 3, 1, 8)
    assert resnet.blocks[2].shortcut.kernel.shape == (1, 1, 8, 16)
    assert resnet.blocks[1].shortcut is None
    assert resnet.fc.kernel.shape == (64, 10)
    full = nnx.eval_shape(lambda: ResNet18(nnx.Rngs(0), num_classes=100, in_channels=3))
    assert full.blocks[-1].conv2.kernel.shape == (3, 3, 512, 512)
    assert full.fc.kernel.shape == (512, 100)


def test_learning_rate_schedule_staircase() -> None:
    steps = 7
    schedule = learning_rate_schedule(TrainConfig(), steps)
    for epoch in range(30):
        expected = 0.05 * 0.88**epoch
        assert float(schedule(epoch * steps)) == pytest.approx(expected, rel=1e-5)
        assert float(schedule(epoch * steps + steps - 1)) == pytest.approx(expected, rel=1e-5)


def test_defaults_and_shuffling() -> None:
    config = TrainConfig()
    assert (config.learning_rate, config.lr_decay, config.momentum, config.nesterov) == (0.05, 0.88, 0.98, False)
    assert (config.batch_size, config.epochs, config.seed) == (100, 30, 1)
    a = epoch_permutation(1, 0, 50)
    assert np.array_equal(a, epoch_permutation(1, 0, 50))
    assert not np.array_equal(a, epoch_permutation(1, 1, 50))
    assert np.array_equal(np.sort(a), np.arange(50))


def test_training_learns_separable_data(trained) -> None:
    model, history, records, x, y = trained
    assert len(history["loss"]) == 3 and len(records) == 3
    assert records[-1] == {key: values[-1] for key, values in history.items()}
    assert history["loss"][-1] < history["loss"][0]
    assert history["lr"] == pytest.approx([0.01 * 0.88**e for e in range(3)])
    assert history["test_acc"][-1] >= 0.95
    assert evaluate(model, x, y) >= 0.95


def test_training_with_batchnorm_updates_stats(convnets: dict) -> None:
    model = nnx.clone(convnets[ResNet18])
    x = np.random.default_rng(0).standard_normal((8, 32, 32, 1)).astype(np.float32)
    y = np.arange(8) % 10
    before = np.asarray(model.stem_bn.mean[...]).copy()
    history = train(model, x, y, TrainConfig(batch_size=4, epochs=1))
    assert np.isfinite(history["loss"][0])
    assert not np.allclose(before, np.asarray(model.stem_bn.mean[...]))
    assert 0.0 <= evaluate(model, x, y, batch_size=3) <= 1.0


def test_accuracy_with_state_matches_evaluate_after_swap(trained) -> None:
    model, _, _, x, y = trained
    graphdef, state = nnx.split(model)
    assert accuracy_with_state(graphdef, state, x, y, batch_size=64) == pytest.approx(evaluate(model, x, y))
    path = model.hidden_kernel_paths()[1]
    zeroed = replace_arrays(state, {path: np.zeros((32, 32))})
    compiled = _count_correct._cache_size()
    acc_zeroed = accuracy_with_state(graphdef, zeroed, x, y, batch_size=64)
    assert _count_correct._cache_size() == compiled  # a new state reuses the compiled function
    # The original state is untouched; the swapped one behaves like a model with that kernel zeroed.
    assert np.any(np.asarray(state["layers"][1]["kernel"][...]) != 0)
    clone = nnx.clone(model)
    clone.layers[1].kernel[...] = jnp.zeros((32, 32))
    assert acc_zeroed == pytest.approx(evaluate(clone, x, y))
    assert acc_zeroed < 0.9
    with pytest.raises(ValueError):
        replace_arrays(state, {path: np.zeros((3, 3))})
    with pytest.raises(KeyError):
        replace_arrays(state, {("nope", "kernel"): np.zeros((3, 3))})


def test_checkpoint_round_trip(convnets: dict, tmp_path) -> None:
    model = nnx.clone(convnets[ResNet18])
    model.stem_bn.mean[...] = jnp.full(model.stem_bn.mean.shape, 0.5)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model)
    save_checkpoint(path, model)  # overwriting an own checkpoint is allowed
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    with np.load(path) as data:
        assert "stem_bn/mean" in data.files and "blocks/2/shortcut/kernel" in data.files
    other = nnx.clone(model)
    nnx.update(other, jax.tree.map(jnp.zeros_like, nnx.state(other)))
    assert not np.any(np.asarray(other.blocks[0].conv1.kernel[...]))
    assert load_checkpoint(path, other) is other
    for (p1, v1), (p2, v2) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(other))):
        assert p1 == p2
        np.testing.assert_array_equal(np.asarray(v1[...]), np.asarray(v2[...]))
    with pytest.raises(KeyError):
        load_checkpoint(path, FCNN(nnx.Rngs(0), sizes=SMALL_SIZES))


def test_demo_selects_the_hidden_kernels_by_their_plain_names(full_fcnn: FCNN) -> None:
    """The demo's selection (and the benchmarks') must name leaves as pdbjax does: ``layers/0/kernel``."""
    from pdbjax.experiments.demo import hidden_where
    from pdbjax.tree import select

    names = [s.name for s in select(full_fcnn, hidden_where(full_fcnn))]
    assert names == ["layers/0/kernel", "layers/1/kernel", "layers/2/kernel"]


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": -1}, {"batch_size": 2.5}, {"epochs": -1}])
def test_train_config_refuses_bad_sizes(kwargs) -> None:
    """batch_size -1 used to run no step and report a loss of 0.0; 0 failed with a bare ZeroDivisionError."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("labels", [np.array([0.0, 3.7]), np.array([0, -1])])
def test_training_and_evaluation_refuse_labels_that_are_not_class_indices(labels) -> None:
    model = FCNN(nnx.Rngs(0), (4, 8, 2))
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="non-negative integers"):
        train(model, x, labels, TrainConfig(batch_size=2, epochs=1))
    with pytest.raises(ValueError, match="non-negative integers"):
        evaluate(model, x, labels)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, x, np.array([0, 1]), batch_size=0)
