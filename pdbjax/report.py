"""Per-matrix reports returned by :func:`pdbjax.analyze` and :func:`pdbjax.compress`.

A :class:`Report` is a list of rows, one per matrix, each a plain dict of JSON-able values (floats,
ints, strings, lists, ``None`` for a value that was not computed). It converts to JSON, CSV and a
pandas DataFrame (pandas optional), and writes files atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from pdbjax._atomic import atomic_write_text, check_destination

__all__ = ["Report", "compression_totals", "to_jsonable", "text_table"]


def to_jsonable(value: Any) -> Any:
    """Convert numpy/JAX scalars and arrays to Python floats/ints/lists; NaN/Inf become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    arr = np.asarray(value)
    if arr.ndim > 0:
        return [to_jsonable(v) for v in arr.tolist()]
    if arr.dtype == bool:
        return bool(arr)
    if np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    x = float(arr)
    return x if math.isfinite(x) else None


def compression_totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Model-level totals of :func:`pdbjax.compress` rows: matrices compressed, left unchanged (status
    not ``ok``) and skipped; parameter counts before and after (dense, and as low-rank factors capped at
    the dense count) and their ratios to the count before (``None`` when nothing was counted).

    >>> rows = [{"status": "ok", "params_before": 100, "params_after": 40, "params_lowrank": 30},
    ...         {"name": "emb", "status": "skipped: 1-D"}]
    >>> t = compression_totals(rows)
    >>> t["matrices"], t["skipped"], t["compression_ratio"], t["lowrank_compression_ratio"]
    (1, 1, 0.4, 0.3)
    """
    done = [r for r in rows if "params_before" in r]
    before = sum(int(r["params_before"]) for r in done)
    after = sum(int(r["params_after"]) for r in done)
    lowrank = sum(min(int(r["params_lowrank"]), int(r["params_before"])) for r in done)
    ratio = lambda x: x / before if before else None  # noqa: E731
    return {
        "matrices": len(done),
        "unchanged": sum(1 for r in done if r["status"] != "ok"),
        "skipped": len(rows) - len(done),
        "params_before": before,
        "params_after": after,
        "compression_ratio": ratio(after),
        "lowrank_params_after": lowrank,
        "lowrank_compression_ratio": ratio(lowrank),
    }


@dataclass
class Report:
    """Rows of per-matrix results plus model-level totals.

    Attributes:
      rows: one dict per matrix (see the README for the columns).
      totals: model-level figures (e.g. parameter counts and the compression ratio of
        :func:`pdbjax.compress`).
      spectra: from :func:`pdbjax.analyze`, the eigenvalues its fits saw: descending, float64, in the
        weights' units, keyed by row ``name`` (rows of analysed matrices only); what
        :func:`pdbjax.plot.save_figures` draws. Not part of the JSON/CSV output or of ``==``; empty
        for :func:`pdbjax.compress` and :func:`pdbjax.distributed.analyze`.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def column(self, key: str) -> list[Any]:
        return [row.get(key) for row in self.rows]

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2, overwrite: bool = True) -> str:
        """JSON list with one object per matrix (``totals`` are not part of this contract), each with every
        column of the report in one order (:func:`_columns`; ``null`` where a row has none, e.g. a skipped leaf).

        With a ``path`` the text is also written there atomically; an existing file is replaced only
        with ``overwrite=True`` (the default; else ``FileExistsError``) and a directory never
        (``IsADirectoryError``). The text is returned either way.
        """
        keys = _columns(self.rows)
        text = json.dumps([{k: row.get(k) for k in keys} for row in to_jsonable(self.rows)], indent=indent)
        if path is not None:
            _write(path, text + "\n", overwrite)
        return text

    def to_csv(self, path: str | os.PathLike | None = None, *, overwrite: bool = True) -> str:
        """CSV with one line per matrix, the columns of :meth:`to_json`; list-valued columns are written as
        JSON strings, missing values empty.

        With a ``path`` the text is also written there atomically, as in :meth:`to_json`.
        """
        rows, keys = to_jsonable(self.rows), _columns(self.rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        text = buf.getvalue()
        if path is not None:
            _write(path, text, overwrite)
        return text

    def to_dataframe(self):
        """A pandas DataFrame (requires ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("Report.to_dataframe needs pandas: pip install pandas") from err
        return pd.DataFrame(to_jsonable(self.rows))

    def summary(self, columns: Sequence[str] | None = None, digits: int = 4) -> str:
        """A fixed-width text table of the chosen columns (for terminals and logs)."""
        columns = list(columns or _DEFAULT_COLUMNS)
        out = [text_table(columns, [[row.get(c) for c in columns] for row in self.rows], digits)]
        if self.totals:
            out.append("")
            out.extend(f"{k}: {_fmt(v, digits)}" for k, v in self.totals.items())
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()


def _write(path: str | os.PathLike, text: str, overwrite: bool) -> None:
    """Write a report file atomically.

    Raises:
      IsADirectoryError: ``path`` is a directory (it is never replaced by a report).
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      FileNotFoundError: the parent directory of ``path`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; a report needs a file name")
    check_destination(path, overwrite)
    atomic_write_text(path, text, overwrite=overwrite)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``rows``: the order of the row with the most keys (a fitted row, whichever comes first in
    the model), then the others' keys as they appear."""
    keys = list(max(rows, key=len, default={}))
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return keys


_DEFAULT_COLUMNS = ("name", "shape", "K", "t", "sigma1_sq", "sigma2_sq", "lambda_plus", "ks_pdb", "ks_bema", "status")


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A fixed-width text table: the one table printer of pdbjax (reports, the CLI, the demo).

    Cells are formatted by value (floats to ``digits`` significant digits, NaN/Inf/None as ``-``);
    the first column is left-aligned, the others right-aligned (numbers line up at their last digit).

    >>> print(text_table(["name", "K"], [["a", 3], ["bb", None]]))
    name  K
    ----  -
    a     3
    bb    -
    """
    cells = [[_fmt(v, digits) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _fmt(value: Any, digits: int) -> str:
    value = to_jsonable(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={_fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v, digits) for v in value) + "]"
    return "-" if value is None else str(value)
