"""Input drift as a number: the population stability index (PSI) of live shares against reference shares.

For bins ``i`` with reference shares ``e_i`` (the evaluation data's, stored when the model was
packaged) and live shares ``a_i`` (the rows in the service's window)::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

each share floored at ``EPSILON`` first, so an empty bin adds a large but finite term. PSI is the
symmetrised Kullback-Leibler divergence of the two binned distributions: 0 when they match, never
negative. The usual reading, from credit scoring: below 0.1 stable, 0.1 to 0.25 a moderate shift
worth a look, above 0.25 a major shift. Under no drift PSI is not 0 but noise of about
``(bins - 1) / rows`` (it is close to a chi-square statistic divided by the rows), so a window
needs a few hundred rows before its PSI means anything.

    >>> round(psi([0.5, 0.5], [0.25, 0.75]), 4)
    0.2747
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPSILON = 1e-4
STABLE, MAJOR = 0.1, 0.25  # below STABLE: stable; above MAJOR: a major shift
DECILES = tuple(i / 10 for i in range(1, 10))


def psi(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray,
        epsilon: float = EPSILON) -> float:
    """PSI of ``live`` shares (or counts: they are normalised) against ``reference`` shares."""
    expected = np.maximum(np.asarray(reference, dtype=np.float64), epsilon)
    actual = np.asarray(live, dtype=np.float64)
    total = actual.sum()
    if total <= 0:
        raise ValueError("no live rows: PSI needs at least one")
    actual = np.maximum(actual / total, epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_by_block(reference: np.ndarray, live_counts: np.ndarray, starts: np.ndarray,
                 rows: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """PSI of every column at once: bins laid end to end, column ``k``'s from ``starts[k]``.

    ``rows[k]`` is the number of live rows of column ``k`` (its counts' sum); a column without
    rows gets NaN.
    """
    column_of_bin = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(reference))))
    with np.errstate(divide="ignore", invalid="ignore"):
        actual = np.maximum(live_counts / rows[column_of_bin], epsilon)
    expected = np.maximum(reference, epsilon)
    terms = (actual - expected) * np.log(actual / expected)
    out = np.add.reduceat(terms, starts) if len(starts) else np.zeros(0)
    out[rows == 0] = np.nan
    return out


def reading(value: float | None) -> str:
    """``stable``, ``moderate`` or ``major`` (``unknown`` without a value)."""
    if value is None or value != value:
        return "unknown"
    if value < STABLE:
        return "stable"
    return "moderate" if value <= MAJOR else "major"


def quantile_edges(values: np.ndarray, quantiles: Sequence[float] = DECILES,
                   integers: bool = False) -> tuple[float, ...]:
    """Inner bin edges at ``quantiles`` of ``values`` (finite ones), repeated edges merged.

    With ``integers`` the edges are values seen (no interpolation), so no bin falls between
    two consecutive integers and stays empty.

    With edges ``e_1 < ... < e_k`` the bins are ``(-inf, e_1), [e_1, e_2), ..., [e_k, inf)``: the
    outer bins are open-ended, so every live value has a bin.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return ()
    method = "lower" if integers else "linear"
    return tuple(float(e) for e in np.unique(np.quantile(finite, quantiles, method=method)))
