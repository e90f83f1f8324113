"""Turning a ``/predict`` body into the model's input, with errors that say what is wrong.

Rows come as arrays (values in the schema's column order) or as records keyed by column name.
A model whose columns are all numbers gets a checked float matrix (:func:`to_matrix`, the fast
path); any other schema gets its columns converted one by one (:func:`to_model_input`).

    >>> to_matrix({"instances": [[1.0, 2.0]]}, ("a", "b"), max_rows=10).shape
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from common.errors import PayloadTooLarge, Unprocessable
from model_service.schema import InputSchema, SchemaError, describe

_NUMBER_KINDS = "fiu"


def _first_bad_cell(rows: list[Any], features: Sequence[str]) -> str:
    """Slow path, only on error: find the first cell that is not a plain number."""
    width = len(features)
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"instances[{i}] must be an array of {width} numbers, got {describe(row)}"
        if len(row) != width:
            return f"instances[{i}] has {len(row)} values; the model expects {width} features"
        for j, cell in enumerate(row):
            if isinstance(cell, bool) or not isinstance(cell, int | float):
                return (f"instances[{i}][{j}]: column {features[j]!r} must be a number, "
                        f"got {describe(cell)}")
    return "instances must be an array of rows of numbers"


def _records_to_rows(records: list[Any], features: Sequence[str]) -> list[list[Any]]:
    wanted = set(features)
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise Unprocessable(
                f"instances[{i}] is {describe(rec)}; use either all arrays or all objects"
            )
        if rec.keys() != wanted:
            unknown = sorted(set(rec) - wanted)
            missing = [f for f in features if f not in rec]
            parts = []
            if unknown:
                parts.append(f"unknown feature(s) {unknown}")
            if missing:
                parts.append(f"missing feature(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            raise Unprocessable(
                f"instances[{i}]: {'; '.join(parts)}; GET /version lists the feature names"
            )
        rows.append([rec[f] for f in features])
    return rows


def _records_to_cells(records: list[Any], features: Sequence[str]) -> list[list[Any]]:
    """Each feature's values down the records; in one pass per feature when every record fits."""
    if set(map(type, records)) == {dict} and set(map(len, records)) == {len(features)}:
        try:
            return [list(map(itemgetter(f), records)) for f in features]
        except KeyError:
            pass  # a record with another name in place of a feature: say which one below
    return [list(column) for column in zip(*_records_to_rows(records, features), strict=True)]


def _refuse_booleans(rows: list[Any], matrix: np.ndarray, features: Sequence[str]) -> None:
    """numpy turns a JSON true/false among numbers into 1 or 0; refuse it like a lone boolean."""
    if len(rows) <= 8:  # checking a few rows directly is cheaper than the vectorised filter
        suspects: Any = range(len(rows))
    else:
        zero_or_one = (matrix == 0) | (matrix == 1)
        if not zero_or_one.any():
            return
        suspects = np.flatnonzero(zero_or_one.any(axis=1))
    for i in suspects:
        if any(type(cell) is bool for cell in rows[i]):
            raise Unprocessable(_first_bad_cell(rows, features))


def _instances(doc: dict[str, Any], max_rows: int) -> list[Any]:
    """The body's ``instances``: a non-empty list of at most ``max_rows`` rows."""
    if "instances" not in doc:
        raise Unprocessable('body must have an "instances" field: a list of rows', code="missing_field")
    unknown = sorted(set(doc) - {"instances"})
    if unknown:
        raise Unprocessable(f"unknown field(s) {unknown}; only \"instances\" is accepted")
    rows = doc["instances"]
    if not isinstance(rows, list):
        raise Unprocessable(f'"instances" must be a list of rows, got {describe(rows)}')
    if not rows:
        raise Unprocessable('"instances" is empty; send at least one row')
    if len(rows) > max_rows:
        raise PayloadTooLarge(
            f"{len(rows)} rows in one request; the limit is {max_rows}: split the batch",
            code="too_many_rows",
        )
    return rows


def to_matrix(doc: dict[str, Any], features: Sequence[str], max_rows: int) -> np.ndarray:
    """Validate ``doc["instances"]`` and return an (n, len(features)) float64 matrix."""
    rows = _instances(doc, max_rows)
    width = len(features)
    if isinstance(rows[0], dict):
        rows = _records_to_rows(rows, features)
    try:
        matrix = np.array(rows)
    except (ValueError, TypeError):
        raise Unprocessable(_first_bad_cell(rows, features)) from None
    if matrix.ndim != 2 or matrix.dtype.kind not in _NUMBER_KINDS:
        raise Unprocessable(_first_bad_cell(rows, features))
    if matrix.shape[1] != width:
        raise Unprocessable(
            f"rows have {matrix.shape[1]} values; the model expects {width} features"
        )
    _refuse_booleans(rows, matrix, features)
    if matrix.dtype.kind != "f":
        matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix).all():
        i, j = np.argwhere(~np.isfinite(matrix))[0]
        raise Unprocessable(f"instances[{i}][{j}]: column {features[j]!r} is not a finite number")
    return matrix


def to_model_input(doc: dict[str, Any], schema: InputSchema, max_rows: int) -> Any:
    """Validate ``doc["instances"]`` against ``schema``; what the pipeline's predict takes."""
    if schema.all_numbers:
        return schema.from_matrix(to_matrix(doc, schema.names, max_rows))
    rows = _instances(doc, max_rows)
    names = schema.names
    cells: Sequence[Sequence[Any]]
    if isinstance(rows[0], dict):
        cells = _records_to_cells(rows, names)
    else:
        width = len(names)
        for i, row in enumerate(rows):
            if type(row) is not list or len(row) != width:
                if isinstance(row, dict):
                    raise Unprocessable(f"instances[{i}] is an object; use either all arrays "
                                        "or all objects")
                got = f"{len(row)} values" if isinstance(row, list) else describe(row)
                raise Unprocessable(f"instances[{i}] must be an array of {width} values "
                                    f"({', '.join(names[:6])}{', ...' if width > 6 else ''}), "
                                    f"got {got}; GET /version lists the columns")
        cells = list(zip(*rows, strict=True))
    try:
        columns = {col.name: col.array(cells[j], _row) for j, col in enumerate(schema.columns)}
    except SchemaError as exc:
        raise Unprocessable(str(exc)) from None
    return schema.frame_of(columns)


def _row(i: int) -> str:
    return f"instances[{i}]"
