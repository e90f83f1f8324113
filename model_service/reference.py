"""Reference distributions of a model's inputs, and the binning that live inputs share with them.

When a model is packaged, every input column of the evaluation data is binned and the share of
rows in each bin stored in ``metadata.json`` (``input_reference``):

- numbers and integers: edges at the evaluation data's deciles (repeated edges merged, so an
  integer column with few values has fewer bins), open-ended outer bins ``< e_1`` and ``>= e_k``;
- booleans: ``false`` and ``true``;
- categories: the categories seen (the ``MAX_CATEGORIES`` most frequent), plus ``(other)`` for
  any value not among them;
- and ``(missing)`` for a column that accepts missing values.

The service bins every ``/predict`` request with the same :meth:`Reference.counts`, vectorised
over the request's rows (a few numpy calls per request, none per row), so live shares and
reference shares always mean the same bins.

    >>> reference = build_reference(schema, schema.from_table(evaluation_rows))  # doctest: +SKIP
    >>> reference.counts(model_input)                                              # doctest: +SKIP
    array([0, 1, 0, ...])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from metrics.drift import quantile_edges
from model_service.schema import Column, InputSchema

MAX_CATEGORIES = 50
OTHER, MISSING = "(other)", "(missing)"
NUMERIC = ("number", "integer", "boolean")
_BOOLEAN_EDGES = (0.5,)


@dataclass(frozen=True)
class ColumnReference:
    """One column's bins and the evaluation data's share of rows in each."""

    name: str
    type: str  # the schema's column type
    edges: tuple[float, ...] = ()  # numbers, integers, booleans
    categories: tuple[str, ...] = ()  # categories
    missing: bool = False  # a bin for missing values (the column accepts them)
    shares: tuple[float, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC

    @property
    def size(self) -> int:
        values = len(self.edges) + 1 if self.numeric else len(self.categories) + 1
        return values + int(self.missing)

    @cached_property
    def labels(self) -> tuple[str, ...]:
        """Bin names, in bin order (also the ``bin`` label of the live counters)."""
        if self.type == "boolean":
            inner: list[str] = ["false", "true"]
        elif self.numeric:
            e = [f"{x:.6g}" for x in self.edges]
            inner = ([f"< {e[0]}"] + [f"[{a}, {b})" for a, b in zip(e, e[1:], strict=False)]
                     + [f">= {e[-1]}"]) if e else ["any"]
        else:
            inner = [*self.categories, OTHER]
        return tuple(inner + [MISSING] * self.missing)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "type": self.type, "missing": self.missing}
        if self.numeric:
            doc["edges"] = list(self.edges)
        else:
            doc["categories"] = list(self.categories)
        doc["shares"] = list(self.shares)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ColumnReference:
        column = cls(str(doc["name"]), str(doc["type"]),
                     tuple(float(e) for e in doc.get("edges", ())),
                     tuple(str(c) for c in doc.get("categories", ())),
                     bool(doc.get("missing", False)),
                     tuple(float(s) for s in doc["shares"]))
        if list(column.edges) != sorted(set(column.edges)):
            raise ValueError(f"column {column.name!r}: edges must increase")
        if len(column.shares) != column.size:
            raise ValueError(f"column {column.name!r}: {len(column.shares)} shares for "
                             f"{column.size} bins")
        return column


class Reference:
    """Every input column's reference bins, compiled against the schema for fast binning."""

    def __init__(self, columns: tuple[ColumnReference, ...], schema: InputSchema,
                 rows: int) -> None:
        self.columns = columns
        self.rows = rows
        position = {name: j for j, name in enumerate(schema.names)}
        missing = [c.name for c in columns if c.name not in position]
        if missing:
            raise ValueError(f"reference columns {missing} are not in the input schema")
        sizes = np.array([c.size for c in columns], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.bins = int(sizes.sum())
        self.shares = np.array([s for c in columns for s in c.shares], dtype=np.float64)
        numeric = [k for k, c in enumerate(columns) if c.numeric]
        self._numeric = np.array(numeric, dtype=np.int64)
        self._numeric_positions = [position[columns[k].name] for k in numeric]
        self._numeric_names = [columns[k].name for k in numeric]
        self._whole_matrix = self._numeric_positions == list(range(len(schema.names)))
        width = max((len(columns[k].edges) for k in numeric), default=0)
        # edges padded with +inf: a finite value is never >= a padding edge
        self._edges = np.full((len(numeric), max(width, 1)), np.inf)
        for row, k in enumerate(numeric):
            edges = columns[k].edges or (np.inf,)
            self._edges[row, :len(edges)] = edges
        self._numeric_missing = np.array(
            [columns[k].size - 1 if columns[k].missing else -1 for k in numeric], dtype=np.int64)
        self._any_numeric_missing = bool((self._numeric_missing >= 0).any())
        self._categorical = [(self.starts[k], position[c.name], c.name,
                              pd.Index(list(c.categories), dtype=object), len(c.categories),
                              c.missing)
                             for k, c in enumerate(columns) if not c.numeric]

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], schema: InputSchema) -> Reference:
        """The stored reference (raises ValueError when it does not fit the schema)."""
        columns = tuple(ColumnReference.from_json(c) for c in doc["columns"])
        return cls(columns, schema, int(doc.get("rows", 0)))

    def counts(self, inputs: Any) -> np.ndarray:
        """Rows per bin, every column's bins end to end (``starts`` says where each begins)."""
        if isinstance(inputs, pd.DataFrame):
            inputs = self.columns_of([inputs])
        parts = []
        if len(self._numeric):
            values = self._numbers(inputs)
            bins = (values[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
            if self._any_numeric_missing:
                gaps = np.isnan(values)
                if gaps.any():
                    bins = np.where(gaps, self._numeric_missing[None, :], bins)
            parts.append((bins + self.starts[self._numeric][None, :]).ravel())
        for start, j, name, index, other, missing in self._categorical:
            values = self._column(inputs, j, name)
            codes = index.get_indexer(values)
            codes[codes < 0] = other
            if missing:
                codes[pd.isna(values)] = other + 1
            parts.append(codes + start)
        if not parts:
            return np.zeros(self.bins, dtype=np.int64)
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return np.bincount(flat, minlength=self.bins)

    def columns_of(self, frames: list[pd.DataFrame]) -> Columns:
        """The binned columns of many frames (requests) joined end to end, as ``counts`` reads a
        frame: binning them at once costs a few numpy calls, not a few per frame."""
        numbers = {name: np.concatenate([f[name].to_numpy(dtype=np.float64, na_value=np.nan)
                                         for f in frames]) for name in self._numeric_names}
        others = {name: np.concatenate([f[name].to_numpy() for f in frames])
                  for _, _, name, *_ in self._categorical}
        return Columns({**numbers, **others}, sum(len(f) for f in frames))

    def _numbers(self, inputs: Any) -> np.ndarray:
        if isinstance(inputs, np.ndarray):
            matrix = inputs if self._whole_matrix else inputs[:, self._numeric_positions]
            return matrix if matrix.dtype == np.float64 else matrix.astype(np.float64)
        return np.column_stack([inputs.arrays[name] for name in self._numeric_names])

    @staticmethod
    def _column(inputs: Any, j: int, name: str) -> np.ndarray:
        if isinstance(inputs, np.ndarray):
            return inputs[:, j]
        if isinstance(inputs, Columns):
            return inputs.arrays[name]
        return inputs[name].to_numpy()  # a DataFrame of evaluation rows (build_reference)


@dataclass(frozen=True)
class Columns:
    """Binned columns by name (numbers as float64 with NaN), ``rows`` long: what
    :meth:`Reference.columns_of` joins; sliced by rows like an array."""

    arrays: Mapping[str, np.ndarray]
    rows: int

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows: slice) -> Columns:
        arrays = {name: values[rows] for name, values in self.arrays.items()}
        return Columns(arrays, len(range(*rows.indices(self.rows))))


def _reference_column(column: Column, values: np.ndarray) -> ColumnReference:
    """A column's bins from its evaluation values (shares are filled in afterwards)."""
    if column.type == "boolean":
        return ColumnReference(column.name, column.type, _BOOLEAN_EDGES, missing=column.nullable)
    if column.type in NUMERIC:
        numbers = np.asarray(values, dtype=np.float64)
        edges = quantile_edges(numbers, integers=column.type == "integer")
        return ColumnReference(column.name, column.type, edges, missing=column.nullable)
    present = pd.Series(values, dtype=object).dropna()
    frequent = present.astype(str).value_counts(sort=True).index[:MAX_CATEGORIES]
    return ColumnReference(column.name, column.type, categories=tuple(sorted(frequent)),
                           missing=column.nullable)


def build_reference(schema: InputSchema, inputs: Any) -> Reference:
    """Reference bins and shares of ``inputs``, the evaluation rows as the pipeline gets them."""
    rows = len(inputs)
    if rows == 0:
        raise ValueError("no evaluation rows to take reference distributions from")
    shaped = [_reference_column(c, Reference._column(inputs, j, c.name))
              for j, c in enumerate(schema.columns)]
    counts = Reference(tuple(shaped), schema, rows).counts(inputs)
    columns = []
    for column in shaped:
        start = sum(c.size for c in columns)
        shares = counts[start:start + column.size] / rows
        columns.append(ColumnReference(column.name, column.type, column.edges,
                                       column.categories, column.missing,
                                       tuple(round(float(s), 6) for s in shares)))
    return Reference(tuple(columns), schema, rows)
