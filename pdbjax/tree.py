r"""Weight pytrees as stacks of matrices: selection, matrix views, batched mapping and rebuilding.

This module is the pytree layer under :func:`pdbjax.analyze` / :func:`pdbjax.compress`. It does not
know about the PDB model; it answers four questions about a tree of weights:

1. **Which leaves are weight matrices?** :func:`select` walks the tree with
   :func:`jax.tree_util.tree_flatten_with_path` and returns one :class:`Selected` per chosen leaf,
   named by :func:`path_name` of its key path (keys joined by ``/``).
2. **How does a leaf map to 2-D matrices?** :func:`to_matrices` gives a ``(L, a, b)`` stack and
   :func:`from_matrices` is its exact inverse (same shape and dtype as the leaf).
3. **How are many matrices of mixed shapes processed without a Python loop per matrix?**
   :func:`map_groups` stacks equal shapes and makes one call per shape, optionally sharded over devices.
4. **How is a new tree built?** :func:`replace` returns a new tree with some leaves swapped.

Accepted trees
--------------
Any JAX pytree of arrays: nested dicts/lists/tuples, flat ``{name: array}`` dicts (e.g. from
:func:`pdbjax.io.load` of a ``.safetensors`` file), Flax Linen variable dicts ``{"params": {...}}``
(also ``FrozenDict``), a Flax NNX :class:`~flax.nnx.State` (from ``nnx.state(model)`` or
``nnx.split(model)``) and an NNX :class:`~flax.nnx.Module` itself (read through ``nnx.state(model)``).
NNX :class:`~flax.nnx.Variable` boxes are treated as leaves, so a kernel of an NNX model is named
``"layers/0/kernel"`` (no trailing ``.value``) exactly like the same kernel in a Linen dict
would be named ``"params/Dense_0/kernel"``; a flat safetensors key is named by itself,
``"encoder.layer.0.attention.self.query.weight"``. Leaves without ``shape``/``dtype`` (Python
scalars, strings, GraphDefs) are never selected.

Default selection
-----------------
A leaf is selected by default (:func:`default_where`) when all of these hold:

* its **last key** is ``kernel``, ``weight`` or ``w`` (case-insensitive). For a string key holding a
  dotted or slashed name (``'encoder.layer.0.attention.self.query.weight'``,
  ``'params/Dense_0/kernel'``) the last ``.``/``/`` component is used;
* its full name does **not** contain ``embed`` (case-insensitive): embedding tables such as BERT's
  ``embeddings.word_embeddings.weight`` are lookup tables, not linear maps, and are excluded; select
  them explicitly with ``where``;
* it is floating point (including ``bfloat16``/float8) with ``ndim >= 2``. Biases, norm scales
  (``LayerNorm.weight`` is 1-D), BatchNorm statistics, RNG keys and integer leaves are never selected
  by default.

``where`` **replaces** this rule: a regex string (``re.search`` in the name) or a predicate
``where(name, array) -> bool``. Every leaf that ``where`` accepts is then validated, so
``where=r"encoder"`` also catches 1-D biases and reports them (or errors on them, see ``on_error``);
combine with :func:`default_where` (``lambda n, x: default_where(n, x) or "embed" in n``) to extend
the default rule instead.

Matrix view
-----------
A 2-D leaf ``(a, b)`` (Flax ``Dense`` kernel ``(in, out)``, PyTorch ``Linear`` weight ``(out, in)``)
is one matrix. A leaf with ``ndim > 2`` is a convolution kernel and is flattened to one matrix by
``conv_reshape``:

* ``"in"`` (default, Flax/TF ``HWIO`` layout ``(kh, kw, in, out)``): ``(kh * kw * in, out)``, i.e.
  every axis but the last becomes a row index (``reshape(-1, out)``), the matrix a convolution
  applies to im2col patches;
* ``"out"`` (PyTorch ``OIHW`` layout ``(out, in, kh, kw)``): ``(out, in * kh * kw)``, every axis but
  the first becomes a column index.

Not every leaf with more axes is a convolution: a Flax ``DenseGeneral`` / ``MultiHeadAttention`` query, key
or value kernel ``(in, heads, head_dim)`` is the matrix ``(in, heads * head_dim)`` (``"out"``), its output
kernel ``(heads, head_dim, out)`` the matrix ``(heads * head_dim, out)`` (``"in"``). ``conv_reshape`` may
therefore be a dict ``{regex: "in" | "out"}`` like ``layer_axis``: the first regex that ``re.search``-matches
a leaf's name applies, ``"in"`` to leaves matching none (e.g. ``{"(query|key|value)/kernel": "out"}``).

Stacked (scanned, ``nnx.vmap``-created) layers hold ``L`` matrices in one leaf. ``layer_axis`` names
the axis that indexes them: an ``int`` for every selected leaf, or a dict ``{regex: axis}`` where the
first regex that ``re.search``-matches the name applies (leaves matching none are not stacked). The
layer axis is moved to the front and the remaining axes are flattened by ``conv_reshape``, so both
``[L, in, out]`` (``layer_axis=0``) and ``[in, L, out]`` (``layer_axis=1``) give ``L`` matrices
``(in, out)``.

The stack is a JAX array (``jnp`` reshapes and ``moveaxis``; they work under ``jit``); NumPy leaves are
never modified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import mmap
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax._validate import is_traced
from pdbjax.precision import Precision

__all__ = [
    "Selected",
    "default_where",
    "from_matrices",
    "group_by_shape",
    "is_nnx",
    "is_boxed",
    "is_variable",
    "leaf_names",
    "Chunk",
    "map_chunks",
    "map_groups",
    "replace",
    "select",
    "to_matrices",
    "unwrap",
]

Flatten = Literal["in", "out"]
ConvReshape = Flatten | Mapping[str, Flatten]
OnError = Literal["raise", "skip"]
Where = str | re.Pattern | Callable[[str, Any], bool] | None
LayerAxis = int | Mapping[str, int] | None
KeyPath = tuple[Any, ...]

WEIGHT_NAME = re.compile(r"kernel|weight|w", re.IGNORECASE)
EXCLUDE_NAME = re.compile(r"embed", re.IGNORECASE)
OK = "ok"


# --------------------------------------------------------------------------------------------------
# Selection


@dataclasses.dataclass(frozen=True)
class Selected:
    """One selected leaf and how it maps to a stack of 2-D matrices.

    Attributes:
      path: the :mod:`jax.tree_util` key path of the leaf (for NNX, the path of the ``Variable``).
      name: :func:`path_name` of the path (``layers/0/kernel``), used in reports, errors and :func:`replace`.
      shape, dtype: of the leaf array.
      layer_axis: the (non-negative) axis indexing stacked layers, or ``None``.
      conv_reshape: ``"in"`` or ``"out"``, how axes beyond two are flattened (module docstring).
      matrix_shape: ``(a, b)`` of each matrix; ``None`` when the leaf is not a valid matrix stack.
      num_matrices: ``L``, the number of matrices (1 without ``layer_axis``; 0 when invalid).
      status: ``"ok"``, or why the leaf was skipped (``on_error="skip"``).
      value: the leaf array itself (unwrapped from an NNX ``Variable``); not compared, not printed.
    """

    path: KeyPath
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layer_axis: int | None
    conv_reshape: Flatten
    matrix_shape: tuple[int, int] | None
    num_matrices: int
    status: str = OK
    value: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the leaf was accepted (``status == "ok"``)."""
        return self.status == OK

    @property
    def keys(self) -> tuple[str | int, ...]:
        """The key path as plain keys, e.g. ``('layers', 0, 'kernel')`` (as in ``nnx.to_flat_state``)."""
        return tuple(_key_of(k) for k in self.path)


def default_where(name: str, array: Any) -> bool:
    """The default selection rule (module docstring): a float leaf with ``ndim >= 2`` whose last key is
    ``kernel``/``weight``/``w`` and whose name does not contain ``embed``.

    ``name`` is a :func:`path_name`; its last ``.``/``/`` piece is the last key.
    """
    return (
        _is_floating(array.dtype)
        and np.ndim(array) >= 2
        and WEIGHT_NAME.fullmatch(_last_key(name)) is not None
        and EXCLUDE_NAME.search(name) is None
    )


def select(
    params: Any,
    where: Where = None,
    *,
    conv_reshape: ConvReshape = "in", layer_axis: LayerAxis = None, on_error: OnError = "raise",
    allow_empty: bool = True, precision: Precision | None = None,
) -> list[Selected]:
    """Select the weight matrices of a pytree (module docstring for the rules and conventions).

    Args:
      params: a pytree of arrays, a Linen variable dict, an NNX ``State`` or an NNX ``Module``.
      where: ``None`` for :func:`default_where`, a regex string/pattern searched in each leaf's name,
        or a predicate ``where(name, array) -> bool`` (``array`` is unwrapped from NNX Variables).
      conv_reshape: ``"in"`` (``(kh, kw, in, out) -> (kh*kw*in, out)``, Flax) or ``"out"``
        (``(out, in, kh, kw) -> (out, in*kh*kw)``, PyTorch), or ``{regex: "in" | "out"}`` per leaf
        (module docstring; ``"in"`` where none matches).
      layer_axis: axis of stacked layers: an int for every selected leaf, or ``{regex: axis}``.
      on_error: ``"raise"`` a ``ValueError`` naming the leaf when a selected leaf is not floating, has
        too few axes, is empty or holds NaN/Inf; or ``"skip"`` it: it is returned with ``ok = False``
        and the reason in ``status``.
      allow_empty: when False, selecting nothing raises a ``ValueError`` that names the rule and lists
        the leaves the tree holds (with dtypes and shapes), instead of returning ``[]``.
      precision: the working precision the selection will be decomposed in; ``"float32"`` also marks NumPy
        float64 leaves whose largest entry lies outside ``[tiny / eps, max]`` of float32 (1e-31 to 3.4e38),
        which the cast to float32 would turn into ``inf`` or flush to zeros (a bad leaf, as NaN/Inf).

    Returns:
      The selected leaves in tree-flattening order. ``params`` is not modified. The NaN/Inf check is
      skipped for traced leaves (``select`` inside ``jit``).

    Raises:
      ValueError: ``params`` is a bare array (a single matrix has no name to select it by: wrap it,
        e.g. ``{"kernel": W}``, or call :func:`pdbjax.eigenvalues` / :func:`pdbjax.filter_matrix` on
        it); a selected leaf is bad and ``on_error="raise"``; nothing is selected and
        ``allow_empty=False``; an option is invalid.

    Example (a conv kernel is viewed as ``(kh kw in, out)``; a stacked leaf gives one matrix per layer):

    >>> import numpy as np
    >>> from pdbjax.tree import select
    >>> params = {"conv": {"kernel": np.zeros((3, 3, 8, 16))}, "dense": {"kernel": np.ones((64, 10)), "bias": np.ones(10)},
    ...           "blocks": {"w": np.ones((4, 32, 32))}}
    >>> [(s.name, s.num_matrices, s.matrix_shape) for s in select(params, layer_axis={"blocks": 0})]
    [('blocks/w', 4, (32, 32)), ('conv/kernel', 1, (72, 16)), ('dense/kernel', 1, (64, 10))]
    """
    _check_conv_reshape(conv_reshape)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}")
    predicate = _predicate(where)
    flat = _flatten(params)[0]
    if len(flat) == 1 and not flat[0][0] and _is_array(unwrap(flat[0][1])):
        value = unwrap(flat[0][1])
        raise ValueError(
            f"params is a bare {value.dtype} array of shape {tuple(value.shape)}, not a tree of named "
            "weights; wrap it (e.g. {'kernel': W}) or pass the matrix to eigenvalues / fit_pdb / filter_matrix"
        )
    chosen = []
    for (path, leaf), name in zip(flat, _unique_names([path for path, _ in flat])):
        value = unwrap(leaf)
        if not _is_array(value):
            continue
        if predicate(name, value):
            chosen.append(_describe(path, name, value, _conv_reshape_for(name, conv_reshape), _layer_axis_for(name, layer_axis)))
    if not chosen and not allow_empty:
        raise ValueError(_nothing_selected(params, flat, where))
    chosen = _check_finite(chosen, precision == "float32")
    # `where` replaces the default rule, so a name pattern also catches biases and norm scales: say how out.
    hint = "" if where is None else (
        "; `where` selected it (it replaces the default rule): narrow it, or pass on_error='skip' (CLI: --on-error skip)"
        " to report such leaves as skipped")
    for sel in chosen:
        if not sel.ok and on_error == "raise":
            raise ValueError(f"{sel.name}: {sel.status}{hint}")
    return chosen


def _nothing_selected(params: Any, flat: list[tuple[KeyPath, Any]], where: Where, shown: int = 8) -> str:
    """The message of an empty selection: the rule, and what the tree holds instead."""
    if where is None:
        rule = ("the default rule (floating leaves with >= 2 axes whose last key is kernel, weight or w, "
                "no 'embed' in the name; choose other leaves with where)")
    elif isinstance(where, (str, re.Pattern)):
        pattern = where.pattern if isinstance(where, re.Pattern) else where
        rule = f"where={pattern!r} (a regex searched in the leaf names)"
    else:
        rule = f"the where predicate {getattr(where, '__name__', type(where).__name__)}"
    if not flat:
        structure = str(jax.tree_util.tree_structure(params))
        structure = structure if len(structure) <= 120 else structure[:117] + "..."
        return f"no weight matrix selected by {rule}: the tree holds no leaves ({structure})"
    leaves = [f"{path_name(path)} {_describe_leaf(unwrap(leaf))}" for path, leaf in flat[:shown]]
    more = f", ... ({len(flat) - shown} more)" if len(flat) > shown else ""
    holds = f"{len(flat)} leaf" if len(flat) == 1 else f"{len(flat)} leaves"
    return f"no weight matrix selected by {rule}; the tree holds {holds}: {', '.join(leaves)}{more}"


def _describe_leaf(value: Any) -> str:
    if _is_array(value):
        return f"{value.dtype} {tuple(int(d) for d in value.shape)}"
    return type(value).__name__


def _predicate(where: Where) -> Callable[[str, Any], bool]:
    if where is None:
        return default_where
    if isinstance(where, (str, re.Pattern)):
        pattern = re.compile(where)
        return lambda name, _: pattern.search(name) is not None
    if callable(where):
        return lambda name, array: bool(where(name, array))
    raise TypeError(f"where must be None, a regex string or a predicate (name, array) -> bool; got {where!r}")


def _layer_axis_for(name: str, layer_axis: LayerAxis) -> int | None:
    if layer_axis is None or isinstance(layer_axis, (int, np.integer)):
        return None if layer_axis is None else int(layer_axis)
    if isinstance(layer_axis, Mapping):
        axis = _first_match(name, layer_axis, None)
        return None if axis is None else int(axis)
    raise TypeError(f"layer_axis must be None, an int or a {{regex: axis}} dict; got {layer_axis!r}")


def _check_conv_reshape(conv_reshape: ConvReshape) -> None:
    flattens = conv_reshape.values() if isinstance(conv_reshape, Mapping) else [conv_reshape]
    if any(f not in ("in", "out") for f in flattens):
        raise ValueError(f"conv_reshape must be 'in', 'out' or a {{regex: 'in' | 'out'}} dict; got {conv_reshape!r}")


def _conv_reshape_for(name: str, conv_reshape: ConvReshape) -> Flatten:
    return _first_match(name, conv_reshape, "in") if isinstance(conv_reshape, Mapping) else conv_reshape


def _first_match(name: str, per_leaf: Mapping[str, Any], default: Any) -> Any:
    """The value of the first regex of a per-leaf option dict (``layer_axis``, ``conv_reshape``) that
    ``re.search``-matches ``name``; ``default`` where none does."""
    return next((value for pattern, value in per_leaf.items() if re.search(pattern, name)), default)


def _describe(path: KeyPath, name: str, value: Any, conv_reshape: Flatten, axis: int | None) -> Selected:
    shape, dtype = tuple(int(d) for d in value.shape), value.dtype
    if not jax.dtypes.issubdtype(dtype, jax.dtypes.extended):  # a PRNG key's dtype has no NumPy equivalent
        dtype = np.dtype(dtype)
    base = dict(path=path, name=name, shape=shape, dtype=dtype, conv_reshape=conv_reshape, value=value)
    status, mshape, count = OK, None, 0
    ndim = len(shape)
    if isinstance(value, jax.ShapeDtypeStruct):  # e.g. nnx.eval_shape's state: a shape and a dtype, no entries
        status = "an abstract array (jax.ShapeDtypeStruct) has no values; pass concrete params"
    elif not _is_floating(dtype):
        status = f"dtype {dtype} is not floating point; only float matrices are supported"
    elif axis is not None and not -ndim <= axis < ndim:
        status = f"layer_axis={axis} is out of range for shape {shape}"
    elif ndim - (axis is not None) < 2:
        extra = f" after taking layer_axis={axis}" if axis is not None else ""
        status = f"shape {shape} is not a matrix{extra} (needs at least 2 matrix axes)"
    if status == OK:
        axis = None if axis is None else axis % ndim
        count, mshape = _matrix_layout(shape, axis, conv_reshape)
        if count == 0 or 0 in mshape:
            status = f"shape {shape} holds no entries (empty matrix {mshape})"
    if status != OK:
        return Selected(**base, layer_axis=axis, matrix_shape=None, num_matrices=0, status=status)
    return Selected(**base, layer_axis=axis, matrix_shape=mshape, num_matrices=count)


def _matrix_layout(shape: tuple[int, ...], axis: int | None, conv_reshape: Flatten):
    """``(L, (a, b))`` for a leaf of ``shape``."""
    count = 1 if axis is None else shape[axis]
    rest = shape if axis is None else shape[:axis] + shape[axis + 1 :]
    if conv_reshape == "in":
        return count, (math.prod(rest[:-1]), rest[-1])
    return count, (rest[0], math.prod(rest[1:]))


#: Largest entries a float64 leaf may have to be decomposed in float32: beyond ``max`` the cast gives ``inf``,
#: below ``tiny / eps`` entries larger than ``eps`` of the largest become subnormal, which XLA:CPU flushes to zero.
FLOAT32_RANGE = (float(np.finfo(np.float32).tiny / np.finfo(np.float32).eps), float(np.finfo(np.float32).max))


def _check_finite(chosen: list[Selected], float32: bool = False) -> list[Selected]:
    """Mark leaves holding NaN/Inf (naming the bad layers of a stacked leaf): NumPy leaves on the host, the JAX
    leaves on one set of devices in one compiled program (:func:`_finite_flags`), one device round trip for all.
    ``float32``: also NumPy float64 leaves outside :data:`FLOAT32_RANGE`."""
    flags: dict[int, Any] = {}
    ranges: dict[int, np.ndarray] = {}
    on_devices: dict[frozenset, list[int]] = {}
    axes = {i: tuple(a for a in range(len(s.shape)) if a != s.layer_axis) for i, s in enumerate(chosen)}
    for i, sel in enumerate(chosen):
        if not sel.ok or is_traced(sel.value):
            continue
        if isinstance(sel.value, jax.Array):
            on_devices.setdefault(frozenset(sel.value.devices()), []).append(i)
            continue
        flags[i] = np.isfinite(sel.value).all(axis=axes[i])  # one flag per layer (a scalar if unstacked)
        if float32 and sel.value.dtype.kind == "f" and sel.value.dtype.itemsize > 4:  # float64 (bfloat16 is kind V)
            ranges[i] = np.maximum(np.max(sel.value, axis=axes[i]), -np.min(sel.value, axis=axes[i]))  # no |x| copy
        _release(sel.value)  # a memory-mapped leaf is read again, a chunk at a time, by map_groups
    for leaves in on_devices.values():
        flags.update(zip(leaves, _finite_flags(tuple(chosen[i].value for i in leaves), tuple(axes[i] for i in leaves))))
    flags = jax.device_get(flags)
    out = []
    for i, sel in enumerate(chosen):
        finite = np.asarray(flags.get(i, True))
        top = np.asarray(ranges.get(i, 1.0))
        outside = finite & ((top > FLOAT32_RANGE[1]) | ((top > 0) & (top < FLOAT32_RANGE[0])))
        if finite.all() and not outside.any():
            out.append(sel)
            continue
        bad = np.flatnonzero(~finite if not finite.all() else outside).tolist()
        where = "" if sel.layer_axis is None else f" in layer{'s' * (len(bad) > 1)} {bad} of axis {sel.layer_axis}"
        status = (f"contains NaN or Inf values{where}" if not finite.all() else
                  f"largest entry {float(top.flat[bad[0]]):.3g}{where} is outside float32's range "
                  f"[{FLOAT32_RANGE[0]:.1e}, {FLOAT32_RANGE[1]:.1e}]: analyse it with precision='float64'")
        out.append(dataclasses.replace(sel, status=status, matrix_shape=None, num_matrices=0))
    return out


@functools.partial(jax.jit, static_argnames="axes")
def _finite_flags(leaves: tuple[jax.Array, ...], axes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    """``all(isfinite(leaf), axis)`` of every leaf: one program per selection of a model, not two per leaf
    shape (VGG16: 1 program instead of 20)."""
    return [jnp.all(jnp.isfinite(x), axis=a) for x, a in zip(leaves, axes)]


# --------------------------------------------------------------------------------------------------
# Matrix views


def to_matrices(leaf: Any, sel: Selected) -> jax.Array:
    """The ``(L, a, b)`` matrix stack of ``leaf`` (a leaf shaped like ``sel``, or its NNX Variable).

    Layer axis to the front, then the remaining axes flattened by ``sel.conv_reshape``. Works under
    ``jit``; keeps the dtype. A NumPy leaf (e.g. a memory map from :func:`pdbjax.io.load`) gives a NumPy
    view, so nothing is copied or read until :func:`map_groups` takes its chunk.
    """
    x = unwrap(leaf)
    x = x if isinstance(x, np.ndarray) else jnp.asarray(x)
    xp = np if isinstance(x, np.ndarray) else jnp
    _check_ok(sel)
    if tuple(x.shape) != sel.shape:
        raise ValueError(f"{sel.name}: leaf has shape {tuple(x.shape)}, selection expects {sel.shape}")
    if sel.layer_axis is not None:
        x = xp.moveaxis(x, sel.layer_axis, 0)
    return x.reshape((sel.num_matrices, *sel.matrix_shape))


def from_matrices(mats: Any, sel: Selected) -> Any:
    """Exact inverse of :func:`to_matrices`: a ``(L, a, b)`` stack back to a leaf of ``sel.shape`` and
    ``sel.dtype`` (the stack is cast to ``sel.dtype``). A NumPy array for concrete input, a JAX array
    under ``jit``."""
    _check_ok(sel)
    # Concrete stacks are rebuilt on the host, so a dtype JAX cannot hold (float64 with x64 off) is
    # kept exactly; traced stacks stay in JAX.
    xp = jnp if is_traced(mats) else np
    mats = xp.asarray(mats)
    want = (sel.num_matrices, *sel.matrix_shape)
    if tuple(mats.shape) != want:
        raise ValueError(f"{sel.name}: matrix stack has shape {tuple(mats.shape)}, expected {want}")
    if sel.layer_axis is None:
        return mats.reshape(sel.shape).astype(sel.dtype)
    rest = sel.shape[: sel.layer_axis] + sel.shape[sel.layer_axis + 1 :]
    return xp.moveaxis(mats.reshape((sel.num_matrices, *rest)), 0, sel.layer_axis).astype(sel.dtype)


def _check_ok(sel: Selected) -> None:
    if not sel.ok:
        raise ValueError(f"{sel.name}: was skipped ({sel.status}); it has no matrix view")


# --------------------------------------------------------------------------------------------------
# Grouping and batched mapping


def group_by_shape(items: Sequence[Any]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``items`` grouped by matrix shape ``(a, b)``, groups in order of first appearance.

    ``items`` are arrays (shape ``(..., a, b)``; the last two axes count) or :class:`Selected` (their
    ``matrix_shape``; skipped ones are left out).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(items):
        if isinstance(item, Selected):
            if not item.ok:
                continue
            key = item.matrix_shape
        else:
            shape = np.shape(item)
            if len(shape) < 2:
                raise ValueError(f"item {i} has shape {shape}; expected a matrix (..., a, b)")
            key = (int(shape[-2]), int(shape[-1]))
        groups.setdefault(key, []).append(i)
    return groups


#: Working copies of one matrix that a batched decomposition holds at once (input in storage dtype, its
#: float32 cast, the normalised copy, LAPACK's workspace, and the factors and rebuilt matrix of
#: ``compress``): :func:`map_groups` sizes its chunks as ``max_memory / (WORK_COPIES * 4 a b)``.
WORK_COPIES = 8


def map_groups(
    fn: Callable[[jax.Array], Any],
    matrices: Sequence[Any],
    *,
    shard: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_memory: int | None = None,
    aux: Sequence[Any] | None = None,
) -> list[Any]:
    """Apply a batched ``fn`` to matrices of mixed shapes with one call per shape group (or chunk).

    Items of equal matrix shape ``(a, b)`` and equal working dtype (``float32`` for ``bfloat16``,
    ``float16``, float8 and integers; ``float64`` when JAX's x64 mode is on; otherwise the input
    dtype) are cast to that dtype and concatenated into one ``(B, a, b)`` stack, and ``fn(stack)`` is
    called once per group, groups in order of first appearance. ``fn`` must return a pytree whose
    leaves all have leading axis ``B``. Each item may be a matrix ``(a, b)`` or a stack ``(..., a, b)``
    (e.g. from :func:`to_matrices`); its output has its leading shape in place of the batch axis (a
    single matrix gets no batch axis).

    ``max_memory`` (bytes) bounds the working set: a group whose ``B * WORK_COPIES * 4 a b`` bytes
    (:data:`WORK_COPIES`) exceed it is processed in ``k`` chunks of equal size
    ``ceil(B / k)`` (the last padded with copies of its first matrix, so every chunk of a group runs
    the same compiled program). NumPy items (memory maps from :func:`pdbjax.io.load` included) are
    read and cast on the host one chunk at a time, so the whole stack never exists in memory; a
    memory-mapped item's pages are released once its last matrix is done.

    With ``shard=True`` and more than one local device, each stack is padded to a multiple of the
    device count (with copies of its first matrix) and placed with a
    :class:`~jax.sharding.NamedSharding` over a 1-D ``Mesh`` with axis ``"batch"``, so a jitted ``fn``
    runs data-parallel; the padding is dropped from the outputs.

    ``progress(done, total)``, if given, is called before the first chunk and after each chunk with
    the number of matrices processed so far and in all (a stacked item counts its matrices). Each call's
    output is ready before the next chunk is read, so at most one chunk is held at a time.

    ``aux``, if given, holds one pytree per item whose leaves have the item's leading shape (one entry
    per matrix, e.g. a fit of each matrix); it is chunked and padded alongside the matrices and ``fn``
    is called as ``fn(stack, aux_chunk)``.

    Returns:
      One output pytree per item, in the order of ``matrices``. A chunk that holds one item whole is
      returned as it is; the others are sliced per item on the device (:func:`map_chunks` gives the
      chunks unsliced).
    """
    items = [_as_array(m) for m in matrices]
    chunks = map_chunks(fn, items, shard=shard, progress=progress, max_memory=max_memory, aux=aux)
    out_parts: list[list[Any]] = [[] for _ in items]
    for chunk in chunks:
        whole = len(chunk.runs) == 1 and chunk.rows == chunk.size
        start = 0
        for i, lo, hi in chunk.runs:
            out_parts[i].append(chunk.result if whole else
                                jax.tree_util.tree_map(lambda y, s=start, k=hi - lo: y[s : s + k], chunk.result))
            start += hi - lo
    out: list[Any] = []
    for x, parts in zip(items, out_parts):
        lead = tuple(x.shape[:-2])
        joined = parts[0] if len(parts) == 1 else jax.tree_util.tree_map(lambda *ys: _concat(ys), *parts)
        out.append(jax.tree_util.tree_map(lambda y, lead=lead: y.reshape(lead + y.shape[1:]), joined))
    return out


class Chunk(NamedTuple):
    """One call of :func:`map_chunks`' ``fn``: its output and the matrices its rows hold.

    Rows ``[offset, offset + stop - first)`` of every leaf of ``result`` are matrices ``first .. stop - 1``
    of item ``item`` for the ``(item, first, stop)`` runs in order (``offset``: the sum of the earlier
    runs' lengths); rows from :attr:`rows` on are padding (copies of the chunk's first matrix).
    """

    result: Any
    runs: tuple[tuple[int, int, int], ...]

    @property
    def rows(self) -> int:
        """Matrices of the items in the chunk (its padding excluded)."""
        return sum(hi - lo for _, lo, hi in self.runs)

    @property
    def size(self) -> int:
        """Rows of ``result``: :attr:`rows` and the padding."""
        return jax.tree_util.tree_leaves(self.result)[0].shape[0]


def map_chunks(
    fn: Callable[[jax.Array], Any],
    matrices: Sequence[Any],
    *,
    shard: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_memory: int | None = None,
    aux: Sequence[Any] | None = None,
    transpose_wide: bool = False,
) -> list[Chunk]:
    """:func:`map_groups` without its split: the output of each call of ``fn`` as it is, with the items it holds.

    Same grouping, chunking, padding, sharding, ``progress`` and ``aux`` as :func:`map_groups`; a
    consumer that regroups the rows anyway (``analyze`` stacks every spectrum of one padded length for its fits)
    takes them from here and slices nothing on the device. With ``transpose_wide``, matrices ``(a, b)``
    and ``(b, a)`` share a group: ``fn`` sees ``(B, max(a, b), min(a, b))`` stacks, each wide matrix
    transposed as it is stacked (for an ``fn`` that does not care, such as singular values: one
    compiled program and one call for both orientations).

    Returns:
      One :class:`Chunk` per call, groups in order of first appearance, chunks in order.

    Two 4 x 3 matrices and a stack of three, then one 3 x 4: one call per shape.

    >>> import numpy as np
    >>> mats = [np.ones((4, 3)), np.ones((3, 4, 3)), np.ones((3, 4))]
    >>> [(c.runs, c.rows, c.size) for c in map_chunks(lambda m: m.sum(axis=(1, 2)), mats, shard=False)]
    [(((0, 0, 1), (1, 0, 3)), 4, 4), (((2, 0, 1),), 1, 1)]
    """
    items = [_as_array(m) for m in matrices]
    shapes = [tuple(int(d) for d in x.shape) for x in items]
    for i, shape in enumerate(shapes):
        if len(shape) < 2:
            raise ValueError(f"item {i} has shape {shape}; expected a matrix (..., a, b)")
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, (int, float, np.number))):
        raise TypeError(f"max_memory must be a number of bytes (e.g. 512 * 2**20); got {max_memory!r} (sizes such as "
                        "'512M' are the CLI's --max-memory syntax)")
    if max_memory is not None and not 0 < max_memory < float("inf"):
        raise ValueError(f"max_memory must be a positive, finite number of bytes (None: no limit); got {max_memory}")
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(items):
        a, b = shapes[i][-2:]
        groups.setdefault((*((max(a, b), min(a, b)) if transpose_wide else (a, b)), _batch_dtype(x.dtype)), []).append(i)
    devices = jax.local_devices()
    sharding = _batch_sharding(devices) if shard and len(devices) > 1 else None
    sizes = [math.prod(shape[:-2]) for shape in shapes]
    chunks: list[Chunk] = []
    total, done = sum(sizes), 0
    if progress is not None:
        progress(0, total)
    for (a, b, dtype), members in groups.items():
        # (item, first, stop) runs of matrices, in order, split into chunks of equal size.
        runs = [(i, 0, sizes[i]) for i in members]
        n = sum(sizes[i] for i in members)
        per_chunk = n if max_memory is None else max(1, int(max_memory // (WORK_COPIES * 4 * a * b)))
        n_chunks = -(-n // per_chunk)
        size = -(-n // n_chunks)
        if sharding is not None:
            size += -size % len(devices)
        for chunk in _chunks(runs, size):
            stack = _stack([(items[i], lo, hi) for i, lo, hi in chunk], a, b, dtype)
            m = stack.shape[0]
            pad = size - m if m < size and (n_chunks > 1 or sharding is not None) else 0
            if pad:
                stack = jnp.concatenate([stack, jnp.broadcast_to(stack[:1], (pad, a, b))])
            if sharding is not None:
                stack = jax.device_put(stack, sharding)
            if aux is None:
                result = fn(stack)
            else:
                rows = [
                    jax.tree_util.tree_map(
                        lambda y, lo=lo, hi=hi: np.asarray(y).reshape(-1, *np.shape(y)[len(shapes[i]) - 2 :])[lo:hi], aux[i])
                    for i, lo, hi in chunk
                ]
                extra = jax.tree_util.tree_map(lambda *ys: pad_rows(np.concatenate(ys), pad), *rows)
                result = fn(stack, extra)
            _check_batched(result, stack.shape[0], (a, b))
            # One chunk in flight: with JAX's asynchronous dispatch the host would stage the next chunks while
            # the device is busy and hold many at once (a 403 MB float16 checkpoint: peak RSS 1.23 GiB against
            # 0.51 GiB, benchmarks/results/ww_f16.md); progress then counts finished matrices.
            jax.block_until_ready(result)
            chunks.append(Chunk(result, tuple(chunk)))
            for i, _, hi in chunk:
                if hi == sizes[i]:
                    _release(items[i])
            done += m
            if progress is not None:
                progress(done, total)
    return chunks


def _chunks(runs: list[tuple[int, int, int]], size: int):
    """Split ``(item, first, stop)`` runs into consecutive chunks of ``size`` matrices (the last may be shorter)."""
    chunk: list[tuple[int, int, int]] = []
    room = size
    for i, lo, hi in runs:
        while lo < hi:
            take = min(room, hi - lo)
            chunk.append((i, lo, lo + take))
            lo, room = lo + take, room - take
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def _stack(parts: list[tuple[Any, int, int]], a: int, b: int, dtype: np.dtype) -> jax.Array:
    """One ``(B, a, b)`` working stack from slices of items (a ``(b, a)`` item transposed): NumPy items are
    read and cast on the host."""
    pieces = []
    for x, lo, hi in parts:
        view = x.reshape(-1, *x.shape[-2:])[lo:hi]
        if view.shape[1:] != (a, b):
            view = view.swapaxes(1, 2)  # a view of a NumPy item: read transposed by the cast below
        pieces.append(np.asarray(view, dtype) if isinstance(view, np.ndarray) else jnp.asarray(view, dtype))
    if all(isinstance(p, np.ndarray) for p in pieces):
        # device_put is a transfer; jnp.asarray of a NumPy array runs (and compiles) a copy program per shape.
        return jax.device_put(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
    return jnp.concatenate([jax.device_put(p) for p in pieces])


def pad_rows(y: np.ndarray, pad: int) -> np.ndarray:
    """``y`` with ``pad`` more rows, copies of its first (host arrays): the padding of :func:`map_chunks`'
    ``aux`` and of the fits' calls (:func:`pdbjax.api.in_fit_rows`)."""
    return np.concatenate([y, np.broadcast_to(y[:1], (pad, *y.shape[1:]))]) if pad else y


def _concat(ys: tuple[Any, ...]) -> Any:
    return np.concatenate(ys) if all(isinstance(y, np.ndarray) for y in ys) else jnp.concatenate(ys)


def _release(x: Any) -> None:
    """Drop the resident pages of a read-only memory map (they are read again from the file if needed). Only a
    ``np.memmap`` opened with ``mode="r"`` (as :func:`pdbjax.io.load` opens them): the pages of a copy-on-write map
    (``mode="c"``, ``np.load(..., mmap_mode="c")``) or a writable one hold the caller's edits."""
    base, read_only = x, False
    while base is not None and not isinstance(base, mmap.mmap):
        read_only = read_only or (isinstance(base, np.memmap) and base.mode == "r")
        base = getattr(base, "base", None)
    if read_only and base is not None and not base.closed and hasattr(base, "madvise"):
        with contextlib.suppress(OSError, ValueError):
            base.madvise(mmap.MADV_DONTNEED)


def _batch_sharding(devices: list) -> jax.sharding.NamedSharding:
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))


def _batch_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if not _is_floating(dtype) or dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _check_batched(result: Any, size: int, shape: tuple[int, int]) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(result)[0]:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != size:
            raise ValueError(
                f"fn must return arrays with leading batch axis {size} (group of {shape} matrices); "
                f"output {path_name(path) or 'leaf'} has shape {np.shape(leaf)}"
            )


# --------------------------------------------------------------------------------------------------
# Rebuilding


def replace(params: Any, updates: Mapping[str, Any]) -> Any:
    """A new tree like ``params`` with the leaves named in ``updates`` replaced.

    Args:
      params: any tree :func:`select` accepts.
      updates: ``{name: new leaf}`` with names as in :attr:`Selected.name`. Each new leaf must have the
        old leaf's shape; it is cast to the old leaf's dtype, and to a NumPy array when the old leaf
        was one (so trees loaded by :func:`pdbjax.io.load` stay NumPy); in place of a JAX array it is
        a JAX array with the old leaf's sharding (a sharded model stays sharded).

    Returns:
      A tree of the same structure. For an NNX ``State`` a new ``State`` whose Variables are new
      objects (same metadata); for an NNX ``Module`` also a new ``State`` (of ``nnx.state(model)``):
      apply it with ``nnx.update(model, state)`` or build a new model with
      ``nnx.merge(graphdef, state)``. ``params`` (and the model) are never modified.

    Raises:
      KeyError: a name in ``updates`` is not a leaf of ``params``.
      ValueError: a new leaf has the wrong shape.
    """
    flat, treedef = _flatten(params)
    names = _unique_names([path for path, _ in flat])
    unknown = sorted(set(updates) - set(names))
    if unknown:
        raise KeyError(f"not leaves of params: {unknown}")
    leaves = []
    for name, (_, leaf) in zip(names, flat):
        if name in updates:
            leaves.append(_new_leaf(leaf, updates[name], name))
        else:
            leaves.append(leaf.replace() if is_variable(leaf) else leaf)  # a Linen box is immutable: kept
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _new_leaf(old: Any, new: Any, name: str) -> Any:
    old_value, new = unwrap(old), unwrap(new)
    if not _is_array(old_value):
        raise ValueError(f"{name}: is not an array leaf and cannot be replaced")
    if tuple(np.shape(new)) != tuple(old_value.shape):
        raise ValueError(f"{name}: new leaf has shape {tuple(np.shape(new))}, expected {tuple(old_value.shape)}")
    if isinstance(old_value, np.ndarray) and not is_traced(new):
        new = np.asarray(jax.device_get(new)).astype(old_value.dtype, copy=False)
    else:
        new = jnp.asarray(new).astype(old_value.dtype)
        if isinstance(old_value, jax.Array) and not is_traced(new, old_value) and new.sharding != old_value.sharding:
            new = jax.device_put(new, old_value.sharding)  # laid out as the old leaf was (only if it was not:
            # a committed copy on the same device would make jit compile its callers again)
    if is_variable(old):
        return old.replace(new)
    return old.replace_boxed(new) if _is_linen_box(old) else new


# --------------------------------------------------------------------------------------------------
# Helpers


def _nnx() -> Any:
    """``flax.nnx`` if something has imported it, else ``None``.

    No NNX object can exist before its module is imported, so plain pytrees (the CLI's checkpoints)
    never pay for importing Flax (about 0.4 s, a third of ``import pdbjax``).
    """
    return sys.modules.get("flax.nnx")


def is_nnx(params: Any) -> bool:
    """Whether ``params`` is an NNX ``Module`` or ``State``."""
    nnx = _nnx()
    return nnx is not None and isinstance(params, (nnx.Module, nnx.State))


def holds_nnx(params: Any) -> bool:
    """Whether ``params`` is, or holds anywhere in its tree, an NNX ``Module``, ``State`` or ``Variable``."""
    nnx = _nnx()
    if nnx is None:
        return False
    boxed = lambda x: is_variable(x) or isinstance(x, (nnx.Module, nnx.State))  # noqa: E731
    return boxed(params) or any(boxed(x) for x in jax.tree_util.tree_leaves(params, is_leaf=boxed))


def _flatten(params: Any):
    """``([(path, leaf)], treedef)`` with NNX Variables as leaves; a Module is read through nnx.state."""
    nnx = _nnx()
    if nnx is not None and isinstance(params, nnx.Module):
        params = nnx.state(params)
    return jax.tree_util.tree_flatten_with_path(params, is_leaf=is_boxed)


def is_variable(x: Any) -> bool:
    """Whether ``x`` is a Flax NNX ``Variable`` box (``nnx.Param``, ...), without importing Flax.

    >>> import numpy as np
    >>> from flax import nnx
    >>> is_variable(nnx.Param(np.ones(2))), is_variable(np.ones(2))
    (True, False)
    >>> unwrap(nnx.Param(np.ones(2))).shape
    (2,)
    """
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Variable)


def _is_linen_box(x: Any) -> bool:
    """Whether ``x`` is a Flax Linen metadata box (``nn.Partitioned``, ``nn.LogicallyPartitioned``: the params of
    ``nn.with_partitioning`` initialisers), without importing Flax."""
    meta = sys.modules.get("flax.core.meta")
    return meta is not None and isinstance(x, meta.AxisMetadata)


def is_boxed(x: Any) -> bool:
    """Whether ``x`` is an NNX ``Variable`` or a Linen metadata box: one leaf, named without its ``value``.

    >>> import numpy as np
    >>> from flax import linen as nn
    >>> box = nn.Partitioned(np.ones((4, 2)), names=(None, "model"))
    >>> is_boxed(box), unwrap(box).shape
    (True, (4, 2))
    """
    return is_variable(x) or _is_linen_box(x)


def unwrap(leaf: Any) -> Any:
    """The array inside a Flax NNX ``Variable`` or Linen metadata box; any other leaf as it is."""
    if is_variable(leaf):
        return leaf.get_value()
    if _is_linen_box(leaf):  # its value field (unbox() may add a sharding constraint)
        return leaf.value if hasattr(leaf, "value") else leaf.unbox()
    return leaf


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (str, bytes))


def _as_array(x: Any) -> Any:
    return x if isinstance(x, (np.ndarray, jax.Array)) else np.asarray(x)


def _is_floating(dtype: Any) -> bool:
    try:
        return bool(jnp.issubdtype(dtype, jnp.floating))
    except TypeError:  # extended dtypes (PRNG keys) in some JAX versions
        return False


def leaf_names(params: Any) -> list[str]:
    """The plain name (:func:`path_name`) of every leaf of ``params``, NNX Variables counted as leaves."""
    return _unique_names([path for path, _ in _flatten(params)[0]])


def _key_of(entry: Any) -> Any:
    """Plain key of one key-path entry (DictKey, GetAttrKey, SequenceKey, FlattenedIndexKey)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _unique_names(paths: Sequence[KeyPath]) -> list[str]:
    """:func:`path_name` of each path; ValueError naming the paths when two leaves share a name."""
    names = [path_name(p) for p in paths]
    if len(set(names)) < len(names):
        seen: dict[str, KeyPath] = {}
        for name, p in zip(names, paths):
            if name in seen:
                raise ValueError(f"two leaves have the same name {name!r}: {jax.tree_util.keystr(seen[name])} and "
                                 f"{jax.tree_util.keystr(p)}; rename one so that reports and updates can tell them apart")
            seen[name] = p
    return names


def path_name(path: KeyPath, sep: str = "/") -> str:
    """The plain name of a key path: its keys joined by ``sep`` (``('layers', 0, 'kernel')`` ->
    ``"layers/0/kernel"``; a flat safetensors key ``'encoder.layer.0.attention.self.query.weight'`` is
    its own name). Reports, errors, plots and ``where`` regexes all use this name."""
    return sep.join(str(_key_of(entry)) for entry in path)


def _last_key(name: str) -> str:
    """Last component of a plain name: the last ``.``/``/`` piece."""
    return re.split(r"[./]", name)[-1]
