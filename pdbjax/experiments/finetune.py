"""Fine-tuning a factored (low-rank) network with optax: the usual recovery step after compression.

:func:`pdbjax.compress` with ``factored=True`` turns each compressed kernel of a param pytree into a
:class:`pdbjax.LowRank` node ``(a, b)`` with ``W' = a @ b`` in the kernel's matrix view (a conv kernel
``(kh, kw, c_in, c_out)`` is the ``(kh kw c_in, c_out)`` matrix). :func:`finetune` trains such a tree
for one epoch *in its factored form*: the loss densifies every ``LowRank`` node inside the jitted step
(:func:`pdbjax.densify`, i.e. ``a @ b`` reshaped to the leaf's shape), so the gradients flow to ``a``
and ``b`` and what is trained is exactly what is stored: the factor shapes, hence the stored parameter
count, do not change (by default each pair is first rebalanced, :func:`balance`: the same product with
``a`` and ``b`` sharing the singular values, which keeps the step on the large components of the order of
the dense one). Every other ``nnx.Param`` leaf (biases, BatchNorm scales, kernels left dense)
trains as usual. Any other factor pair can be fine-tuned the same way by wrapping it as
``LowRank(a, b)``.

Networks are Flax NNX models given as ``(graphdef, state)`` (``nnx.split(model)``); the param tree is
``nnx.to_pure_dict(state)`` in which some leaves are ``LowRank`` (what ``compress(..., factored=True)``
returns for that pure dict). As in :func:`pdbjax.experiments.train.train`, the network runs in train
mode: BatchNorm normalises with the batch statistics and updates its running averages (the
``nnx.BatchStat`` leaves, which are not trained by gradient but carried from step to step), so the
stale running statistics of the compressed network are re-estimated on the way.

Optimiser: :func:`pdbjax.experiments.train.make_optimizer` (SGD with heavy-ball momentum on the
staircase schedule) with a :class:`~pdbjax.experiments.train.TrainConfig`; :func:`recovery_config`
derives the usual recovery setting from a training recipe: one epoch at a small constant learning
rate, ``lr_scale`` times the recipe's final rate, with the recipe's momentum and batch size. The data
order is ``epoch_permutation(config.seed, epoch, n)`` (seeded, as in training), the loss the mean
softmax cross-entropy on the logits.

Everything here is a function of its arguments: the caller's state and params are never modified.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util

from pdbjax.api import LowRank, densify
from pdbjax.experiments.train import (
    TrainConfig,
    epoch_permutation,
    labelled,
    loss_and_logits,
    make_optimizer,
    replace_arrays,
    steps_per_epoch,
)

__all__ = ["finetune", "recovery_config", "final_learning_rate", "balance", "stored_params", "dense_state"]

Path = tuple[str | int, ...]


def final_learning_rate(config: TrainConfig) -> float:
    """The learning rate of the last epoch of a recipe: ``learning_rate * lr_decay**(epochs - 1)``."""
    return config.learning_rate * config.lr_decay ** max(config.epochs - 1, 0)


def recovery_config(config: TrainConfig, lr_scale: float = 1.0, epochs: int = 1) -> TrainConfig:
    """The recovery step for a network trained with ``config``: ``epochs`` epochs at the constant rate
    ``lr_scale * final_learning_rate(config)`` (no decay), same momentum, batch size and seed."""
    if lr_scale <= 0 or epochs < 1:
        raise ValueError(f"need lr_scale > 0 and epochs >= 1; got {lr_scale} and {epochs}")
    return dataclasses.replace(
        config, learning_rate=lr_scale * final_learning_rate(config), lr_decay=1.0, epochs=epochs
    )


def _is_low(x: Any) -> bool:
    return isinstance(x, LowRank)


def balance(node: LowRank) -> LowRank:
    """The same product ``a @ b`` with column ``j`` of ``a`` and row ``j`` of ``b`` of equal norm.

    Factors in the form ``a = U diag(s)``, ``b = V^T`` (as ``compress`` stored them before it stored balanced
    ones, or as other tools give them): trained in that form, one SGD step on the factors moves ``W = a b`` by
    ``-lr (G b^T b + a a^T G) = -lr (G V V^T + U diag(s^2) U^T G)``: along a component with singular value
    ``s`` the step is about ``s^2`` times the dense one, which makes a learning rate that suits the dense
    network unstable for the large components. Balanced factors ``a = U diag(sqrt(s))``,
    ``b = diag(sqrt(s)) V^T`` (``compress``'s own, which this leaves as they are up to rounding) scale it by
    ``2 s`` instead. Zero columns stay zero. Works on stacks (``a`` of shape ``(..., m, r)``, ``b`` ``(..., r, n)``).
    """
    a, b = np.asarray(node.a), np.asarray(node.b)
    na, nb = np.linalg.norm(a, axis=-2), np.linalg.norm(b, axis=-1)
    d = np.sqrt(np.where((na > 0) & (nb > 0), na / np.where(nb > 0, nb, 1.0), 1.0))
    return LowRank((a / d[..., None, :]).astype(a.dtype), (b * d[..., :, None]).astype(b.dtype))


def stored_params(params: Mapping) -> int:
    """Numbers stored by a (possibly factored) param tree: ``a.size + b.size`` per :class:`LowRank`
    node, the size of every other array leaf."""
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def _like(state: nnx.State, low_paths: list[Path]) -> dict:
    """The original leaves at ``low_paths`` as host arrays: the layout :func:`pdbjax.densify` needs
    (read at trace time only, so they are not staged into the compiled step)."""
    flat = {path: v.get_value() for path, v in nnx.to_flat_state(state)}
    return traverse_util.unflatten_dict({path: np.asarray(flat[path]) for path in low_paths})


def dense_state(state: nnx.State, params: Mapping) -> nnx.State:
    """A copy of ``state`` holding the leaves of ``params`` (a pure dict in ``state``'s layout, with
    :class:`LowRank` nodes multiplied out): the network the factored tree stands for, ready for
    ``nnx.merge`` or :func:`pdbjax.experiments.train.accuracy_with_state`."""
    flat = traverse_util.flatten_dict(dict(params))
    low = [path for path, leaf in flat.items() if _is_low(leaf)]
    dense = traverse_util.flatten_dict(densify(dict(params), _like(state, low)))
    return replace_arrays(state, dense)


def finetune(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    params: Mapping,
    x_train: np.ndarray,
    y_train: np.ndarray,
    config: TrainConfig,
    *,
    epoch: int = 0,
    balanced: bool = True,
) -> tuple[dict, nnx.State, dict[str, float]]:
    """Train the factored param tree ``params`` of the network ``(graphdef, state)`` for one epoch.

    Args:
      graphdef, state: the network, ``nnx.split(model)``; ``state`` gives the layout, the variable
        types (``nnx.Param`` leaves are trained, the others such as ``nnx.BatchStat`` are carried)
        and the shape of every leaf that ``params`` holds as factors.
      params: ``nnx.to_pure_dict(state)`` with compressed leaves as :class:`LowRank` ``(a, b)``
        (``compress(nnx.to_pure_dict(state), ..., factored=True)``); its values, not ``state``'s, are
        the starting point of every leaf.
      x_train, y_train: training inputs in the model's layout and integer labels.
      config: optimiser, batch size and seed (:func:`recovery_config`); one epoch is run whatever
        ``config.epochs`` says, at the config's first-epoch rate ``config.learning_rate``.
      epoch: which seeded permutation (:func:`~pdbjax.experiments.train.epoch_permutation`) orders
        the data.
      balanced: first rescale every factor pair with :func:`balance` (same product, same shapes), so
        that the step along a component of singular value ``s`` scales with ``s``, not ``s^2``.

    Returns:
      ``(new_params, new_state, record)``: ``new_params`` has the structure, node types and factor
      shapes of ``params`` (trained factors, updated BatchNorm statistics); ``new_state`` is the dense
      network they stand for (:func:`dense_state`); ``record`` holds ``loss`` and ``acc`` accumulated
      over the epoch (on the labels given), ``lr``, ``steps`` and ``seconds``.
    """
    x_train, y_train, n = labelled(x_train, y_train)
    flat = traverse_util.flatten_dict(dict(params))
    if balanced:
        flat = {path: balance(leaf) if _is_low(leaf) else leaf for path, leaf in flat.items()}
    kinds = {path: type(v) for path, v in nnx.to_flat_state(state)}
    if set(flat) != set(kinds):
        raise KeyError(f"params and state differ: only in params {sorted(set(flat) - set(kinds))}, "
                       f"only in state {sorted(set(kinds) - set(flat))}")
    trained = [path for path in flat if issubclass(kinds[path], nnx.Param)]
    carried = [path for path in flat if path not in set(trained)]
    if any(_is_low(flat[path]) for path in carried):
        raise ValueError("LowRank nodes are only supported for nnx.Param leaves")
    like = _like(state, [path for path in trained if _is_low(flat[path])])
    start = replace_arrays(state, {path: flat[path] for path in carried})
    trainable = traverse_util.unflatten_dict({path: flat[path] for path in trained})
    steps = steps_per_epoch(n, config.batch_size)
    tx = make_optimizer(config, steps)

    def loss_fn(tree: dict, st: nnx.State, x: jax.Array, y: jax.Array):
        model = nnx.merge(graphdef, replace_arrays(st, traverse_util.flatten_dict(densify(tree, like))))
        model.train()
        loss, logits = loss_and_logits(model, x, y)
        after = dict(nnx.to_flat_state(nnx.state(model)))
        return loss, (logits, [after[path].get_value() for path in carried])

    @jax.jit
    def step(tree: dict, opt_state: Any, st: nnx.State, x: jax.Array, y: jax.Array):
        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(tree, st, x, y)
        updates, opt_state = tx.update(grads, opt_state, tree)
        st = replace_arrays(st, dict(zip(carried, stats)))
        return optax.apply_updates(tree, updates), opt_state, st, loss, jnp.sum(jnp.argmax(logits, -1) == y)

    t0 = time.perf_counter()
    opt_state = tx.init(trainable)
    order = epoch_permutation(config.seed, epoch, n)
    st, losses, corrects = start, [], []
    for i in range(steps):
        idx = order[i * config.batch_size:(i + 1) * config.batch_size]
        trainable, opt_state, st, loss, correct = step(trainable, opt_state, st, x_train[idx], y_train[idx])
        losses.append(loss * len(idx))
        corrects.append(correct)
    out = traverse_util.flatten_dict(trainable)
    st_flat = {path: v.get_value() for path, v in nnx.to_flat_state(st)}
    out.update({path: st_flat[path] for path in carried})
    new_params = traverse_util.unflatten_dict(out)
    record = {
        "loss": float(np.sum(jax.device_get(losses)) / n),
        "acc": float(np.sum(jax.device_get(corrects)) / n),
        "lr": float(config.learning_rate),
        "steps": float(steps),
        "seconds": time.perf_counter() - t0,
    }
    return new_params, dense_state(st, new_params), record
