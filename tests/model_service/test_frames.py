"""The pipeline's input built the fast way is the input built the plain way.

``frame_of_arrays`` must give the frame pandas' constructor gives (dtypes, values and labels)
for every kind of column array the schema produces; a pandas that infers or builds
otherwise fails here. Each column type's one-pass checks must give what the cell-by-cell check
gives on every row it accepts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from model_service.frames import frame_of_arrays
from model_service.schema import Column, InputSchema

OBJECTS: dict[str, list[Any]] = {
    "strings": ["basic", "plus", ""],
    "strings and missing": ["basic", np.nan, "pro"],
    "missing only": [np.nan, np.nan, np.nan],
    "booleans and missing": [True, np.nan, False],
    "numbers as objects": [1, 2.5, np.nan],
}
ARRAYS: dict[str, np.ndarray] = {
    "integers": np.array([3, -1, 7]),
    "numbers": np.array([1.5, np.nan, 2.0]),
    "booleans": np.array([True, False, True]),
    "large integers": np.array([2**63, 1, 2], dtype=np.uint64),
    **{name: np.array(values, dtype=object) for name, values in OBJECTS.items()},
}


def _assert_same_frame(fast: pd.DataFrame, plain: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        fast, plain, check_exact=True, check_column_type=True, check_index_type=True
    )
    assert fast.columns.dtype == plain.columns.dtype


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("kind", sorted(ARRAYS))
def test_each_kind_of_column_makes_the_constructors_frame(kind: str, rows: int) -> None:
    arrays = [np.array([4, 5, 6])[:rows], ARRAYS[kind][:rows]]
    labels = pd.Index(["first", kind])

    fast = frame_of_arrays(arrays, labels)

    _assert_same_frame(fast, pd.DataFrame(dict(zip(labels, arrays, strict=True)), copy=False))


def test_a_schemas_frames_share_its_labels_and_match_the_constructor() -> None:
    schema = InputSchema(
        (
            Column("age", "integer", True),
            Column("plan", "category", True),
            Column("autopay", "boolean"),
        ),
        frame=True,
    )
    columns = {
        "age": np.array([30, 41]),
        "plan": np.array(["basic", np.nan], dtype=object),
        "autopay": np.array([True, False]),
    }

    first, second = schema.frame_of(columns), schema.frame_of(columns)

    assert first.columns is second.columns is schema.labels
    _assert_same_frame(first, pd.DataFrame(columns, copy=False))
    as_matrix = InputSchema(schema.columns, frame=False).frame_of(columns)
    assert as_matrix.tolist() == pd.DataFrame(columns, copy=False).to_numpy().tolist()


ACCEPTED: list[tuple[Column, list[Any]]] = [
    (Column("n", "number"), [1, 2.5, -3]),
    (Column("n", "number", True), [1, None, 2.5, None]),
    (Column("n", "number", True), [None]),
    (Column("n", "number", True), [2**63, None, 0]),
    (Column("i", "integer"), [1, 2, 3]),
    (Column("i", "integer", True), [1, None, 4.0]),
    (Column("c", "category"), ["a", "b", ""]),
    (Column("c", "category", True), ["a", None]),
    (Column("c", "category", True), [None, None]),
    (Column("b", "boolean"), [True, False]),
    (Column("b", "boolean", True), [True, None]),
]


@pytest.mark.parametrize(
    "column, values",
    ACCEPTED,
    ids=[f"{c.type}{'-nullable' if c.nullable else ''}-{v}" for c, v in ACCEPTED],
)
def test_one_pass_checks_give_what_the_cell_by_cell_check_gives(
    column: Column, values: list[Any]
) -> None:
    fast = column.array(values, str)
    plain = column._checked_slowly(values, str)

    assert fast.dtype == plain.dtype
    assert [_cell(v) for v in fast.tolist()] == [_cell(v) for v in plain.tolist()]


def _cell(value: Any) -> tuple[type, Any]:
    """A cell's type and value, NaN equal to NaN."""
    return type(value), "NaN" if value != value else value
