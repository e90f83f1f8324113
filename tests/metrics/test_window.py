"""Per-version windows: quantiles from histogram buckets, the difference and the sum of readings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metrics.buckets import LATENCY_BUCKETS
from metrics.window import (
    DEFAULT_BOUNDS,
    VersionCounts,
    bucket_counts,
    counts_from_doc,
    counts_to_doc,
    quantile,
    reading_from_doc,
    reading_to_doc,
    sum_readings,
    went_down,
    window,
)

INF = float("inf")


def cumulative(
    samples: np.ndarray, bounds: tuple[float, ...] = DEFAULT_BOUNDS
) -> dict[float, float]:
    """The ``le`` buckets a Prometheus histogram with ``bounds`` holds after observing ``samples``."""
    return {le: float(np.count_nonzero(samples <= le)) for le in bounds}


def binned_points(samples: np.ndarray, bounds: tuple[float, ...] = DEFAULT_BOUNDS) -> np.ndarray:
    """``samples`` binned like the histogram, each bucket's count spread evenly over its width.

    This is the distribution histogram_quantile assumes (uniform within a bucket); samples above
    the last finite bound are all placed at twice that bound (PromQL answers the bound itself).
    """
    points: list[float] = []
    lower = 0.0
    for le, count in bucket_counts(cumulative(samples, bounds)):
        n = int(count)
        if le == INF:
            points.extend([2 * lower] * n)
        else:
            points.extend(lower + (le - lower) * (i + 1) / n for i in range(n))
            lower = le
    return np.array(points)


def bucket_of(value: float) -> tuple[float, float]:
    """The (lower, upper] bucket of LATENCY_BUCKETS holding ``value``."""
    lower = 0.0
    for le in LATENCY_BUCKETS:
        if value <= le:
            return lower, le
        lower = le
    return LATENCY_BUCKETS[-1], INF


DISTRIBUTIONS = {
    "lognormal around 5 ms": lambda rng, n: rng.lognormal(np.log(0.005), 0.6, n),
    "lognormal around 300 ms": lambda rng, n: rng.lognormal(np.log(0.3), 0.4, n),
    "uniform 0 to 12 s (some past the last bucket)": lambda rng, n: rng.uniform(0, 12, n),
    "bimodal 2 ms and 80 ms": lambda rng, n: np.concatenate(
        [rng.normal(0.002, 0.0003, n - n // 10), rng.normal(0.08, 0.01, n // 10)]
    ).clip(1e-5),
    "all in one bucket": lambda rng, n: rng.uniform(0.0026, 0.0049, n),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [37, 1000])
def test_quantile_matches_numpy_on_the_same_binning(name: str, q: float, n: int) -> None:
    rng = np.random.default_rng(20240601 + n)
    samples = DISTRIBUTIONS[name](rng, n)
    estimate = quantile(cumulative(samples), q)
    assert estimate is not None

    points = binned_points(samples)
    exact = float(np.percentile(points, q * 100, method="inverted_cdf"))
    lower, upper = bucket_of(exact)
    if upper == INF:  # past the last finite bound: PromQL answers that bound
        assert estimate == LATENCY_BUCKETS[-1]
    else:
        # inverted_cdf takes the next whole sample: at most one spacing of this bucket away
        spacing = (upper - lower) / max(
            1.0, float(np.count_nonzero((points > lower) & (points <= upper)))
        )
        assert exact - spacing - 1e-12 <= estimate <= exact + 1e-12

    # whatever the binning, the estimate lies in the bucket that holds the true sample quantile
    true = float(np.percentile(samples, q * 100, method="inverted_cdf"))
    lo, hi = bucket_of(true)
    assert lo - 1e-12 <= estimate <= (hi if hi != INF else LATENCY_BUCKETS[-1]) + 1e-12


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ({0.01: 0.0, 0.1: 10.0, INF: 10.0}, 0.5, 0.055),  # halfway through the (0.01, 0.1] bucket
        ({0.01: 10.0, 0.1: 10.0, INF: 10.0}, 0.99, 0.0099),  # first bucket starts at 0
        ({0.01: 5.0, 0.1: 5.0, INF: 10.0}, 0.9, 0.1),  # in +Inf: the last finite bound
        ({0.01: 0.0, INF: 0.0}, 0.5, None),  # nothing observed
        ({}, 0.5, None),
    ],
)
def test_quantile_edge_cases(buckets: dict[float, float], q: float, expected: float | None) -> None:
    result = quantile(buckets, q)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def counts(
    requests: float, errors: float, latencies: list[float] | None = None, **extra: float
) -> VersionCounts:
    buckets = cumulative(np.array(latencies or [], dtype=float))
    return VersionCounts(requests=requests, errors=errors, latency_buckets=buckets, **extra)


def test_window_is_the_difference_of_two_readings() -> None:
    earlier = {
        "v1": counts(100, 2, [0.004] * 100),
        "v2": counts(10, 0, [0.02] * 10, agree=3, disagree=1),
    }
    later = {
        "v1": counts(250, 5, [0.004] * 200 + [0.3] * 50),
        "v2": counts(40, 1, [0.02] * 40, agree=30, disagree=4),
        "v3": counts(7, 7, [0.001] * 7),
    }
    stats = window(later, earlier)
    assert stats["v1"].requests == 150 and stats["v1"].errors == 3
    assert bucket_counts(stats["v1"].latency_buckets) == [
        (le, 100.0 if le == 0.004 else 50.0 if le == 0.32 else 0.0) for le in DEFAULT_BOUNDS
    ]
    assert (stats["v2"].requests, stats["v2"].agree, stats["v2"].disagree) == (30, 27, 3)
    assert (
        stats["v3"].requests == 7 and stats["v3"].error_rate == 1.0
    )  # new since the first reading
    assert window(later, None) is later


@pytest.mark.parametrize(
    ("earlier", "later", "expected_requests", "expected_errors"),
    [
        # the router restarted and has seen less than before: count from zero
        (counts(100, 10, [0.005] * 100), counts(30, 3, [0.005] * 30), 30, 3),
        # restarted and already past the old request count, but errors went down: still a
        # restart, so every counter of the version counts from zero (never 5 errors in 1 request)
        (counts(100, 10, [0.005] * 100), counts(101, 5, [0.005] * 101), 101, 5),
        # restarted: only some latency buckets went down
        (counts(50, 0, [0.001] * 50), counts(60, 0, [0.5] * 60), 60, 0),
        # restarted: only the shadow counters went down
        (counts(10, 0, [0.005] * 10, agree=50), counts(20, 0, [0.005] * 20, agree=5), 20, 0),
    ],
)
def test_a_counter_reset_counts_the_whole_version_from_zero(
    earlier: VersionCounts, later: VersionCounts, expected_requests: float, expected_errors: float
) -> None:
    stats = window({"v2": later}, {"v2": earlier})["v2"]
    assert (stats.requests, stats.errors) == (expected_requests, expected_errors)
    assert stats.latency_buckets == later.latency_buckets
    assert (stats.agree, stats.disagree) == (later.agree, later.disagree)
    assert 0.0 <= stats.error_rate <= 1.0
    in_buckets = [c for _, c in bucket_counts(stats.latency_buckets)]
    assert min(in_buckets) >= 0 and sum(in_buckets) == later.latency_buckets[INF]


def test_readings_of_several_instances_add_up_field_by_field() -> None:
    a = {"v1": counts(100, 2, [0.004] * 100, shadow_requests=5, agree=4, disagree=1),
         "v2": counts(10, 0, [0.02] * 10)}
    b = {"v1": counts(50, 1, [0.3] * 50, shadow_requests=3, shadow_errors=1, agree=2)}
    c: dict[str, VersionCounts] = {}

    summed = sum_readings([a, b, c])

    assert set(summed) == {"v1", "v2"}
    v1 = summed["v1"]
    assert (v1.requests, v1.errors, v1.shadow_requests, v1.shadow_errors) == (150, 3, 8, 1)
    assert (v1.agree, v1.disagree) == (6, 1)
    assert v1.latency_buckets == cumulative(np.array([0.004] * 100 + [0.3] * 50))
    assert summed["v2"] == a["v2"]
    assert summed["v2"] is not a["v2"]  # a sum never aliases its parts
    assert sum_readings([]) == {}


def test_bucket_bounds_missing_on_one_side_count_as_zero_there() -> None:
    one = VersionCounts(requests=2, latency_buckets={0.1: 1.0, INF: 2.0})
    other = VersionCounts(requests=1, latency_buckets={0.5: 1.0, INF: 1.0})
    assert one.plus(other).latency_buckets == {0.1: 1.0, 0.5: 1.0, INF: 3.0}


def test_counts_survive_a_trip_through_json() -> None:
    reading = {"v1": counts(7, 1, [0.004, 0.3, 12.0], shadow_requests=2, agree=1, disagree=1)}
    back = reading_from_doc(json.loads(json.dumps(reading_to_doc(reading))))
    assert back == reading
    assert counts_from_doc({**counts_to_doc(reading["v1"]), "from_a_newer_router": 1}) == reading["v1"]


@pytest.mark.parametrize(
    ("later", "earlier", "expected"),
    [
        ({"v1": counts(5, 0)}, {"v1": counts(5, 0)}, False),
        ({"v1": counts(6, 0), "v2": counts(1, 0)}, {"v1": counts(5, 0)}, False),
        ({"v1": counts(4, 0)}, {"v1": counts(5, 0)}, True),
        ({"v2": counts(9, 0)}, {"v1": counts(5, 0)}, True),  # v1 missing: back at zero
        ({}, {"v1": VersionCounts()}, False),
    ],
)
def test_a_reading_went_down_when_any_version_did(
    later: dict[str, VersionCounts], earlier: dict[str, VersionCounts], expected: bool
) -> None:
    assert went_down(later, earlier) is expected
