r"""Multi-host :func:`analyze` and :func:`compress`: each process of a ``jax.distributed`` job fits its share.

JAX's multi-controller runtime (TPU pods, GPU clusters, or several CPU processes) runs the same program
in every process. Here every process holds the same params (for example loaded from the same checkpoint
with :func:`pdbjax.io.load`) and calls the same function with the same options:

>>> from pdbjax import distributed  # doctest: +SKIP
>>> distributed.initialize("10.0.0.1:1234", num_processes=4, process_id=rank)  # doctest: +SKIP
>>> report = distributed.analyze(params, layer_axis={"layers": 0})  # doctest: +SKIP
>>> if distributed.is_writer():  # doctest: +SKIP
...     report.to_json("report.json")

How the work is shared
----------------------
Every process selects the matrices with :func:`pdbjax.tree.select` (the same selection on every process,
checked with one small all-gather of a digest) and assigns whole leaves to processes with :func:`assign`:
a leaf of ``L`` matrices ``(a, b)`` costs ``L N p^2`` (``N = max(a, b)``, ``p = min(a, b)``, the cost
of its Gram matrix and eigendecomposition), and leaves are given, largest first, to the least-loaded
process (greedy longest-processing-time, ties to the lower index and the lower process id; the
assignment is a pure function of the selection, hence identical on every process). A stacked leaf is
never split. Each process then runs the single-process :func:`pdbjax.analyze` / :func:`pdbjax.compress`
with ``where`` restricted to the names of its own leaves (a process with no leaves runs nothing).

How the results are gathered
----------------------------
* **Reports.** Each process encodes its rows as JSON bytes; the byte strings are padded to a common
  length and exchanged with :func:`jax.experimental.multihost_utils.process_allgather` (uint8 arrays),
  so **every process returns the full** :class:`~pdbjax.report.Report`, with the rows in the order and
  the totals of the single-process call. JSON round-trips the report's numbers exactly.
* **New params** (:func:`compress`). Every process returns the **full** new tree: each compressed leaf
  is sent from its owner to all processes with
  :func:`jax.experimental.multihost_utils.broadcast_one_to_all`, one leaf at a time (so at most one
  extra leaf is in flight), as its raw bytes (bit-exact for every dtype, ``bfloat16`` included). The
  tree is then rebuilt from the caller's params exactly as :func:`pdbjax.compress` does. Use
  :func:`is_writer` to let one process write files.
* **Errors.** No process is left waiting for one that failed: every failure is sent to the others at
  the next point where they all exchange data, and every process raises there (the failing one its own
  exception, the others the same built-in type, ``RuntimeError`` for any other, with the message
  prefixed by ``"process k: "``). Bad input found by the selection (a leaf holding NaN with
  ``on_error="raise"``, an unknown option, on one process or on all) is exchanged with the selection's
  digest, before any work; an error inside one process's share with the rows. Work of the caller's
  before the call (reading a checkpoint) can fail on one process too: :func:`agree` is the point to
  meet the others with that failure (the CLI calls it after opening its input). A process that dies
  without raising (killed, out of memory) still leaves the others to JAX's own timeouts.

With ``jax.process_count() == 1`` both functions return exactly what :func:`pdbjax.analyze` and
:func:`pdbjax.compress` return.

Requirements: params must be host-local (NumPy arrays or fully addressable ``jax.Array`` s), not arrays
sharded across processes (gather those first with ``process_allgather(x, tiled=True)``). Every process
must pass the same params and options: the selection and the JSON-able options are compared and a
mismatch raises ``ValueError`` on every process; the weight values themselves are not compared.
"""

from __future__ import annotations

import builtins
import hashlib
import heapq
import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from pdbjax import api
from pdbjax.api import LowRank
from pdbjax.precision import check_precision
from pdbjax.report import Report, compression_totals
from pdbjax.tree import Selected, Where, is_boxed, path_name, select, unwrap

__all__ = ["initialize", "is_writer", "agree", "analyze", "compress", "assign"]


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, **kwargs: Any) -> None:
    """Start JAX's multi-controller runtime (:func:`jax.distributed.initialize`); call it before any JAX work.

    Args:
      coordinator: ``"host:port"`` of process 0's coordinator service, reachable from every process.
      num_processes: number of processes in the job.
      process_id: this process's id, ``0 <= process_id < num_processes``.
      **kwargs: passed on (e.g. ``local_device_ids``, ``initialization_timeout``).

    All three may be ``None`` where JAX detects them from the cluster (Cloud TPU, SLURM, Open MPI).
    On CPU, cross-process collectives need an implementation: Gloo is chosen when none is set (older
    JAX releases default to none; newer ones to Gloo), and an explicit choice (``"mpi"``) is kept.
    """
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # pragma: no cover - JAX without the option
        pass
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id, **kwargs)


def is_writer() -> bool:
    """Whether this process writes the job's files (process 0); the others return the same results."""
    return jax.process_index() == 0


def agree(error: BaseException | None = None) -> None:
    """A point every process of the job reaches: raises on every process if any of them failed on its way here.

    Each process passes the exception it caught since the last exchange (``None`` if none). The failing
    process re-raises its own; the others raise the same built-in type (``RuntimeError`` for another type)
    with the message prefixed by ``"process k: "`` (the lowest failing ``k``). With one process it
    re-raises ``error`` (if any).
    """
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    _raise_failures(_allgather_json({} if error is None else _failure(error)), error)


def _failure(error: BaseException) -> dict[str, list[str]]:
    return {"error": [type(error).__name__, str(error)]}


def _raise_failures(gathered: Sequence[dict], error: BaseException | None) -> None:
    """Raise ``error`` (this process's own) or the first failure among the processes' ``gathered`` payloads."""
    if error is not None:
        raise error
    for p, got in enumerate(gathered):
        if "error" in got:
            kind, message = got["error"]
            cls = getattr(builtins, kind, None)
            cls = cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError
            try:
                failure = cls(f"process {p}: {message}")
            except TypeError:  # a type built from other arguments (UnicodeDecodeError, ExceptionGroup)
                failure = RuntimeError(f"process {p}: {kind}: {message}")
            raise failure


def assign(costs: Sequence[int], num_processes: int) -> list[int]:
    """Owner process of each item: greedy longest-processing-time on ``costs``, deterministic.

    Items are taken in order of decreasing cost (ties: lower index first) and each goes to the process
    with the least total cost so far (ties: lower process id). Every process's total is within the
    largest single cost of every other's.

    >>> assign([4, 1, 3, 3, 0], 2)
    [0, 0, 1, 1, 0]
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1; got {num_processes}")
    loads = [(0, p) for p in range(num_processes)]
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, p = heapq.heappop(loads)
        owner[i] = p
        heapq.heappush(loads, (load + costs[i], p))
    return owner


def analyze(params: Any, where: Where | None = None, **options: Any) -> Report:
    """:func:`pdbjax.analyze` with the matrices shared among the processes of a ``jax.distributed`` job.

    Takes exactly the arguments of :func:`pdbjax.analyze`; ``progress`` reports this process's share.
    Every process returns the full report, equal to the single-process one (module docstring).
    """
    if jax.process_count() == 1:
        return api.analyze(params, where, **options)
    sels, owner = _plan(api.analyze, params, where, options)
    rows = _run_share(sels, owner, lambda pick: (api.analyze(params, pick, **options), None))[0]
    return Report([row for sel in sels for row in rows[sel.name]])


def compress(params: Any, where: Where | None = None, **options: Any) -> tuple[Any, Report]:
    """:func:`pdbjax.compress` with the matrices shared among the processes of a ``jax.distributed`` job.

    Takes exactly the arguments of :func:`pdbjax.compress`; ``progress`` reports this process's share.
    Every process returns the full ``(new_params, report)``, equal to the single-process result: each
    compressed leaf is broadcast from the process that computed it (module docstring).
    """
    if jax.process_count() == 1:
        return api.compress(params, where, **options)
    sels, owner = _plan(api.compress, params, where, options)  # first: all processes must meet there
    if options.get("budget") is not None:  # each process would allocate over its own share only
        raise ValueError("budget= allocates over all matrices at once and is not available across processes yet; "
                         "compress in one process, or give a rank")

    def share(pick):
        new_params, report = api.compress(params, pick, **options)
        return report, _named_nodes(new_params, {s.name for s in sels if s.ok and owner[s.name] == jax.process_index()})

    rows, specs, nodes = _run_share(sels, owner, share)
    report_rows = [row for sel in sels for row in rows[sel.name]]  # tree order, as pdbjax.compress's
    updates = {s.name: _broadcast_node(nodes.get(s.name), specs[s.name], owner[s.name]) for s in sels if s.ok}
    new_params = api.with_new_leaves(params, updates, bool(options.get("factored", False)))
    return new_params, Report(report_rows, compression_totals(report_rows))


# --------------------------------------------------------------------------------------------------
# Planning: the same selection and assignment on every process


def _plan(fn: Callable, params: Any, where: Where | None, options: dict) -> tuple[list[Selected], dict[str, int]]:
    """Select as ``fn`` would, check that every process agrees, and assign the leaves to processes.

    A process whose selection fails sends its error in place of its digest, so all raise (:func:`agree`)."""
    try:
        bound = inspect.signature(fn).bind(params, where=where, **options)  # TypeError on an unknown option
        bound.apply_defaults()
        args = bound.arguments
        sels = select(params, where, conv_reshape=args["conv_reshape"], layer_axis=args["layer_axis"],
                      on_error=args["on_error"], allow_empty=False, precision=check_precision(args["precision"]))
        for sel in sels:
            if isinstance(sel.value, jax.Array) and not sel.value.is_fully_addressable:
                raise ValueError(f"{sel.name}: is sharded across processes; every process needs the whole leaf "
                                 "(gather it with jax.experimental.multihost_utils.process_allgather(x, tiled=True))")
        mine, error = {"digest": _digest(sels, {k: v for k, v in args.items() if k not in ("params", "where", "progress")})}, None
    except Exception as err:  # noqa: BLE001 - sent to the other processes, re-raised below
        mine, error = _failure(err), err
    gathered = _allgather_json(mine)
    _raise_failures(gathered, error)
    differ = [p for p, got in enumerate(gathered) if got["digest"] != gathered[0]["digest"]]
    if differ:
        raise ValueError(f"processes {differ} selected other matrices or passed other options than process 0; "
                         "every process must pass the same params (e.g. loaded from the same checkpoint) and options")
    costs = [s.num_matrices * max(s.matrix_shape) * min(s.matrix_shape) ** 2 if s.ok else 0 for s in sels]
    return sels, dict(zip((s.name for s in sels), assign(costs, jax.process_count())))


def _digest(sels: Sequence[Selected], options: dict) -> str:
    """What every process must agree on: the selected leaves (names, shapes, dtypes, statuses) and the options."""
    summary = [[s.name, list(s.shape), str(s.dtype), s.layer_axis, s.status] for s in sels]
    text = json.dumps([summary, options], sort_keys=True, default=_digestible)
    return hashlib.sha256(text.encode()).hexdigest()


def _digestible(value: Any) -> Any:
    """What :func:`_digest` hashes of an option JSON cannot write: a NumPy scalar's or array's value (a rank of
    ``np.int64(2)`` and one of ``np.int64(6)`` differ), the type's name for anything else (a predicate's
    ``repr`` holds its address, which differs between processes)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return type(value).__name__


# --------------------------------------------------------------------------------------------------
# Running a share and gathering the rows


def _run_share(
    sels: Sequence[Selected], owner: dict[str, int], run: Callable[[Callable[[str, Any], bool]], tuple[Report, dict | None]]
) -> tuple[dict[str, list], dict[str, list], dict[str, Any]]:
    """Run ``run(where)`` on this process's leaves and gather the rows (and leaf specs) of all processes.

    ``run`` returns ``(report, {name: node} or None)``. Returns ``(rows by leaf, leaf specs by name,
    this process's nodes)``; an error of any process is raised on every process.
    """
    me = jax.process_index()
    mine = {s.name for s in sels if owner[s.name] == me}
    nodes: dict[str, Any] = {}
    payload: dict[str, Any] = {"rows": {}, "specs": {}}
    error = None
    if mine:
        try:
            report, nodes = run(lambda name, _: name in mine)
            nodes = nodes or {}
            for row in report.rows:
                payload["rows"].setdefault(row["leaf"], []).append(row)
            payload["specs"] = {name: _spec(node) for name, node in nodes.items()}
        except Exception as err:  # noqa: BLE001 - sent to the other processes, re-raised below
            error, payload = err, _failure(err)
    gathered = _allgather_json(payload)
    _raise_failures(gathered, error)
    rows = {name: r for got in gathered for name, r in got["rows"].items()}
    specs = {name: s for got in gathered for name, s in got["specs"].items()}
    return rows, specs, nodes


def _allgather_json(obj: Any) -> list[Any]:
    """``obj`` of every process, in process order: JSON bytes padded to a common length, all-gathered."""
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(data.size))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: data.size] = data
    everything = multihost_utils.process_allgather(padded)
    return [json.loads(everything[p, : int(n)].tobytes()) for p, n in enumerate(lengths)]


# --------------------------------------------------------------------------------------------------
# Sending the new leaves


def _named_nodes(new_params: Any, names: set[str]) -> dict[str, Any]:
    """``{name: new leaf}`` for ``names``: host arrays, or :class:`LowRank` of host arrays."""
    is_node = lambda x: isinstance(x, LowRank) or is_boxed(x)  # noqa: E731
    out = {}
    for path, node in jax.tree_util.tree_flatten_with_path(new_params, is_leaf=is_node)[0]:
        name = path_name(path)
        if name in names:
            out[name] = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), unwrap(node))
    return out


def _spec(node: Any) -> list[list]:
    """Shape and dtype of each array of a node (one for a dense leaf, two for a :class:`LowRank`)."""
    return [[list(x.shape), np.dtype(x.dtype).name] for x in jax.tree_util.tree_leaves(node)]


def _broadcast_node(node: Any, spec: list[list], source: int) -> Any:
    """The owner's ``node`` on every process, sent as raw bytes (exact for every dtype)."""
    is_source = jax.process_index() == source
    dtypes = [jnp.dtype(name) for _, name in spec]
    if is_source:
        buffers = [np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in jax.tree_util.tree_leaves(node)]
    else:
        buffers = [np.zeros(int(np.prod(shape)) * dtype.itemsize, np.uint8) for (shape, _), dtype in zip(spec, dtypes)]
    received = multihost_utils.broadcast_one_to_all(buffers, is_source=is_source)
    arrays = [np.array(buf).view(dtype).reshape(shape) for buf, dtype, (shape, _) in zip(received, dtypes, spec)]
    return LowRank(*arrays) if len(arrays) == 2 else arrays[0]  # a leaf left unchanged stays dense
