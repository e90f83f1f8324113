"""The input schema of a packaged model: its columns in order, each with a type.

A column is a ``number``, an ``integer``, a ``boolean`` or a ``category`` (a string; the categories
seen in the evaluation data are recorded), and says whether a missing value (``null``) is accepted.
The schema is inferred once, when a model is packaged, from what the pipeline was fitted on and the
evaluation data, and stored in the artifact's metadata; every path into the model (``/predict``,
batch scoring, the packager's own evaluation) builds its input through :meth:`InputSchema.frame`,
so the pipeline always sees the column names and dtypes it was checked with.

    >>> schema = InputSchema.from_json({"columns": [{"name": "age", "type": "integer"}], "frame": True})
    >>> schema.names
    ('age',)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import NoneType
from typing import Any

import numpy as np
import pandas as pd

from model_service.frames import frame_of_arrays

TYPES = ("number", "integer", "boolean", "category")
MAX_CATEGORIES = 1000  # more distinct strings than this: a free-text column, categories not listed


class SchemaError(ValueError):
    """A value that does not fit its column: says which row, which column and what was expected."""


def describe(value: Any) -> str:
    """A JSON value's kind, for messages: ``a string``, ``null``, ``a boolean``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class Column:
    """One input column: its name, type, whether ``null`` is accepted, categories seen."""

    name: str
    type: str
    nullable: bool = False
    categories: tuple[str, ...] | None = None

    def expected(self) -> str:
        what = {"number": "a number", "integer": "an integer", "boolean": "true or false",
                "category": "a string"}[self.type]
        if self.type == "category" and self.categories:
            shown = ", ".join(repr(c) for c in self.categories[:8])
            what += f" (seen: {shown}{', ...' if len(self.categories) > 8 else ''})"
        return what + (" or null" if self.nullable else "")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "type": self.type, "nullable": self.nullable}
        if self.categories is not None:
            doc["categories"] = list(self.categories)
        return doc

    def array(self, values: Sequence[Any], where: Any) -> np.ndarray:
        """The column's values as the array the pipeline gets; ``where(i)`` names row ``i``."""
        if self.type == "category":
            return self._strings(values, where)
        arr = np.array(values)
        kind = arr.dtype.kind
        if self.type in ("number", "integer") and kind in "fiu" and arr.ndim == 1:
            if kind != "f" or self.type == "number" or _integral(arr):
                _refuse_booleans(values, arr, self, where)
                return arr.astype(np.float64) if self.type == "number" and kind != "f" else arr
        if self.type == "boolean" and kind == "b" and arr.ndim == 1:
            return arr
        if kind == "O" and self.nullable and self.type in ("number", "integer"):
            with_gaps = self._numbers_with_gaps(values)
            if with_gaps is not None:
                return with_gaps
        return self._checked_slowly(values, where)

    def _strings(self, values: Sequence[Any], where: Any) -> np.ndarray:
        """A category's strings, ``null`` as NaN: in one pass when every cell fits."""
        kinds = set(map(type, values))
        if kinds == {str}:
            return np.array(values, dtype=object)
        if self.nullable and kinds <= {str, NoneType}:
            return np.array([np.nan if value is None else value for value in values], dtype=object)
        return self._checked_slowly(values, where)

    def _numbers_with_gaps(self, values: Sequence[Any]) -> np.ndarray | None:
        """Numbers and ``null`` as float64 with NaN in one pass; None: check cell by cell."""
        if not set(map(type, values)) <= {int, float, NoneType}:
            return None
        filled = np.array([np.nan if value is None else value for value in values])
        if filled.dtype != np.float64 or filled.ndim != 1:
            return None
        gaps = np.isnan(filled)
        present = filled[~gaps]
        if np.count_nonzero(gaps) != values.count(None) or not np.isfinite(present).all():
            return None
        if self.type == "integer" and not (present == np.floor(present)).all():
            return None
        return filled

    def _checked_slowly(self, values: Sequence[Any], where: Any) -> np.ndarray:
        """Cell by cell: missing values, mixed types, and the first bad cell's message."""
        out: list[Any] = []
        missing = False
        for i, value in enumerate(values):
            if value is None:
                if not self.nullable:
                    raise SchemaError(f"{where(i)}: column {self.name!r} must be {self.expected()}, "
                                      "got null (this model does not accept missing values there)")
                missing = True
                out.append(np.nan)
                continue
            if not self._accepts(value):
                raise SchemaError(f"{where(i)}: column {self.name!r} must be {self.expected()}, "
                                  f"got {describe(value)}")
            out.append(value)
        if self.type in ("number", "integer"):
            return np.array(out, dtype=np.float64 if missing or self.type == "number" else np.int64)
        if self.type == "boolean" and not missing:
            return np.array(out, dtype=bool)
        return np.array(out, dtype=object)

    def _accepts(self, value: Any) -> bool:
        if self.type == "category":
            return isinstance(value, str)
        if self.type == "boolean":
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not np.isfinite(value):
            return False
        return self.type == "number" or float(value).is_integer()


def _integral(arr: np.ndarray) -> bool:
    return bool(np.isfinite(arr).all() and (arr == np.floor(arr)).all())


def _refuse_booleans(values: Sequence[Any], arr: np.ndarray, column: Column, where: Any) -> None:
    """numpy turns a JSON true/false among numbers into 1 or 0: refuse it like a lone boolean."""
    if len(values) > 8:
        zero_or_one = (arr == 0) | (arr == 1)
        if not zero_or_one.any():
            return
        suspects: Any = np.flatnonzero(zero_or_one)
    else:
        suspects = range(len(values))
    for i in suspects:
        if type(values[i]) is bool:
            raise SchemaError(f"{where(i)}: column {column.name!r} must be {column.expected()}, "
                              "got a boolean")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise SchemaError(f"{where(i)}: column {column.name!r} is not a finite number")


@dataclass(frozen=True)
class InputSchema:
    """The columns a model takes, in order; ``frame``: the pipeline was fitted on a DataFrame."""

    columns: tuple[Column, ...]
    frame: bool

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def all_numbers(self) -> bool:
        """Every column a number that must be present: a plain float matrix carries the input."""
        return all(c.type == "number" and not c.nullable for c in self.columns)

    @cached_property
    def labels(self) -> pd.Index:
        """The frame's column labels, built once: every frame of this schema shares them."""
        return pd.Index(list(self.names))

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> InputSchema:
        columns = []
        for col in doc["columns"]:
            if col.get("type") not in TYPES:
                raise ValueError(f"column {col.get('name')!r} has unknown type {col.get('type')!r}")
            cats = col.get("categories")
            columns.append(Column(str(col["name"]), col["type"], bool(col.get("nullable", False)),
                                  tuple(cats) if cats is not None else None))
        return cls(tuple(columns), bool(doc.get("frame", False)))

    @classmethod
    def numbers(cls, names: Sequence[str]) -> InputSchema:
        """The schema of older artifacts: every feature a number, fitted on a matrix."""
        return cls(tuple(Column(str(n), "number") for n in names), frame=False)

    def frame_of(self, columns: Mapping[str, np.ndarray]) -> Any:
        """What the pipeline's predict gets: a DataFrame with the fitted names, or a matrix."""
        if self.all_numbers and not self.frame:
            return np.column_stack([columns[n] for n in self.names]).astype(np.float64, copy=False)
        frame = frame_of_arrays([columns[name] for name in self.names], self.labels)
        return frame if self.frame else frame.to_numpy()

    def from_matrix(self, matrix: np.ndarray) -> Any:
        """A validated float matrix (every column a number) as the pipeline's input."""
        if not self.frame:
            return matrix
        return pd.DataFrame(matrix, columns=self.labels, copy=False)

    def from_table(self, table: pd.DataFrame, first_row: int = 0,
                   label: str = "row") -> Any:
        """A parsed table (a CSV read by pandas) checked against the schema, as the pipeline's input.

        Each row is named ``label`` and its index counted from ``first_row`` in messages.
        """
        missing = [n for n in self.names if n not in table.columns]
        if missing:
            raise SchemaError(f"missing column(s) {missing}; the model takes {list(self.names)}")
        columns = {}
        for column in self.columns:
            values = [None if _is_missing(v) else plain_value(v) for v in table[column.name].tolist()]
            columns[column.name] = column.array(values, lambda i: f"{label} {first_row + i}")
        return self.frame_of(columns)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def plain_value(value: Any) -> Any:
    """numpy scalars as the Python values JSON would have given."""
    return value.item() if isinstance(value, np.generic) else value


def infer_column(name: str, series: pd.Series) -> Column:
    """A column's type from the evaluation data as pandas reads it from CSV."""
    present = series.dropna()
    nullable = len(present) < len(series)
    kind = series.dtype.kind
    if kind == "b" or (len(present) and all(isinstance(v, bool | np.bool_) for v in present)):
        return Column(name, "boolean", nullable)
    if kind in "iu":
        return Column(name, "integer", nullable)
    if kind == "f":
        return Column(name, "number", nullable)
    seen = sorted({str(v) for v in present})
    return Column(name, "category", nullable, tuple(seen) if len(seen) <= MAX_CATEGORIES else None)
