"""Training recipe, evaluation and checkpoints for the PDB experiments (Flax NNX + optax).

Reference recipe (the defaults of :class:`TrainConfig`):

* loss: sparse categorical cross-entropy on logits
  (``optax.softmax_cross_entropy_with_integer_labels``), averaged over the batch;
* optimiser: SGD with (heavy-ball, not Nesterov) momentum 0.98;
* learning rate ``0.05 * 0.88**epoch``, constant within an epoch (an optax
  staircase ``exponential_decay`` with one transition per epoch);
* batch size 100, 30 epochs, seed 1; each epoch visits the training set in the
  order ``numpy.random.default_rng([seed, epoch]).permutation(n)``, so the data
  order does not depend on anything but the seed and the epoch. A final short
  batch is kept (one extra compilation).

Note that optax applies the learning rate after the momentum accumulation
(``update = -lr_t * (g_t + m * trace)``); with a constant rate this is the same as
the Keras ``v = m*v - lr*g`` form, and the two only differ in how the per-epoch
decay is mixed into the momentum buffer.

Evaluation goes through :func:`accuracy_with_state`, which rebuilds the model
from a ``(graphdef, state)`` pair in eval mode inside one jitted function; the
compiled function is cached per graphdef and batch shape, so evaluating many
modified states (e.g. compressed kernels put in with :func:`replace_arrays`)
costs no recompilation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pdbjax import io as pdbio
from pdbjax import tree

Path = tuple[str | int, ...]
History = dict[str, list[float]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the reference recipe (see the module docstring)."""

    learning_rate: float = 0.05
    """Learning rate of the first epoch."""
    lr_decay: float = 0.88
    """Factor applied to the learning rate at the start of every later epoch (staircase decay)."""
    momentum: float = 0.98
    """Momentum coefficient of SGD."""
    nesterov: bool = False
    """Nesterov momentum instead of heavy-ball momentum."""
    batch_size: int = 100
    """Examples per optimiser step; a final short batch is kept."""
    epochs: int = 30
    """Passes over the training set."""
    seed: int = 1
    """Seed of every epoch's data order (the caller initialises the model)."""

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {self.batch_size!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)) or self.epochs < 0:
            raise ValueError(f"epochs must be a non-negative int; got {self.epochs!r}")


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of optimiser steps in one epoch over ``n`` examples (last short batch kept)."""
    return math.ceil(n / batch_size)


def learning_rate_schedule(config: TrainConfig, steps: int) -> optax.Schedule:
    """``learning_rate * lr_decay**epoch`` with ``steps`` optimiser steps per epoch."""
    return optax.exponential_decay(
        config.learning_rate, transition_steps=steps, decay_rate=config.lr_decay, staircase=True
    )


def make_optimizer(config: TrainConfig, steps: int) -> optax.GradientTransformation:
    """SGD with momentum on the staircase schedule of :func:`learning_rate_schedule`."""
    return optax.sgd(
        learning_rate_schedule(config, steps), momentum=config.momentum, nesterov=config.nesterov
    )


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training examples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def labelled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(x, y, n)`` as arrays with their common length; ``ValueError`` unless non-empty and matching."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0 or len(y) != len(x):
        raise ValueError(f"need matching non-empty inputs and labels, got {len(x)} and {len(y)}")
    if y.dtype.kind not in "iu" or np.any(y < 0):  # a float label would be truncated, a negative one index from the end
        raise ValueError(f"labels must be non-negative integers (class indices); got dtype {y.dtype}, min {y.min()}")
    return x, y, len(x)


def loss_and_logits(model: nnx.Module, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy of ``model(x)`` against integer labels ``y``, and the logits."""
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit
def _train_step(
    model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One SGD step in place; returns the batch loss and the number of correct predictions."""
    (loss, logits), grads = nnx.value_and_grad(loss_and_logits, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss, jnp.sum(jnp.argmax(logits, axis=-1) == y)


def train(
    model: nnx.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    config: TrainConfig = TrainConfig(),
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
) -> History:
    """Train ``model`` in place with the reference recipe.

    ``x_train`` holds the inputs in the layout the model expects (flat or NHWC),
    ``y_train`` integer labels. The model is put in train mode for the run and
    left in eval mode afterwards. Returns the history: per epoch ``epoch``,
    ``lr`` (the rate used during the epoch), ``loss`` (mean training loss),
    ``acc`` (training accuracy accumulated during the epoch, as Keras reports it),
    ``seconds`` and, when a test set is given, ``test_acc``. ``log``, if given,
    receives the record of each epoch as it ends.
    """
    x_train, y_train, n = labelled(x_train, y_train)
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    steps = steps_per_epoch(n, config.batch_size)
    schedule = learning_rate_schedule(config, steps)
    model.train()
    optimizer = nnx.Optimizer(model, make_optimizer(config, steps), wrt=nnx.Param)
    history: History = {"epoch": [], "lr": [], "loss": [], "acc": [], "seconds": []}
    if x_test is not None:
        history["test_acc"] = []
    for epoch in range(config.epochs):
        start = time.perf_counter()
        order = epoch_permutation(config.seed, epoch, n)
        losses, corrects, sizes = [], [], []
        for i in range(steps):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            loss, correct = _train_step(model, optimizer, x_train[idx], y_train[idx])
            losses.append(loss)
            corrects.append(correct)
            sizes.append(len(idx))
        record = {
            "epoch": float(epoch),
            "lr": float(schedule(epoch * steps)),
            "loss": float(np.dot(np.asarray(jax.device_get(losses)), sizes) / n),
            "acc": float(np.sum(jax.device_get(corrects)) / n),
            "seconds": time.perf_counter() - start,
        }
        if x_test is not None:
            record["test_acc"] = evaluate(model, x_test, y_test)
        for key, value in record.items():
            history[key].append(value)
        if log is not None:
            log(record)
    model.eval()
    return history


@functools.partial(jax.jit, static_argnums=0)
def _count_correct(
    graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, y: jax.Array, valid: jax.Array
) -> jax.Array:
    model = nnx.merge(graphdef, state)
    model.eval()
    predictions = jnp.argmax(model(x), axis=-1)
    return jnp.sum((predictions == y) & valid)


def accuracy_with_state(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 1000,
) -> float:
    """Accuracy of ``nnx.merge(graphdef, state)`` on ``(x, y)``, in eval mode.

    The BatchNorm running averages in ``state`` are used whatever mode the model
    was split in. The last batch is zero-padded to ``batch_size`` (and masked), so
    one compilation per graphdef and input shape serves every call.
    """
    x, y, n = labelled(x, y)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    batch = min(batch_size, n)
    correct = []
    for start in range(0, n, batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        m = len(xb)
        if m < batch:
            xb = np.concatenate([xb, np.zeros((batch - m, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros(batch - m, yb.dtype)])
        correct.append(_count_correct(graphdef, state, xb, yb, np.arange(batch) < m))
    return float(np.sum(jax.device_get(correct)) / n)


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in eval mode; ``model`` itself is not modified."""
    graphdef, state = nnx.split(model)
    return accuracy_with_state(graphdef, state, x, y, batch_size)


def replace_arrays(state: nnx.State, replacements: Mapping[Path, jax.Array | np.ndarray]) -> nnx.State:
    """A copy of ``state`` with the arrays at the given paths replaced (shapes must match).

    Paths are those of ``nnx.to_flat_state``, e.g. ``('layers', 0, 'kernel')``; ``state`` itself is
    left untouched. A thin wrapper over :func:`pdbjax.tree.replace`, which names leaves by key path.
    """
    named = {tree.path_name(tuple(jax.tree_util.DictKey(k) for k in path)): a for path, a in replacements.items()}
    return tree.replace(state, named)


def _key(path: Path) -> str:
    return "/".join(str(part) for part in path)


def save_checkpoint(path: str | os.PathLike[str], model: nnx.Module) -> None:
    """Write ``nnx.state(model)`` to the ``.npz`` file ``path``, keys = '/'-joined state paths.

    Written atomically by :func:`pdbjax.io.save` (an existing checkpoint is replaced), so ``path``
    is either the old or the new checkpoint.
    """
    arrays = {_key(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    pdbio.save(path, arrays, format="npz", overwrite=True)


def load_checkpoint(path: str | os.PathLike[str], model: nnx.Module) -> nnx.Module:
    """Load a :func:`save_checkpoint` file into ``model`` in place and return it.

    The checkpoint must hold exactly the model's state paths with the same shapes.
    """
    flat = list(nnx.to_flat_state(nnx.state(model)))
    with np.load(path) as data:
        expected = {_key(p) for p, _ in flat}
        if set(data.files) != expected:
            raise KeyError(
                f"{path}: missing {sorted(expected - set(data.files))}, "
                f"unexpected {sorted(set(data.files) - expected)}"
            )
        loaded = {}
        for p, v in flat:
            array = data[_key(p)]
            if array.shape != v.shape:
                raise ValueError(f"{path}: {_key(p)} has shape {array.shape}, model has {v.shape}")
            loaded[p] = v.replace(jnp.asarray(array, dtype=v.dtype))
    nnx.update(model, nnx.from_flat_state(loaded))
    return model
