"""The pipeline's DataFrame from checked column arrays, without the constructor's per-call work.

``pd.DataFrame({name: array})`` builds a new column index and infers every column's dtype on each
call; on a one-row request that was most of what the service added to the prediction. Here the
column labels are built once per schema (:attr:`InputSchema.labels`), each array is given the
dtype the constructor would infer for it, and pandas' low-level
``pandas.api.internals.create_dataframe_from_blocks`` (checked against pandas 3.1.1) takes the
arrays as they are, one block per column as the constructor lays them out with ``copy=False``.
tests/model_service/test_frames.py compares every kind of column built here with the
constructor's frame, so a pandas that builds or infers otherwise fails there.

    >>> arrays = [np.array([1.5]), np.array(["basic"], dtype=object)]
    >>> frame_of_arrays(arrays, pd.Index(["charges", "plan"])).dtypes.tolist()
    [dtype('float64'), <StringDtype(storage='python', na_value=nan)>]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from pandas.api.internals import create_dataframe_from_blocks

# What the constructor infers for an object array of strings (with NaN for missing values).
_STRINGS = pd.StringDtype(na_value=np.nan)
_STRING_ARRAY = _STRINGS.construct_array_type()


def frame_of_arrays(arrays: Sequence[np.ndarray], labels: pd.Index) -> pd.DataFrame:
    """The frame ``pd.DataFrame(dict(zip(labels, arrays)), copy=False)`` builds, built faster.

    ``arrays``: 1-D numpy arrays of one length, as :meth:`Column.array` returns them: numbers,
    booleans, or objects that are strings or NaN (any other object array takes the constructor).
    """
    if not arrays:
        return _constructed(arrays, labels)
    blocks = []
    for arr, placement in zip(arrays, _placements(len(arrays)), strict=True):
        if arr.dtype.kind != "O":
            blocks.append((arr.reshape(1, -1), placement))
            continue
        strings = _any_string(arr)
        if strings is None:
            return _constructed(arrays, labels)
        if strings:
            blocks.append((_STRING_ARRAY._from_sequence(arr, dtype=_STRINGS), placement))
        else:  # NaN alone: the constructor keeps the objects
            blocks.append((arr.reshape(1, -1), placement))
    return create_dataframe_from_blocks(blocks, _rows(len(arrays[0])), labels)


def _constructed(arrays: Sequence[np.ndarray], labels: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(dict(zip(labels, arrays, strict=True)), copy=False)


@lru_cache(maxsize=64)
def _placements(width: int) -> tuple[np.ndarray, ...]:
    return tuple(np.array([i], dtype=np.intp) for i in range(width))


@lru_cache(maxsize=256)
def _rows(count: int) -> pd.RangeIndex:
    """The row labels 0..count-1 (an index is immutable: frames of one length share it)."""
    return pd.RangeIndex(count)


def _any_string(arr: np.ndarray) -> bool | None:
    """Whether a string is among the strings and NaNs of ``arr``; None for anything else."""
    kinds = set(map(type, arr))
    if kinds == {str}:
        return True
    if not kinds <= {str, float}:
        return None
    missing = pd.isna(arr)
    if set(map(type, arr[missing])) <= {float} and set(map(type, arr[~missing])) <= {str}:
        return not missing.all()
    return None
