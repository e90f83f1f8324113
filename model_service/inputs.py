"""Turning a ``/predict`` body into a checked float matrix, with errors that say what is wrong.

    >>> to_matrix({"instances": [[1.0, 2.0]]}, ("a", "b"), max_rows=10).shape
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import PayloadTooLarge, Unprocessable

_NUMBER_KINDS = "fiu"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _first_bad_cell(rows: list[Any], width: int) -> str:
    """Slow path, only on error: find the first cell that is not a plain number."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"instances[{i}] must be an array of {width} numbers, got {_describe(row)}"
        if len(row) != width:
            return f"instances[{i}] has {len(row)} values; the model expects {width} features"
        for j, cell in enumerate(row):
            if isinstance(cell, bool) or not isinstance(cell, int | float):
                return f"instances[{i}][{j}] must be a number, got {_describe(cell)}"
    return "instances must be an array of rows of numbers"


def _records_to_rows(records: list[Any], features: Sequence[str]) -> list[list[Any]]:
    wanted = set(features)
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise Unprocessable(
                f"instances[{i}] is {_describe(rec)}; use either all arrays or all objects"
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


def _refuse_booleans(rows: list[Any], matrix: np.ndarray) -> None:
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
            raise Unprocessable(_first_bad_cell(rows, matrix.shape[1]))


def to_matrix(doc: dict[str, Any], features: Sequence[str], max_rows: int) -> np.ndarray:
    """Validate ``doc["instances"]`` and return an (n, len(features)) float64 matrix."""
    if "instances" not in doc:
        raise Unprocessable('body must have an "instances" field: a list of rows', code="missing_field")
    unknown = sorted(set(doc) - {"instances"})
    if unknown:
        raise Unprocessable(f"unknown field(s) {unknown}; only \"instances\" is accepted")
    rows = doc["instances"]
    if not isinstance(rows, list):
        raise Unprocessable(f'"instances" must be a list of rows, got {_describe(rows)}')
    if not rows:
        raise Unprocessable('"instances" is empty; send at least one row')
    if len(rows) > max_rows:
        raise PayloadTooLarge(
            f"{len(rows)} rows in one request; the limit is {max_rows}: split the batch",
            code="too_many_rows",
        )
    width = len(features)
    if isinstance(rows[0], dict):
        rows = _records_to_rows(rows, features)
    try:
        matrix = np.array(rows)
    except (ValueError, TypeError):
        raise Unprocessable(_first_bad_cell(rows, width)) from None
    if matrix.ndim != 2 or matrix.dtype.kind not in _NUMBER_KINDS:
        raise Unprocessable(_first_bad_cell(rows, width))
    if matrix.shape[1] != width:
        raise Unprocessable(
            f"rows have {matrix.shape[1]} values; the model expects {width} features"
        )
    _refuse_booleans(rows, matrix)
    if matrix.dtype.kind != "f":
        matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix).all():
        i, j = np.argwhere(~np.isfinite(matrix))[0]
        raise Unprocessable(f"instances[{i}][{j}] is not a finite number")
    return matrix
