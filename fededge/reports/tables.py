"""Result table files: atomic rewrites, append-only CSVs, and integer counts.

* :func:`atomic_write_frame` -- write a table via a temporary file and a
  rename (:mod:`fededge.files`), so a crash never leaves a half-written one;
* :class:`AppendedTable` -- a CSV that grows by one append per round (its rows
  are never rewritten, so a round costs its own rows however long the run), with
  the byte length and SHA-256 of what it holds for the run's checkpoint; a resume
  cuts the file back to the checkpoint's length (a crash mid-append can leave a
  partial last line) after checking that prefix against its digest;
* :func:`typed` -- a table with its count columns as integers
  (:func:`fededge.reports.columns.whole_number`), nullable where a cell is empty.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fededge.files import atomic_write
from fededge.reports.columns import describe, whole_number

#: Units whose columns are text (read back as strings, empty never NaN).
TEXT_UNITS = frozenset({"name", "text"})


def atomic_write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write a table as CSV or Parquet (by suffix, counts as integers), atomically."""
    frame = typed(frame)
    if path.suffix == ".parquet":
        atomic_write(path, lambda fh: frame.to_parquet(fh, index=False))
    else:
        atomic_write(path, lambda fh: fh.write(frame.to_csv(index=False).encode()))


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its count columns as nullable integers.

    Every count column (:func:`~fededge.reports.columns.whole_number`) becomes
    ``Int64`` (NaN becomes an empty cell).

    A count column that holds a fraction or an infinity stays float: the stored
    value is never rounded.
    """
    cast: dict[str, str] = {}
    for name in frame.columns:
        column = frame[name]
        if not (whole_number(str(name)) and pd.api.types.is_numeric_dtype(column)):
            continue
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_integer_dtype(column):
            continue
        values = column.dropna().to_numpy(dtype=float)
        if all(math.isfinite(v) and v == int(v) for v in values):
            cast[str(name)] = "Int64"
    return frame.astype(cast) if cast else frame


def untyped(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with nullable integer columns as plain numpy ones.

    int64, or float64 with NaN where a cell is empty: what code computing on a
    table expects.
    """
    cast: dict[str, Any] = {}
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.Int64Dtype | pd.Int32Dtype):
            cast[name] = "float64" if frame[name].isna().any() else "int64"
    return frame.astype(cast) if cast else frame


def prefix_sha256(path: Path, nbytes: int) -> str | None:
    """Hex SHA-256 of the first ``nbytes`` of a file; None when it is shorter."""
    digest = hashlib.sha256()
    left = nbytes
    with path.open("rb") as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                return None
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


class AppendedTable:
    """A CSV table written by appending rows (see the module docstring).

    The first append writes the header (replacing any file of that name); its
    columns are the table's, and later rows must have no other keys (a missing
    key is an empty cell).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] | None = None
        self.nbytes = 0
        self._digest = hashlib.sha256()

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` in one write."""
        if not rows:
            return
        header = self.columns is None
        if self.columns is None:
            self.columns = list(rows[0])
        extra = set().union(*(r.keys() for r in rows)) - set(self.columns)
        if extra:
            raise ValueError(f"{self.path.name}: rows have columns not in its header: {extra}")
        frame = typed(pd.DataFrame(list(rows), columns=self.columns))
        data = frame.to_csv(index=False, header=header, lineterminator="\n").encode()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if self.nbytes == 0 else os.O_APPEND)
        fd = os.open(self.path, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        self.nbytes += len(data)
        self._digest.update(data)

    def mark(self) -> dict[str, Any]:
        """What the checkpoint records: ``{"bytes": length, "sha256": digest}``."""
        return {"bytes": self.nbytes, "sha256": self._digest.hexdigest()}

    def resume(self, mark: Mapping[str, Any]) -> pd.DataFrame:
        """Cut the file back to the checkpoint's ``mark`` and continue it; returns its rows.

        Raises
        ------
        ValueError
            When the file is shorter than the mark or its prefix does not match.
        """
        nbytes, expected = int(mark["bytes"]), str(mark["sha256"])
        if prefix_sha256(self.path, nbytes) != expected:
            raise ValueError(f"{self.path} does not match the checkpoint")
        with self.path.open("rb") as fh:
            data = fh.read(nbytes)
        os.truncate(self.path, nbytes)
        self.nbytes = nbytes
        self._digest = hashlib.sha256(data)
        frame = read_csv_exact(io.BytesIO(data))
        self.columns = [str(c) for c in frame.columns]
        return frame


def read_csv_exact(source: Any) -> pd.DataFrame:
    """A table CSV as written.

    Floats to the bit (round-trip parsing), text columns as strings (an empty
    cell is ``""``).
    """
    head = pd.read_csv(source, nrows=0)
    text = [c for c in head.columns if (d := describe(str(c))) is not None and d[0] in TEXT_UNITS]
    if hasattr(source, "seek"):
        source.seek(0)
    frame = pd.read_csv(source, float_precision="round_trip", dtype={c: str for c in text})
    for name in text:
        frame[name] = frame[name].fillna("")
    return frame
