r"""Model-level API: :func:`analyze` and :func:`compress` every weight matrix of a param pytree.

Both take any tree :func:`pdbjax.tree.select` accepts (plain dicts, a flat ``{name: array}`` dict from
:func:`pdbjax.io.load`, Flax Linen ``{"params": ...}``, an NNX ``State`` or an NNX ``Module``), view each
selected leaf as a stack of matrices, and return a :class:`~pdbjax.report.Report` with one row per
matrix. The caller's params are never modified.

The work is organised so that a model compiles a handful of programs and never holds more than a
memory budget of working copies:

1. **Spectra**: :func:`pdbjax.linalg.spectrum` of every matrix, one batched call per shape group, both
   orientations of a shape in one (in chunks of at most ``max_memory``; :func:`pdbjax.tree.map_chunks`).
2. **Fits**: every spectrum whose length ``p`` pads to one length ``P`` (:func:`padded_length`: 512 up to
   512, then powers of two) goes through ONE compiled program whatever its ``N`` and ``p`` (both are data):
   for ``analyze`` every figure of the report (:func:`pdbjax.figures.spectrum_figures`), for ``compress`` the
   fit of its method; the 384 x 384, 1536 x 384 and 384 x 1536 matrices of a transformer share it, and so
   do all the kernels of a VGG16 or a ResNet18 (widths 9 to 512). It runs in calls of :data:`FIT_ROWS` (8)
   rows (:func:`in_fit_rows`), so any count of them (another selection, another model) shares the program too.
3. ``compress`` only: the keep counts, outliers and shrinkage of every matrix are decided once per
   padded length from the spectra and fits of passes 1 and 2 (:func:`pdbjax.filter.decide`, in calls
   of :data:`FIT_ROWS` rows), then each shape group (chunk) takes its vectors from its Gram matrix
   (:func:`pdbjax.linalg.factors` with ``via="gram"``) and is rebuilt as decided
   (:func:`pdbjax.filter.apply_decision`). A fixed rank without shrinkage skips passes 1-3: each chunk is
   decomposed once and rebuilt (:func:`pdbjax.filter_matrix`). With a ``budget``, the keep counts come first from
   :func:`pdbjax.budget.allocate` over those spectra and fits (all matrices of the model at once).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax.budget import Allocation, allocate, check_budget, component_scores
from pdbjax.estimate import Mode, check_mode, spike_window, widest_window
from pdbjax.figures import spectrum_figures
from pdbjax.filter import (
    METHODS,
    RULES,
    FilterInfo,
    Method,
    Rank,
    Shrink,
    apply_decision,
    decide,
    filter_matrix,
    fit_spectrum,
    needs_fit,
    resolve_shrink,
)
from pdbjax.fits import Reason, reason_text
from pdbjax.linalg import Spectrum, raw_eigenvalues, spectrum
from pdbjax.precision import Precision, check_precision, context
from pdbjax.report import Report, compression_totals, to_jsonable
from pdbjax.tree import (
    Chunk,
    ConvReshape,
    LayerAxis,
    OnError,
    Selected,
    Where,
    from_matrices,
    holds_nnx,
    is_boxed,
    leaf_names,
    map_chunks,
    map_groups,
    pad_rows,
    path_name,
    replace,
    select,
    to_matrices,
)

__all__ = ["analyze", "compress", "LowRank", "densify", "DEFAULT_RANK", "RULES"]

#: Default rank rule of :func:`compress` (chosen by measurement; see the README, "Choosing the rank").
DEFAULT_RANK: Rank = "auto"
#: Default working-memory budget of :func:`analyze` and :func:`compress` (bytes; ``max_memory``): peak RSS
#: 1.41x the file for a 400 MB float16 checkpoint at 512 MiB, 2.18x at 1 GiB, 0.90x at 256 MiB (benchmarks/results/memory.md).
DEFAULT_MAX_MEMORY = 512 << 20


# --------------------------------------------------------------------------------------------------
# analyze


def analyze(
    params: Any,
    where: Where = None,
    *,
    mode: Mode = "scaled",
    baselines: bool = True,
    conv_reshape: ConvReshape = "in", layer_axis: LayerAxis = None, on_error: OnError = "raise",
    shard: bool = True, precision: Precision | None = None,
    progress: Callable[[int, int], None] | None = None, max_memory: int | None = DEFAULT_MAX_MEMORY,
) -> Report:
    r"""Fit the PDB model (and the PUB baselines) to every selected weight matrix.

    Args:
      params: a param pytree, NNX ``State`` or ``Module`` (see :func:`pdbjax.tree.select`).
      where: which leaves: a regex searched in the leaf name or a predicate ``(name, array) -> bool``;
        default: float leaves with ``ndim >= 2`` named ``kernel``/``weight``/``w``, no embeddings.
      mode: PDBLS mode (``"scaled"`` or ``"reference"``, see :func:`pdbjax.fit_pdb`).
      baselines: also fit PUB-BEMA and PUB-Kernel.
      conv_reshape, layer_axis: how leaves map to matrices (:func:`pdbjax.tree.select`).
      on_error: ``"raise"`` (a clear error naming the leaf) or ``"skip"`` (a row with the status).
      shard: shard each batch of decompositions over the local devices when there are several (the fits
        run on the default device, in calls of :data:`FIT_ROWS` rows).
      precision: working precision of the decomposition and of the fits (:mod:`pdbjax.precision`):
        ``"float32"`` (every backend; nothing needs float64), ``"float64"`` (CPU users who ask for it), or
        ``None`` (default: float64 only inside ``jax.enable_x64``). The fits run on the normalised spectra
        (:func:`pdbjax.filter.fit_spectrum`), so float32 cannot overflow whatever the weights' units;
        measured against float64 fits in ``benchmarks/results/precision.md``.
      progress: optional ``progress(done, total)`` callback, called with the number of matrices
        decomposed after each shape group or chunk (and ``(0, total)`` before the first).
      max_memory: bytes of working copies the decompositions may hold at once (each shape group is
        processed in chunks that fit, see :func:`pdbjax.tree.map_groups`); ``None``: whole groups.
        With ``pdbjax.io.load(path, lazy=True)`` the checkpoint itself is read chunk by chunk too.

    Returns:
      A :class:`~pdbjax.report.Report`; columns are listed in the README ("Report columns").
    """
    precision = check_precision(precision)
    check_mode(mode)  # before the decompositions, which may take long
    sels = select(params, where, conv_reshape=conv_reshape, layer_axis=layer_axis, on_error=on_error, allow_empty=False,
                  precision=precision)
    good = [s for s in sels if s.ok]
    chunks = _spectra(good, precision, shard, progress, max_memory)
    specs, results = _by_length(good, chunks, lambda spec, N, length: spectrum_figures(spec, N, mode, baselines, length), mode)
    by_name = {s.name: (raw_eigenvalues(spec), res) for s, spec, res in zip(good, specs, results)}
    rows: list[dict[str, Any]] = []
    spectra: dict[str, np.ndarray] = {}
    for sel in sels:
        if not sel.ok:
            rows.append(_skipped_row(sel))
            continue
        eigs, res = by_name[sel.name]
        for i in range(sel.num_matrices):
            rows.append(_analysis_row(sel, i, jax.tree_util.tree_map(lambda x, i=i: x[i], res), baselines, mode))
            spectra[rows[-1]["name"]] = eigs[i]
    return Report([to_jsonable(r) for r in rows], spectra=spectra)


def _matrices(sels: Sequence[Selected]) -> list[jax.Array]:
    return [to_matrices(s.value, s) for s in sels]


def _spectra(sels: Sequence[Selected], precision: Precision, shard: bool, progress, max_memory: int | None) -> list[Chunk]:
    """Pass 1: the :class:`~pdbjax.linalg.Spectrum` of every matrix, one :class:`~pdbjax.tree.Chunk` per call
    (a matrix and its transpose have the same singular values: the two orientations of a shape share one).
    float64 matrices are stacked in float64 for ``precision="float64"`` (JAX's 64-bit mode off would round them)."""
    with context(precision):
        return map_chunks(lambda m: spectrum(m, precision=precision), _matrices(sels), shard=shard, progress=progress,
                          max_memory=max_memory, transpose_wide=True)


#: Rows per call of the fits, figures and decisions: every count of matrices of one padded length runs the
#: same compiled programs in calls of this many rows (the last padded with copies of its first row), so
#: another selection or model of the same widths compiles nothing new. A row costs about the same in calls
#: of 4 to 48 rows (3.4-4.05 ms on MiniLM-L6's spectra, p = 384), so a small call wastes the least on padding:
#: MiniLM's 36 spectra take 0.82x the time of one call of 48 rows in calls of 8, 1.03x in calls of 16
#: (``python benchmarks/fit_rows.py``, ``benchmarks/results/fit_rows.md``).
FIT_ROWS = 8


def in_fit_rows(fn: Callable[..., Any], *trees: Any) -> Any:
    """``fn`` over consecutive :data:`FIT_ROWS`-row slices of the host pytrees ``trees`` (every leaf with the
    same leading axis ``R``; ``None`` stays ``None``), the last slice padded with copies of its first row;
    the outputs come to the host in one ``jax.device_get`` and are concatenated to their first ``R`` rows.

    >>> import numpy as np
    >>> in_fit_rows(lambda x: x * 2, np.arange(20)).tolist() == list(range(0, 40, 2))
    True
    """
    rows = len(jax.tree_util.tree_leaves(trees)[0])
    out = []
    for lo in range(0, rows, FIT_ROWS):
        pad = max(lo + FIT_ROWS - rows, 0)
        part = jax.tree_util.tree_map(lambda x, lo=lo, pad=pad: pad_rows(np.asarray(x)[lo : lo + FIT_ROWS], pad), trees)
        out.append(fn(*part))
    return jax.tree_util.tree_map(lambda *ys: np.concatenate(ys)[:rows], *jax.device_get(out))


def padded_length(p: int, mode: Mode = "scaled") -> int:
    """The length ``P`` the fits of a spectrum of ``p`` singular values run at: 512 up to 512, then the least
    power of two ``>= p`` (1024, 2048, ...), so the spectra of every width of the paper's FCNN, VGG16 and
    ResNet18 share one set of compiled programs, and MiniLM's 384-wide ones are padded by a third; ``p``
    itself below 8 (too small to fit: nothing is compiled for them) and for ``mode="reference"`` (fitted
    unpadded in float64). The estimators mask the zeros after ``p`` (:mod:`pdbjax.inputs`). A call costs
    about the same at any length up to 1024 (the solver's iterations set it, not ``p``), while each length
    compiled costs seconds (``python benchmarks/padding.py``, ``benchmarks/results/padding.md``).

    >>> [padded_length(p) for p in (5, 10, 384, 512, 513, 4096)]
    [5, 512, 512, 512, 1024, 4096]
    """
    if p < 8 or mode == "reference":
        return p
    return max(512, 1 << (p - 1).bit_length())


def _padded_rows(parts: Sequence[Spectrum], size: int) -> tuple[Spectrum, np.ndarray]:
    """Host spectra ``(B_i, p_i)`` joined into one ``(sum B_i, size)``, zeros after each row's ``p_i`` singular
    values, and the rows' lengths ``p_i``."""
    padded = [spec._replace(s=np.pad(spec.s, [(0, 0), (0, size - spec.s.shape[-1])])) for spec in parts]
    length = np.concatenate([np.full(spec.s.shape[0], spec.s.shape[-1], np.int32) for spec in parts])
    return Spectrum(*(np.concatenate(x) for x in zip(*padded))), length


def _by_length(sels: Sequence[Selected], chunks: Sequence[Chunk], fn: Callable[[Spectrum, np.ndarray, np.ndarray], Any],
               mode: Mode) -> tuple[list[Spectrum], list[Any]]:
    """Pass 2: ``fn(spectra, N, length)`` over the real rows of every chunk whose spectrum length ``p`` pads to
    one length ``P`` (:func:`padded_length`), in calls of :func:`in_fit_rows`.

    ``N`` and ``length`` (``p``) are per-row data of the estimators, so matrices of any ``N`` and of every
    ``p`` of one padded length share one batched call and one compiled program, and any count of them
    shares it too (:data:`FIT_ROWS`). The spectra come to the host (one ``jax.device_get`` per padded
    length; they are reported).

    Returns:
      The (unpadded) spectra and ``fn``'s outputs, one per leaf of ``sels`` (leading axis ``L``), as NumPy arrays.
    """
    by_size: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_size.setdefault(padded_length(int(chunk.result.s.shape[-1]), mode), []).append(chunk)
    specs: list[Any] = [None] * len(sels)
    out: list[Any] = [None] * len(sels)
    for size, group in by_size.items():
        owner, real = (np.concatenate(x) for x in zip(*(_row_owners(c) for c in group)))
        spec, length = _padded_rows(jax.device_get([c.result for c in group]), size)
        spec, length, owner = jax.tree_util.tree_map(lambda x: x[real], spec), length[real], owner[real]
        result = in_fit_rows(fn, spec, np.asarray([max(sels[i].matrix_shape) for i in owner]), length)
        for i in np.unique(owner):
            rows = np.flatnonzero(owner == i)
            specs[i], out[i] = jax.tree_util.tree_map(lambda y, rows=rows: y[rows], (spec, result))
            specs[i] = specs[i]._replace(s=specs[i].s[:, : length[rows[0]]])
    return specs, out


def _row_owners(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """The item of each row of ``chunk`` and whether the row is real (padding rows copy the first item's matrix)."""
    owners = np.concatenate([np.full(hi - lo, i) for i, lo, hi in chunk.runs])
    return np.concatenate([owners, np.full(chunk.size - chunk.rows, chunk.runs[0][0])]), np.arange(chunk.size) < chunk.rows


def _base_row(sel: Selected, index: int | None) -> dict[str, Any]:
    a, b = sel.matrix_shape or (None, None)
    return {
        "name": sel.name if index is None or sel.layer_axis is None else f"{sel.name}[{index}]",
        "leaf": sel.name,
        "layer": None if sel.layer_axis is None else index,
        "shape": list(sel.shape),
        "matrix_shape": None if a is None else [a, b],
        "dtype": str(sel.dtype),
        "N": None if a is None else max(a, b),
        "p": None if a is None else min(a, b),
    }


def _skipped_row(sel: Selected) -> dict[str, Any]:
    return {**_base_row(sel, None), "status": f"skipped: {sel.status}"}


def _analysis_row(sel: Selected, index: int, res: dict[str, Any], baselines: bool, mode: Mode) -> dict[str, Any]:
    pdb, q = res["pdb"], res["q_pdb"]
    row = _base_row(sel, index)
    row.update(
        K=pdb.K,
        t=pdb.t,
        sigma1_sq=pdb.sigma1_sq,
        sigma2_sq=pdb.sigma2_sq,
        c=pdb.c,
        lambda_plus=pdb.lambda_plus,
        edges=[e for e in np.asarray(pdb.edges) if np.isfinite(e)],
        residual=pdb.residual,
        bulks=pdb.bulks,
        sphericity=pdb.sphericity,
        n_outliers=res["n_outliers"],
        moments_empirical=q.moments,
        moments_pdb=q.model_moments,
        ks_pdb=q.ks,
        l2_pdb=q.l2,
        tail_slope=res["tail_slope"],
        heavy_tailed=res["heavy_tailed"],
    )
    if baselines:
        for method in ("bema", "kernel"):
            pub, qp = res[method], res[f"q_{method}"]
            row.update(
                {
                    f"K_{method}": pub.K,
                    f"sigma_sq_{method}": pub.sigma_sq,
                    f"lambda_plus_{method}": pub.lambda_plus,
                    f"threshold_{method}": pub.threshold,
                    f"moments_{method}": qp.model_moments,
                    f"ks_{method}": qp.ks,
                    f"l2_{method}": qp.l2,
                    f"status_{method}": reason_text(pub.reason),
                }
            )
    row["rank_kept"] = dict(res["keep"])
    # an ok fit whose K is at its widest window with more eigenvalues above lambda_+ than K: outliers left in the bulk
    window = spike_window(row["N"], row["p"])
    window = window if mode == "reference" else widest_window(window, row["p"])
    row["beyond_window"] = bool(int(pdb.reason) == Reason.OK and int(pdb.K) >= window and int(res["keep"]["spikes"]) > int(pdb.K))
    row["status"] = reason_text(pdb.reason)
    return row


# --------------------------------------------------------------------------------------------------
# compress


class LowRank(NamedTuple):
    """A compressed matrix stored as two factors: ``W' = a @ b`` (a pytree node with two leaves).

    ``a`` is ``(..., m, r)`` and ``b`` is ``(..., r, n)`` where ``(m, n)`` is the matrix view of the
    original leaf (:func:`pdbjax.tree.select`), ``...`` the layer axis of stacked leaves (first, wherever
    ``layer_axis`` put it in the leaf), and ``r`` the largest kept rank in the leaf. ``a @ b`` is the leaf's
    matrix stack (:func:`pdbjax.tree.to_matrices`), not the leaf itself when it is a conv kernel or its layer
    axis is not the first: :func:`densify` turns it back into an array of the original shape and layout.
    """

    a: jax.Array
    b: jax.Array


def densify(params: Any, like: Any, *, conv_reshape: ConvReshape = "in", layer_axis: LayerAxis = None) -> Any:
    """Replace every :class:`LowRank` node of ``params`` by the dense leaf of the same name in ``like``'s layout.

    ``like`` is the original (uncompressed) tree, used for the leaf shapes and the matrix view;
    ``conv_reshape`` and ``layer_axis`` must be those :func:`compress` was given (they say how the factors'
    ``(L, m, n)`` products map back into each leaf). A node whose factors do not fit its leaf's matrix view
    (e.g. a stacked leaf densified without its ``layer_axis``) is a ``ValueError`` naming the leaf.

    A file written by ``pdbjax compress --factored`` and read back with :func:`pdbjax.io.load` holds each
    factored leaf ``NAME`` as two entries, ``NAME.a`` and ``NAME.b`` (safetensors), ``NAME/a`` and ``NAME/b``
    (``.npz``) or a ``{"a": ..., "b": ...}`` dict (Orbax, lists included); where ``NAME`` is a leaf of ``like``
    (or, for a file written from a nested tree, the leaf ``x/y/z`` of ``NAME = x.y.z``) they are read as a
    :class:`LowRank` node and the result holds ``NAME``. Such a pair of matrices (``a``'s last axis ``b``'s
    rows) whose ``NAME`` is not in ``like`` (neither ``NAME`` nor ``NAME.a`` / ``NAME/a`` is a leaf of it) is a
    ``ValueError``: ``like`` is not the tree that was compressed.

    Example (layers stacked on axis 1 of a ``(in, L, out)`` leaf):

    >>> import numpy as np, pdbjax
    >>> W = np.random.default_rng(0).standard_normal((64, 3, 32)).astype(np.float32)
    >>> dense, _ = pdbjax.compress({"w": W}, where="w", layer_axis=1, rank=4)
    >>> factored, _ = pdbjax.compress({"w": W}, where="w", layer_axis=1, rank=4, factored=True)
    >>> factored["w"].a.shape, factored["w"].b.shape
    ((3, 64, 4), (3, 4, 32))
    >>> back = pdbjax.densify(factored, {"w": W}, layer_axis=1)["w"]
    >>> back.shape, bool(np.allclose(back, dense["w"], atol=1e-5))
    ((64, 3, 32), True)
    """
    params, alias = _read_factors(params, like)
    is_low = lambda x: isinstance(x, LowRank)  # noqa: E731
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_low)
    names = {alias.get(path_name(path), path_name(path)) for path, node in flat if is_low(node)}
    sels = {s.name: s for s in select(like, lambda n, x: n in names, conv_reshape=conv_reshape, layer_axis=layer_axis,
                                      on_error="skip")}
    updates = {}
    for path, node in flat:
        if is_low(node):
            name = path_name(path)
            sel = sels.get(alias.get(name, name))
            if sel is None or not sel.ok:
                raise ValueError(f"{name}: a LowRank node, but `like` has no matrix leaf of that name"
                                 + ("" if sel is None else f" ({sel.status})"))
            a, b = jnp.asarray(node.a), jnp.asarray(node.b)
            m, n = sel.matrix_shape
            lead = () if sel.layer_axis is None else (sel.num_matrices,)
            if a.shape[:-1] != (*lead, m) or b.shape[:-2] != lead or b.shape[-1] != n or a.shape[-1] != b.shape[-2]:
                raise ValueError(
                    f"{name}: factors a {tuple(a.shape)} and b {tuple(b.shape)} do not fit the leaf's matrix view "
                    f"{(*lead, m, n)} (leaf shape {sel.shape}); pass densify the conv_reshape and layer_axis that "
                    "compress was given")
            updates[name] = _array_type_of(node.a, from_matrices((a @ b).reshape(sel.num_matrices, m, n), sel))
    return jax.tree_util.tree_map_with_path(lambda path, x: updates.get(path_name(path), x), params, is_leaf=is_low)


def _read_factors(params: Any, like: Any) -> tuple[Any, dict[str, str]]:
    """``params`` with the factor pairs of a saved factored file (see :func:`densify`) as :class:`LowRank`
    nodes, in new dicts and lists (the caller's are left as they are), and ``{name in the result: name of the
    leaf of like}`` for each (a file written from a nested tree names ``a/b/c`` as ``a.b.c``)."""
    leaves = set(leaf_names(like))
    dotted: dict[str, list[str]] = {}
    for leaf in leaves:
        dotted.setdefault(leaf.replace("/", "."), []).append(leaf)
    alias: dict[str, str] = {}

    def leaf_of(name: str) -> str | None:
        if name in leaves:
            return name
        found = dotted.get(name.replace("/", "."), [])
        return found[0] if len(found) == 1 else None

    def low(name: str, a: Any, b: Any, name_a: str, name_b: str) -> LowRank | None:
        """The node of the pair ``(a, b)`` named ``name``, or None where it is two leaves of ``like``'s tree."""
        target = leaf_of(name)
        if target is None:
            chained = np.ndim(a) >= 2 and np.ndim(b) >= 2 and np.shape(a)[-1] == np.shape(b)[-2]
            if chained and leaf_of(name_a) is None:
                raise ValueError(f"{name}: factors {name_a} and {name_b} of a factored file, but `like` has no leaf "
                                 f"{name}; pass densify the tree that was compressed")
            return None
        alias[name] = target
        return LowRank(a, b)

    def walk(node: Any, prefix: str) -> Any:
        if type(node) in (list, tuple):  # an Orbax tree's lists (a LowRank, a NamedTuple, is kept)
            return type(node)(walk(v, f"{prefix}{i}/") for i, v in enumerate(node))
        if type(node) is not dict:
            return node
        if set(node) == {"a", "b"}:  # an Orbax tree's factored leaf
            found = low(prefix[:-1], node["a"], node["b"], f"{prefix}a", f"{prefix}b")
            if found is not None:
                return found
        pairs: dict[Any, tuple[str, LowRank]] = {}  # flat NAME.a / NAME.b (or NAME/a, NAME/b) keys of a file
        for key in node:
            if isinstance(key, str) and key[-2:] in (".a", "/a") and key[:-1] + "b" in node:
                found = low(f"{prefix}{key[:-2]}", node[key], node[key[:-1] + "b"], f"{prefix}{key}", f"{prefix}{key[:-1]}b")
                if found is not None:
                    pairs[key] = (key[:-2], found)
        taken = {key[:-1] + "b" for key in pairs}
        out = {}
        for key, value in node.items():
            if key in pairs:
                out[pairs[key][0]] = pairs[key][1]
            elif key not in taken:
                out[key] = walk(value, f"{prefix}{key}/")
        return out

    return walk(params, ""), alias


def compress(
    params: Any,
    where: Where = None,
    *,
    method: Method = "pdb",
    rank: Rank | None = None,
    budget: float | None = None,
    shrink: Shrink | None = None,
    factored: bool = False,
    mode: Mode = "scaled",
    slr_sr: float = 0.5, slr_rr: float = 0.5,
    conv_reshape: ConvReshape = "in", layer_axis: LayerAxis = None, on_error: OnError = "raise",
    shard: bool = True, precision: Precision | None = None,
    progress: Callable[[int, int], None] | None = None, max_memory: int | None = DEFAULT_MAX_MEMORY,
) -> tuple[Any, Report]:
    r"""Compress every selected matrix with :func:`pdbjax.filter_matrix` and return new params.

    Args:
      params: a param pytree, NNX ``State`` or ``Module`` (never modified).
      where: leaf selection as in :func:`analyze`.
      method: ``"pdb"`` (Algorithm 2), ``"pub-bema"``, ``"pub-kernel"``, ``"svd"`` or ``"slr"``
        (keyword-only, as every option after ``where``, the order of :func:`analyze`; a method name passed
        as ``where`` is a ``TypeError`` that says so).
      rank: ``int`` rank, ``float`` removed fraction, or a rule ``"spikes"`` / ``"upper-bulk"`` / ``"auto"``
        (:func:`pdbjax.keep_count`; ``None``: :data:`DEFAULT_RANK`, ``"auto"``, unless ``budget`` is given:
        ``"upper-bulk"`` on a matrix whose PDB fit finds two bulks, the matrix left as it is, status
        ``ONE_BULK``, where it finds one).
      budget: a fraction ``f`` in ``(0, 1]``: instead of a rank, the selected matrices stored as factors
        (``keep (m + n)`` per matrix) may take at most ``f`` of their dense count ``sum m n``, and the
        keep counts are allocated across all matrices from their fits (:mod:`pdbjax.budget`: every
        component scored by ``s_j^2 / lambda_+`` of its own matrix, filled greedily by score per stored
        parameter, components above the edges first, then the largest below them while the budget
        lasts). A matrix whose fit is not ok is left as it is and counted at ``m n``; with
        ``factored`` every matrix is counted at what is stored (a stacked leaf's layers are allocated
        together and keep one width, every factored leaf keeps at least one component, and a stacked
        leaf with a layer whose fit is not ok is stored dense, each layer at ``m n``); a budget too small
        for those alone is a ``ValueError`` naming them. Leaves skipped by the selection
        (``on_error="skip"``: not a float matrix, NaN/Inf) are outside the count, as in
        ``params_before``. Needs the method's fit (``"pdb"``, ``"pub-*"``; ``"svd"`` allocates with
        the PDB fit); not with ``"slr"``, nor together with ``rank``.
        ``shrink`` applies to the kept components; with ``shrink="optimal"``, which sets every component
        at or below the edge to 0, only components above the edges are allocated (the budget is an upper
        bound, not spent on zeros; see ``benchmarks/results/budget.md``).
      shrink: what the kept singular values become (:func:`pdbjax.filter_matrix`): ``"spikes"``
        (Algorithm 2), ``"optimal"`` (the Frobenius-optimal shrinker under the fitted noise,
        :mod:`pdbjax.shrink`; for svd/slr the PDB fit is estimated for it), ``"none"``, or ``None``
        (the method's own: ``"spikes"`` for pdb/pub-*, ``"none"`` for svd/slr).
      factored: store each compressed matrix as a :class:`LowRank` node ``(a, b)`` instead of a dense
        array, balanced: ``a = U_k diag(s'_k)^(1/2)``, ``b = diag(s'_k)^(1/2) V_k^T`` (plain pytrees only:
        for NNX use ``nnx.state(model).to_pure_dict()``).
      mode: PDBLS mode for the fits.
      slr_sr, slr_rr: SLR sparsity and reduction rates.
      conv_reshape, layer_axis, on_error, shard, precision, progress, max_memory: as in
        :func:`analyze` (``progress`` counts each matrix twice when a fit is needed: once for its
        spectrum, once for its rebuild).

    Returns:
      ``(new_params, report)``. ``new_params`` has the structure and dtypes of ``params`` (a new
      ``nnx.State`` for NNX input; with ``factored=True`` compressed leaves become :class:`LowRank`;
      a leaf none of whose matrices could be compressed stays a dense array).
      A matrix whose fit is not ok is left unchanged and its row says why. ``report.totals`` holds
      ``params_before`` (entries of the selected matrices), ``params_after`` (entries stored for them
      after compression: ``keep (m + n)`` per factored matrix, ``m n`` per dense one, SLR's sparse
      count for ``"slr"``) and ``compression_ratio = params_after / params_before``, plus the same for
      a low-rank storage of the dense output (``lowrank_*``). With a ``budget``, each row also holds
      ``budget_params`` (what it is counted at) and the totals ``budget`` (``f``), ``budget_cap``
      (``floor(f sum m n)``), ``budget_params_after`` (the sum of ``budget_params``) and
      ``budget_ratio = budget_params_after / params_before <= f``; a row's ``keep`` is its allocation.
      A weight whose rebuild falls outside its dtype (``OUT_OF_RANGE``, e.g. float16 near 65504) is
      stored dense and counted at ``m n`` after the allocation, so only then can ``budget_ratio``
      exceed ``f``. With ``factored=True`` a stacked leaf's factors are as wide as its largest keep
      (zero columns pad the others) and a leaf that keeps nothing stores one zero column (Orbax cannot
      store empty arrays): ``params_after`` counts what is stored, padding included (for ``"slr"``,
      the sparse count); a stacked leaf with a layer left as it is is stored dense, its compressed
      layers as the product of their factors (exact factors of that layer would take
      ``p (m + n) > m n``, and every layer the leaf's width).
    """
    if isinstance(where, str) and where in METHODS:
        raise TypeError(f"compress(params, {where!r}) passes {where!r} as where=; the method is keyword-only: "
                        f"compress(params, method={where!r})")
    shrink = resolve_shrink(method, shrink)
    precision = check_precision(precision)
    check_mode(mode)
    if budget is not None:
        budget = check_budget(budget)
        if rank is not None:
            raise ValueError(f"give either rank= or budget=, not both (got rank={rank!r}, budget={budget})")
        if method == "slr":
            raise ValueError("budget= counts keep (m + n) parameters per matrix, which SLR's sparse factors do not store; "
                             "use method 'pdb', 'pub-bema', 'pub-kernel' or 'svd'")
    if isinstance(rank, (np.ndarray, np.generic, jax.Array)):  # a NumPy/JAX scalar is its Python value
        if np.ndim(rank) != 0:
            raise TypeError(f"rank must be an int, a float or a rule name, one for every matrix; got an array of shape {np.shape(rank)}")
        rank = np.asarray(rank).item()
    rank = DEFAULT_RANK if rank is None else rank
    if factored and holds_nnx(params):
        raise ValueError("factored=True needs a plain pytree of arrays, and params holds NNX Modules, States or Variables; "
                         "pass nnx.state(model).to_pure_dict() instead")
    if factored and any(is_boxed(x) for x in jax.tree_util.tree_leaves(params, is_leaf=is_boxed)):
        raise ValueError("factored=True needs a plain pytree of arrays, and params holds Linen metadata boxes "
                         "(nn.Partitioned, nn.LogicallyPartitioned); pass flax.core.meta.unbox(params) instead")
    sels = select(params, where, conv_reshape=conv_reshape, layer_axis=layer_axis, on_error=on_error, allow_empty=False,
                  precision=precision)
    good = [s for s in sels if s.ok]
    n = sum(s.num_matrices for s in good)
    alloc = None
    rebuild_options = dict(factored=factored, slr_sr=slr_sr, slr_rr=slr_rr, precision=precision)
    options = dict(shrink=shrink, mode=mode, **rebuild_options)

    def rebuilt(result: tuple[Any, FilterInfo], fit: Any = None) -> dict[str, Any]:
        return {"out": result[0], "info": result[1], "fit": fit}

    if budget is not None or needs_fit(method, rank, shrink):  # passes 1 and 2: spectra, then one fit per length
        first = None if progress is None else (lambda done, total: progress(done, 2 * total))
        chunks = _spectra(good, precision, shard, first, max_memory)
        specs, fits = _by_length(good, chunks, lambda spec, N, length: fit_spectrum(spec, N, method, mode, length), mode)
        then = None if progress is None else (lambda done, total: progress(n + done, 2 * n))
        keeps = [rank] * len(good)
        if budget is not None:
            alloc = _allocate(good, specs, fits, budget, factored, fill=shrink != "optimal")
            keeps = _split(alloc.keep.astype(np.int32), good)
        # Pass 3 rebuilds each shape group as decided from the pass-1 spectra (no second values-only SVD),
        # the fits and the rank or the budget's keep counts, once per padded length.
        decisions = _decide_by_length(specs, fits, keeps, method, shrink, mode)
        aux = [{"fit": fit, "decision": d} for fit, d in zip(fits, decisions)]
        fn = lambda m, a: rebuilt(apply_decision(m, a["decision"], method, **rebuild_options), a["fit"])  # noqa: E731
    else:
        aux, then = None, progress
        fn = lambda m: rebuilt(filter_matrix(m, method, rank, **options))  # noqa: E731
    with context(precision):  # float64 leaves stacked in float64 for precision="float64", as in _spectra
        results = map_groups(fn, _matrices(good), shard=shard, progress=then, max_memory=max_memory, aux=aux)
    counted = None if alloc is None else _split(alloc.params, good)
    by_leaf: dict[str, list[dict[str, Any]]] = {s.name: [_skipped_row(s)] for s in sels if not s.ok}
    updates = {}
    for leaf, (sel, res) in enumerate(zip(good, results)):
        fields = jax.device_get({k: v for k, v in res.items() if k != "out"})  # one transfer per leaf
        updates[sel.name], fields["info"] = _new_leaf(sel, res["out"], fields["info"], factored)
        for i in range(sel.num_matrices):
            item = jax.tree_util.tree_map(lambda x: np.asarray(x)[i], fields)
            row = _compress_row(sel, i, item, method, shrink)
            if factored and not isinstance(updates[sel.name], LowRank):
                row["params_after"] = row["params_before"]  # the leaf stays dense
            elif factored and method != "slr":  # what is stored: the leaf's width, padding columns included
                row["params_after"] = updates[sel.name].a.shape[-1] * sum(sel.matrix_shape)
            if counted is not None:  # factored: what is stored; dense: the allocation, m n for an overflow
                unstored = int(item["info"].reason) == Reason.OUT_OF_RANGE
                row["budget_params"] = row["params_after"] if factored else row["params_before"] if unstored else int(counted[leaf][i])
            by_leaf.setdefault(sel.name, []).append(row)
    rows = [row for sel in sels for row in by_leaf[sel.name]]  # tree order, as analyze's
    new_params = with_new_leaves(params, updates, factored)
    rows = [to_jsonable(r) for r in rows]
    totals = compression_totals(rows)
    if alloc is not None:
        after = sum(r["budget_params"] for r in rows if "budget_params" in r)
        totals.update(budget=budget, budget_cap=alloc.cap, budget_params_after=after, budget_ratio=after / alloc.dense)
    return new_params, Report(rows, totals)


def with_new_leaves(params: Any, updates: dict[str, Any], factored: bool) -> Any:
    """``params`` with the leaves named in ``updates`` replaced (what :func:`compress` returns): by
    :func:`pdbjax.tree.replace` for dense leaves; with ``factored``, each by its :class:`LowRank` node, or its dense
    array where the weight was left unchanged, as JAX arrays in place of a JAX leaf and NumPy in place of a
    NumPy leaf (``replace``'s rule)."""
    if not factored:
        return replace(params, updates)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _array_type_of(x, updates[path_name(path)]) if path_name(path) in updates else x, params)


def _array_type_of(old: Any, new: Any) -> Any:
    """``new`` (an array or a node of arrays) as NumPy arrays where ``old`` is one, else as JAX arrays."""
    return new if isinstance(old, np.ndarray) else jax.tree_util.tree_map(jnp.asarray, new)


def _decide_by_length(specs: Sequence[Spectrum], fits: Sequence[Any], keeps: Sequence[Rank], method: str,
                      shrink: str, mode: Mode) -> list[Any]:
    """:func:`pdbjax.filter.decide` for the leaves' host spectra, fits and ranks (``keeps``: one rank for every
    leaf, or per-leaf keep counts), every leaf of one padded length (:func:`padded_length`) in calls of
    :func:`in_fit_rows`; returns each leaf's decision (leading axis ``L``, its own length ``p``).

    As :func:`pdbjax.filter_matrix`, a method that needs no fit for its rank and shrinkage decides without it,
    except with a budget's keep counts: those come from the fits, and a matrix whose fit is not ok is left as it is.
    """
    by_size: dict[int, list[int]] = {}
    for leaf, spec in enumerate(specs):
        by_size.setdefault(padded_length(spec.s.shape[-1], mode), []).append(leaf)
    out: list[Any] = [None] * len(specs)
    for size, leaves in by_size.items():
        cat = lambda parts: jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *parts)  # noqa: E731
        rank = keeps[leaves[0]]
        counts = cat([keeps[leaf] for leaf in leaves]) if isinstance(rank, np.ndarray) else None
        # Budget counts were allocated from the fits: a matrix whose fit is not ok stays as it is whatever the method.
        fit = cat([fits[leaf] for leaf in leaves]) if counts is not None or needs_fit(method, rank, shrink) else None
        spec, length = _padded_rows([specs[leaf] for leaf in leaves], size)
        decision = in_fit_rows(lambda s, f, k, q: decide(s, f, rank if k is None else k, shrink, q), spec, fit, counts, length)
        ends = np.cumsum([specs[leaf].s.shape[0] for leaf in leaves])
        for leaf, lo, hi in zip(leaves, np.concatenate([[0], ends[:-1]]), ends):
            p = specs[leaf].s.shape[-1]
            d = jax.tree_util.tree_map(lambda x, lo=lo, hi=hi: x[lo:hi], decision)
            out[leaf] = d._replace(shrunk=d.shrunk[:, :p], replace=d.replace[:, :p])
    return out


def _split(values: np.ndarray, sels: Sequence[Selected]) -> list[np.ndarray]:
    """A flat per-matrix array back into one array per leaf (leading axis ``L``)."""
    ends = np.cumsum([s.num_matrices for s in sels])
    return np.split(np.asarray(values), ends[:-1])


def _allocate(sels: Sequence[Selected], specs: Sequence[Spectrum], fits: Sequence[Any], budget: float, factored: bool,
              fill: bool) -> Allocation:
    """Keep counts of every matrix of ``sels`` for ``budget`` (:func:`pdbjax.budget.allocate`), one flat array
    (``keep`` and ``params`` per matrix).

    ``fill=False`` (used with ``shrink="optimal"``, which sets every component at or below the noise edge
    to zero) allocates only components above the edges: storing a component that is then zero would spend
    budget for nothing.

    Scores are ``s_j^2 / lambda_+`` from the values-only spectra (the same numbers the rebuild's keep
    decisions use) and the method's fits, in the original units (float64), padded with NaN to the
    longest spectrum. A matrix whose fit is not ok stays as it is, counted at ``m n``. With ``factored``
    every matrix is counted at what its leaf stores (:func:`_new_leaf`): a stacked leaf's factors are as wide
    as its widest keep, so its layers are allocated together and keep the same count; every factored leaf
    stores at least one column; a stacked leaf with a layer whose fit is not ok is stored dense, every layer
    counted at ``m n``, its other layers keeping all ``p`` components (filtered as the method does, no storage
    to save).
    """
    width = max(min(s.matrix_shape) for s in sels)
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[-1])), constant_values=np.nan)  # noqa: E731
    rows: list[dict[str, Any]] = []  # one allocation row per matrix, or per stacked factored leaf
    for sel, spec, fit in zip(sels, specs, fits):
        rho = component_scores(raw_eigenvalues(spec), fit)
        leaf_ok = np.asarray(fit.ok, bool).reshape(sel.num_matrices)
        a, b = sel.matrix_shape
        names = [_base_row(sel, i)["name"] for i in range(sel.num_matrices)]
        if factored and sel.num_matrices > 1 and leaf_ok.all():  # one row for the leaf: its columns are shared
            rows.append(dict(scores=pad(np.sum(rho, axis=0, keepdims=True)), above=pad(np.any(rho > 1, axis=0, keepdims=True) * 1.0),
                             ok=True, layers=sel.num_matrices, shape=(a, b), name=sel.name, fixed=0, full=False))
            continue
        dense_leaf = factored and sel.num_matrices > 1  # a stacked factored leaf with a failed layer stays dense
        for i in range(sel.num_matrices):
            ok = bool(leaf_ok[i]) and not dense_leaf
            rows.append(dict(scores=pad(rho[i:i + 1]), above=pad((rho[i:i + 1] > 1) * 1.0), ok=ok, layers=1, shape=(a, b),
                             name=names[i], fixed=a * b, full=dense_leaf and bool(leaf_ok[i])))
    col = lambda key: np.asarray([r[key] for r in rows])  # noqa: E731
    alloc = allocate(np.concatenate(col("scores")), col("shape"), budget, allocatable=col("ok"),
                     fixed_params=col("fixed"), names=list(col("name")), fill=fill, layers=col("layers"),
                     above=np.concatenate(col("above")) == 1.0, least=col("ok").astype(np.int64) if factored else None)
    layers = col("layers")
    full = np.repeat(np.where(col("full"), np.minimum(*col("shape").T), 0), layers)
    keep = np.maximum(np.repeat(alloc.keep, layers), full)
    params = np.repeat(alloc.params // layers, layers)
    return alloc._replace(keep=keep, params=params)


def _new_leaf(sel: Selected, out: Any, info: FilterInfo, factored: bool) -> tuple[Any, FilterInfo]:
    """The new leaf of ``sel`` from the rebuilt matrices ``out`` (working precision) and their host ``info``, and
    ``info`` itself, updated where a weight could not be stored.

    Every matrix whose ``info.ok`` is False is the leaf's own, bit for bit (the rebuild returned it in the working
    precision, which rounds a float64 leaf). A rebuilt matrix ``W'`` (dense, or the product of its factors) with
    entries outside the leaf's dtype (e.g. float16 weights near 65504), or factors that overflow it, is not stored:
    its row becomes ``Reason.OUT_OF_RANGE`` and the matrix stays as it is. Factored, the leaf becomes a
    :class:`LowRank` only when every matrix in it was compressed: otherwise (a stacked leaf with a layer left
    as it is, whose exact factors would take ``p (m + n) > m n``) it is stored dense, its compressed layers
    as the product of their factors.
    """
    ok = np.asarray(info.ok, bool).reshape(-1)
    limit = float(jnp.finfo(sel.dtype).max)  # ml_dtypes (bfloat16) too
    with np.errstate(over="ignore", invalid="ignore"):
        if factored:
            r = max(int(np.max(np.asarray(info.keep).reshape(-1)[ok], initial=0)), 1)  # the widest kept rank
            work = np.asarray(out[0][..., :r]), np.asarray(out[1][..., :r, :])
            stored = work[0].astype(sel.dtype), work[1].astype(sel.dtype)
            in_range = _product_in_range(*stored, limit)
        else:
            stored = np.asarray(out).astype(sel.dtype)
            in_range = np.isfinite(stored).all(axis=(-2, -1)).reshape(-1)
    overflow = ok & ~in_range
    if overflow.any():
        info = info._replace(**{
            field: np.where(overflow.reshape(np.shape(value)), new, value) for field, value, new in (
                ("ok", info.ok, False), ("reason", info.reason, int(Reason.OUT_OF_RANGE)), ("keep", info.keep, min(sel.matrix_shape)),
                ("n_outliers", info.n_outliers, 0), ("params_after", info.params_after, info.params_before),
                ("rel_change", info.rel_change, 0.0))})
        ok = ok & ~overflow
    if factored and ok.all():
        a, b = stored
        return LowRank(*((a[0], b[0]) if sel.layer_axis is None else (a, b))), info
    if not ok.any():  # nothing compressed: the leaf stays as it is, a copy
        return (np.array(sel.value) if isinstance(sel.value, np.ndarray) else sel.value), info
    original = np.asarray(to_matrices(sel.value, sel))
    if factored:  # the compressed layers of a leaf stored dense: their factors' products
        with np.errstate(over="ignore", invalid="ignore"):
            stored = np.matmul(*work).astype(sel.dtype)
    return from_matrices(np.where(ok[:, None, None], stored, original), sel), info


def _product_in_range(a: np.ndarray, b: np.ndarray, limit: float) -> np.ndarray:
    """Per matrix of the stacks ``a`` ``(L, m, r)`` and ``b`` ``(L, r, n)``: whether both are finite and every entry
    of ``a @ b`` lies within ``limit`` in size. Cauchy-Schwarz bounds ``|(a b)_ij| <= ||a_i.|| ||b_.j||``; only a
    matrix whose bound exceeds ``limit`` has its product formed (float64)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ok = np.isfinite(a64).all(axis=(-2, -1)) & np.isfinite(b64).all(axis=(-2, -1))
    bound = np.linalg.norm(a64, axis=-1).max(axis=-1) * np.linalg.norm(b64, axis=-2).max(axis=-1)
    for i in np.flatnonzero(ok & ~(bound <= limit)):
        ok[i] = np.abs(a64[i] @ b64[i]).max() <= limit
    return ok


def _compress_row(sel: Selected, index: int, item: dict[str, Any], method: str, shrink: str) -> dict[str, Any]:
    info: FilterInfo = item["info"]
    row = _base_row(sel, index)
    fit = item["fit"]
    if fit is not None and hasattr(fit, "t"):
        row.update(K=fit.K, t=fit.t, sigma1_sq=fit.sigma1_sq, sigma2_sq=fit.sigma2_sq, lambda_plus=fit.lambda_plus, bulks=fit.bulks)
    elif fit is not None:
        row.update(K=fit.K, sigma_sq=fit.sigma_sq, lambda_plus=fit.lambda_plus)
    a, b = sel.matrix_shape
    row.update(
        method=method,
        shrink=shrink,
        keep=info.keep,
        n_outliers=info.n_outliers,
        params_before=info.params_before,
        params_after=info.params_after,
        params_lowrank=int(info.keep) * (a + b),
        rel_change=info.rel_change,
        status="ok" if bool(info.ok) else f"unchanged: {reason_text(info.reason)}",
    )
    return row


