"""Reading a batch CSV a chunk at a time into the model's input, bad rows set aside.

A model whose columns are all numbers gets each chunk parsed by pandas' C reader into a float
matrix; a chunk that fails to parse is re-read line by line so every bad row is reported with its
line number. Any other schema (integers, booleans, categories, missing values) has each column
converted by its type, a cell that does not fit reported with its row. Scoring and writing are
:mod:`model_service.batch`'s.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from model_service.artifacts import LoadedModel
from model_service.schema import Column, InputSchema


class BatchError(Exception):
    """The batch cannot run at all (missing file, unusable header, unloadable model)."""


@dataclass(frozen=True)
class Layout:
    header: list[str]
    feature_idx: list[int]
    id_idx: int | None

    @property
    def unused_tail(self) -> bool:
        """The header ends with a column the model does not use."""
        return len(self.header) - 1 not in self.feature_idx


def layout_of(header_line: str, model: LoadedModel, id_column: str | None) -> Layout:
    if "\r" in header_line:
        raise BatchError(
            "the first line holds a carriage return (\\r) inside it: lines that end with a "
            "lone \\r (classic Mac OS) are not supported; convert the file to \\n or \\r\\n line ends"
        )
    try:
        header = next(csv.reader([header_line]))
    except csv.Error as exc:
        raise BatchError(f"the first line cannot be read as a CSV header: {exc}") from None
    header = [h.strip() for h in header]
    missing = [f for f in model.feature_names if f not in header]
    if missing:
        raise BatchError(
            f"the header lacks {len(missing)} feature column(s): {', '.join(map(repr, missing))}; "
            f"the first line must name every column {model.version} takes, in any order (other "
            f"columns are allowed): {', '.join(model.feature_names)}; `python -m model_service "
            f"show {model.version}` and GET /version list them with their types"
        )
    id_idx = None
    if id_column:
        if id_column not in header:
            raise BatchError(f"--id-column {id_column!r} is not in the header")
        id_idx = header.index(id_column)
    elif "id" in header:
        id_idx = header.index("id")
    return Layout(header, [header.index(f) for f in model.feature_names], id_idx)


@dataclass
class Chunk:
    """One chunk of input lines (bytes, line endings kept) and what parsing and scoring made."""

    lines: list[bytes]
    first_line: int  # the file's line number of lines[0]
    text: bytes  # the lines joined
    good: list[int] | None = None  # positions in ``lines`` of the rows in ``inputs``; None: all
    inputs: Any = None  # what the pipeline takes: a float matrix or a DataFrame
    bad: list[tuple[int, str]] = field(default_factory=list)
    predictions: np.ndarray | None = None
    probabilities: np.ndarray | None = None

    def position(self, row: int) -> int:
        """The position in ``lines`` of row ``row`` of ``inputs``."""
        return row if self.good is None else self.good[row]


def chunks(fh: BinaryIO, first_line: int, size: int) -> Iterator[Chunk]:
    number = first_line
    while lines := list(islice(fh, size)):
        yield Chunk(lines, number, b"".join(lines))
        number += len(lines)


def parse_numbers(chunk: Chunk, layout: Layout, schema: InputSchema) -> None:
    """Fill ``chunk.inputs``: pandas' C reader for the whole chunk, line by line if it refuses."""
    try:
        if not _fields_line_up(chunk, layout):
            raise ValueError("a line has more or fewer fields than the header")
        frame = pd.read_csv(
            io.BytesIO(chunk.text),
            header=None,
            names=range(len(layout.header)),
            usecols=layout.feature_idx,
            dtype=np.float64,
            engine="c",
            skip_blank_lines=False,
            na_filter=False,
            quotechar='"',
        )
        matrix = frame[layout.feature_idx].to_numpy(dtype=np.float64)
        if matrix.shape[0] != len(chunk.lines):
            raise ValueError("row count changed")
    except (ValueError, pd.errors.ParserError):
        matrix = _parse_numbers_slowly(chunk, layout)
    else:
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            chunk.bad = [
                (chunk.first_line + int(i), "has a non-finite value (nan or inf)")
                for i in np.flatnonzero(~finite)
            ]
            chunk.good = np.flatnonzero(finite).tolist()
            matrix = matrix[finite]
    chunk.inputs = schema.from_matrix(matrix)


def _fields_line_up(chunk: Chunk, layout: Layout) -> bool:
    """Whether every line of the chunk holds as many fields as the header.

    pandas' reader, given ``usecols``, drops a line's extra fields without a word and fills a
    short line's missing ones; a short line that lacks a used field then fails to parse. So a
    count of separators over the whole chunk is enough, unless unused columns end the header (a
    line with a field too many and one lacking only those would add up): then each line's count.
    """
    raw = np.frombuffer(chunk.text, dtype=np.uint8)
    commas = raw == ord(",")
    if b'"' in chunk.text:  # a comma inside quotes separates nothing
        commas &= (np.cumsum(raw == ord('"')) & 1) == 0
    per_line = len(layout.header) - 1
    if not layout.unused_tail:
        return int(np.count_nonzero(commas)) == per_line * len(chunk.lines)
    at = np.flatnonzero(commas)
    if len(at) != per_line * len(chunk.lines):
        return False
    # as many as lines times per_line, sorted: each line holds its share if its first and last do
    lengths = np.fromiter(map(len, chunk.lines), dtype=np.int64, count=len(chunk.lines))
    ends = np.cumsum(lengths)
    first, last = at[::per_line], at[per_line - 1 :: per_line]
    return bool((first >= ends - lengths).all() and (last < ends).all())


def _parse_numbers_slowly(chunk: Chunk, layout: Layout) -> np.ndarray:
    """Line-by-line parse of a chunk the fast reader refused: good rows kept, bad rows explained."""
    good, rows = [], []
    for pos, fields in _fields(chunk, len(layout.header)):
        number = chunk.first_line + pos
        try:
            row = [float(fields[i]) for i in layout.feature_idx]
        except ValueError:
            col = next(i for i in layout.feature_idx if not _is_float(fields[i]))
            chunk.bad.append(
                (number, f"column {layout.header[col]!r} is not a number: {fields[col]!r}")
            )
            continue
        if not all(math.isfinite(v) for v in row):
            chunk.bad.append((number, "has a non-finite value (nan or inf)"))
            continue
        good.append(pos)
        rows.append(row)
    chunk.good = good
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(layout.feature_idx))


def _fields(chunk: Chunk, width: int) -> Iterator[tuple[int, list[str]]]:
    """Each row's position in the chunk and its ``width`` fields; other lines go to ``chunk.bad``."""
    for pos, raw in enumerate(chunk.lines):
        number = chunk.first_line + pos
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line.strip():
            continue  # a blank line is no row
        try:
            fields = next(csv.reader([line]))
        except csv.Error as exc:  # a field over the csv module's limit, say
            chunk.bad.append((number, f"cannot be read as CSV: {exc}"))
            continue
        if len(fields) != width:
            unclosed = "; it opens a quote it never closes" if line.count('"') % 2 else ""
            chunk.bad.append(
                (number, f"has {len(fields)} fields; the header has {width}{unclosed}")
            )
            continue
        yield pos, fields


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_typed(chunk: Chunk, layout: Layout, schema: InputSchema) -> None:
    """Fill ``chunk.inputs`` column by column, each cell converted by its column's type.

    An empty cell is a missing value; a row with a cell that does not fit its column (or an
    empty one where the model needs a value) is a bad row, reported for its first such cell.
    """
    positions, rows = [], []
    for pos, fields in _fields(chunk, len(layout.header)):
        positions.append(pos)
        rows.append(fields)
    chunk.good = positions
    if not rows:
        return
    cells = list(zip(*rows, strict=True))
    values: dict[str, Any] = {}
    reasons: dict[int, str] = {}
    for column, idx in zip(schema.columns, layout.feature_idx, strict=True):
        values[column.name], refused = _convert(column, pd.Series(cells[idx], dtype=object))
        for i in np.flatnonzero(refused).tolist():
            reasons.setdefault(i, _refusal(column, cells[idx][i]))
    table = pd.DataFrame(values)
    if reasons:
        chunk.bad += [(chunk.first_line + positions[i], text) for i, text in reasons.items()]
        keep = [i for i in range(len(rows)) if i not in reasons]
        chunk.good = [positions[i] for i in keep]
        table = table.iloc[keep]
    chunk.inputs = schema.from_table(table)


# the spellings pandas reads as booleans
_BOOLEANS = {
    **dict.fromkeys(("True", "true", "TRUE"), True),
    **dict.fromkeys(("False", "false", "FALSE"), False),
}


def _convert(column: Column, cells: pd.Series) -> tuple[Any, np.ndarray]:
    """A column's CSV cells as values of its type (empty: missing), and which cells do not fit."""
    text = cells.str.strip()
    empty = (text == "").to_numpy()
    refused = empty & (not column.nullable)
    if column.type == "category":
        return cells.where(~empty, None), refused
    if column.type == "boolean":
        flags = text.map(_BOOLEANS)
        return flags.astype("boolean"), refused | (flags.isna().to_numpy() & ~empty)
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    if column.type == "number":
        return numbers, refused | (~empty & ~np.isfinite(numbers))
    whole = np.isfinite(numbers) & (numbers == np.trunc(numbers)) & (np.abs(numbers) <= 2**53)
    ints = np.where(whole, numbers, 0).astype(np.int64)
    return pd.arrays.IntegerArray(ints, ~whole), refused | (~empty & ~whole)


def _refusal(column: Column, cell: str) -> str:
    """Why ``cell`` does not fit ``column``, in the words of a CSV file."""
    if not cell.strip():
        return f"column {column.name!r} is empty; the model needs {column.expected()} there"
    expected = replace(column, nullable=False).expected() + (" or empty" if column.nullable else "")
    shown = cell if len(cell) <= 40 else cell[:40] + "..."
    return f"column {column.name!r} must be {expected}, got {shown!r}"
