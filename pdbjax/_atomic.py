"""Atomic file writes shared by every writer in pdbjax (checkpoints, datasets, reports).

A writer creates its output under a temporary name in the destination's directory (same file
system), the data is flushed to disk, and one ``os.replace`` moves it into place: readers see the
old file or the new one, never a partial one, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "check_destination"]


def check_destination(path: Path, overwrite: bool) -> None:
    """Raise before any work is done unless ``path`` may be written.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      FileNotFoundError: the parent directory of ``path`` does not exist.
    """
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"parent directory of {path} does not exist")


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes, *, overwrite: bool = True) -> Path:
    """Write ``payload`` to ``path`` atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(payload), overwrite)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write(dest: Path, writer: Callable[[Path], None], overwrite: bool) -> None:
    """Let ``writer`` create a temporary sibling of ``dest``, then rename it to ``dest``.

    The temporary path lives in a hidden directory in ``dest``'s parent (same
    file system, so renames are atomic) that is always removed afterwards.
    """
    dest = Path(os.path.abspath(dest))  # "." or "dir/..": the name of the directory itself, not ""
    holder = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp = holder / dest.name
        writer(tmp)
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())  # the mode open() gives; some writers (safetensors) make it 0600
            fsync_file(tmp)
        _commit(tmp, dest, holder / f"{dest.name}.old", overwrite)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the mask means setting it: once per process, restored at once
    os.umask(mask)
    return mask


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _commit(tmp: Path, dest: Path, aside: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``dest``; an existing ``dest`` is moved to ``aside`` first
    unless a plain file replaces a plain file (a single atomic ``os.replace``)."""
    if not os.path.lexists(dest):
        os.replace(tmp, dest)
        return
    if not overwrite:
        raise FileExistsError(f"{dest} already exists (pass overwrite=True to replace it)")
    if tmp.is_file() and dest.is_dir():
        raise IsADirectoryError(f"{dest} is a directory; refusing to replace it with a file")
    if tmp.is_file():
        os.replace(tmp, dest)
        return
    os.replace(dest, aside)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(aside, dest)
        raise
