"""PSI and the binning behind it, tested like code: a published example, seeded simulations, tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from metrics.drift import EPSILON, psi, psi_by_block, quantile_edges, reading
from model_service.drift import DriftWindow
from model_service.reference import MISSING, OTHER, build_reference
from model_service.schema import Column, InputSchema

# GeeksforGeeks, "Population Stability Index (PSI)", worked example of income levels, 2020
# (expected) against 2021 (observed):
# https://www.geeksforgeeks.org/data-science/population-stability-index-psi/
# Its terms: (0.35-0.4)ln(0.35/0.4) + (0.25-0.3)ln(0.25/0.3) + (0.4-0.3)ln(0.4/0.3)
#          = 0.006677 + 0.009116 + 0.028768 = 0.044561.
PUBLISHED_EXPECTED = [0.4, 0.3, 0.3]
PUBLISHED_OBSERVED = [0.35, 0.25, 0.4]
PUBLISHED_PSI = 0.044561


def test_psi_matches_the_published_worked_example() -> None:
    assert psi(PUBLISHED_EXPECTED, PUBLISHED_OBSERVED) == pytest.approx(PUBLISHED_PSI, abs=1e-6)
    # counts are normalised: 35, 25 and 40 of 100 rows are the same shares
    assert psi(PUBLISHED_EXPECTED, [35, 25, 40]) == pytest.approx(PUBLISHED_PSI, abs=1e-6)


@pytest.mark.parametrize("reference, live, expected", [
    ([0.5, 0.5], [1, 1], 0.0),
    ([0.5, 0.5], [1, 3], (0.75 - 0.5) * math.log(1.5) + (0.25 - 0.5) * math.log(0.5)),
    # an empty live bin counts as EPSILON, not as a division by zero
    ([0.5, 0.5], [0, 4], (EPSILON - 0.5) * math.log(EPSILON / 0.5) + 0.5 * math.log(2)),
    # a bin the reference never saw (share 0) counts as EPSILON too
    ([1.0, 0.0], [1, 1], (0.5 - 1) * math.log(0.5) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)),
])
def test_psi_table(reference: list[float], live: list[int], expected: float) -> None:
    assert psi(reference, live) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_psi_refuses_an_empty_window() -> None:
    with pytest.raises(ValueError, match="no live rows"):
        psi([0.5, 0.5], [0, 0])


def test_psi_by_block_scores_each_column_as_psi_does() -> None:
    reference = np.array([0.4, 0.3, 0.3, 0.5, 0.5])
    counts = np.array([35, 25, 40, 90, 10])
    out = psi_by_block(reference, counts, np.array([0, 3]), np.array([100, 100]))
    assert out[0] == pytest.approx(PUBLISHED_PSI, abs=1e-6)
    assert out[1] == pytest.approx(psi([0.5, 0.5], [90, 10]))
    empty = psi_by_block(reference, np.zeros(5), np.array([0, 3]), np.array([0, 0]))
    assert np.isnan(empty).all()


@pytest.mark.parametrize("value, expected", [
    (0.0, "stable"), (0.099, "stable"), (0.1, "moderate"), (0.25, "moderate"), (0.2501, "major"),
    (None, "unknown"), (float("nan"), "unknown"),
])
def test_the_usual_reading(value: float | None, expected: str) -> None:
    assert reading(value) == expected


def test_quantile_edges_merge_repeats_and_ignore_missing_values() -> None:
    assert quantile_edges(np.arange(1, 101, dtype=float)) == pytest.approx(
        tuple(np.quantile(np.arange(1, 101), [i / 10 for i in range(1, 10)])))
    few = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, np.nan])
    assert quantile_edges(few, integers=True) == (0.0, 1.0, 2.0)  # repeated deciles merged
    assert 0.5 in quantile_edges(few)  # interpolated between integers without integers=True
    assert quantile_edges(np.array([np.nan])) == ()


# -- simulation: the package's own binning, live windows drawn from the reference distribution ----

REFERENCE_ROWS, WINDOW_ROWS, RUNS = 2000, 1000, 200


def _schema() -> InputSchema:
    return InputSchema((Column("x", "number"), Column("shifted", "number")), frame=False)


def test_no_drift_stays_near_zero_and_a_shifted_column_is_major() -> None:
    """Seeded: 200 runs, each packaging a fresh reference of 2000 rows with the package's own
    binning and scoring a fresh live window of 1000 rows. The tolerance is the simulated 99th
    percentile of PSI under no drift for this window; it must read "stable" (< 0.1) with room to
    spare, and agree with the chi-square approximation in metrics.drift (PSI ~ chi2 with bins - 1
    degrees of freedom times (1/live rows + 1/reference rows): chi2.ppf(0.99, 9) * 0.0015 = 0.0325)
    within a factor of 2. A column shifted by one standard deviation must read "major" in every
    run."""
    rng = np.random.default_rng(20240601)
    stable, shifted = [], []
    for _ in range(RUNS):
        reference = build_reference(_schema(), rng.standard_normal((REFERENCE_ROWS, 2)))
        assert [c.size for c in reference.columns] == [10, 10]
        live = rng.standard_normal((WINDOW_ROWS, 2))
        live[:, 1] += 1.0
        scores = psi_by_block(reference.shares, reference.counts(live), reference.starts,
                              np.full(2, WINDOW_ROWS))
        stable.append(scores[0])
        shifted.append(scores[1])
    tolerance = float(np.quantile(stable, 0.99))
    approximation = chi2.ppf(0.99, 9) * (1 / WINDOW_ROWS + 1 / REFERENCE_ROWS)
    assert tolerance < 0.05, tolerance
    assert approximation / 2 < tolerance < approximation * 2, (tolerance, approximation)
    assert max(stable) < 0.1
    assert min(shifted) > 0.25, min(shifted)


def test_binning_of_every_column_type_matches_the_bins_by_hand() -> None:
    schema = InputSchema((Column("n", "integer", nullable=True), Column("flag", "boolean"),
                          Column("plan", "category", nullable=True, categories=("a", "b"))),
                         frame=True)
    evaluation = pd.DataFrame({"n": [1.0, 2.0, 3.0, np.nan], "flag": [True, False, True, True],
                               "plan": ["a", "a", "b", None]})
    reference = build_reference(schema, evaluation)
    n, flag, plan = reference.columns
    assert n.labels[-1] == MISSING and n.shares[-1] == 0.25
    assert flag.labels == ("false", "true") and flag.shares == (0.25, 0.75)
    assert plan.labels == ("a", "b", OTHER, MISSING) and plan.shares == (0.5, 0.25, 0.0, 0.25)
    live = pd.DataFrame({"n": [100.0, np.nan], "flag": [False, False], "plan": ["zzz", "b"]})
    counts = reference.counts(live)
    by_label = dict(zip([f"{c.name}:{label}" for c in reference.columns for label in c.labels],
                        counts.tolist(), strict=True))
    assert by_label[f"n:{n.labels[-2]}"] == 1 and by_label[f"n:{MISSING}"] == 1
    assert by_label["flag:false"] == 2 and by_label[f"plan:{OTHER}"] == 1
    assert by_label["plan:b"] == 1 and sum(counts) == 2 * 3


def test_frames_joined_column_by_column_bin_as_each_frame_does() -> None:
    """Requests (frames) are binned together; the counts are the sum of each frame's counts,
    for every column type, missing values and unseen categories, whole and by row slices."""
    schema = InputSchema((Column("n", "integer", nullable=True), Column("x", "number"),
                          Column("flag", "boolean"),
                          Column("plan", "category", nullable=True, categories=("a", "b"))),
                         frame=True)
    rng = np.random.default_rng(7)

    def frame(rows: int) -> pd.DataFrame:
        n = rng.integers(0, 9, rows).astype(np.float64)
        n[rng.random(rows) < 0.2] = np.nan
        plan = rng.choice(np.array(["a", "b", "zzz", None], dtype=object), rows)
        return schema.frame_of({"n": n, "x": rng.standard_normal(rows),
                                "flag": rng.random(rows) < 0.5,
                                "plan": np.array([np.nan if p is None else p for p in plan],
                                                 dtype=object)})

    reference = build_reference(schema, frame(400))
    frames = [frame(int(rows)) for rows in rng.integers(1, 6, 30)]
    joined = reference.columns_of(frames)
    assert len(joined) == sum(len(f) for f in frames)
    expected = sum(reference.counts(f) for f in frames)
    assert reference.counts(joined).tolist() == expected.tolist()
    by_slices = sum(reference.counts(joined[first:first + 7]) for first in range(0, len(joined), 7))
    assert by_slices.tolist() == expected.tolist()


# -- the sliding window ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_window_keeps_about_the_last_rows_and_forgets_old_ones() -> None:
    clock = Clock()
    window = DriftWindow(2, window_rows=100, window_s=600, clock=clock)
    for _ in range(30):  # 300 rows in requests of 10: the first bin
        window.add(np.array([10, 0]), 10)
    for _ in range(5):  # 50 rows: the second bin
        window.add(np.array([0, 10]), 10)
    counts, rows = window.totals()
    assert 90 <= rows <= 100 and counts[1] == 50 and counts.sum() == rows
    clock.now = 601  # every slice is older than the window's age limit
    counts, rows = window.totals()
    assert rows == 0 and counts.tolist() == [0, 0]
