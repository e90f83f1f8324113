"""The rollout judge: fail a candidate only on evidence of harm, wait for samples, and, for the final
promotion, wait for evidence that it is within every tolerance."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import orjson
import pytest

from metrics.analysis import FAIL, PASS, WAIT, Check, Thresholds, Verdict, judge, judge_alone
from metrics.window import DEFAULT_BOUNDS, VersionCounts, quantile

# max_error_rate_increase 0.02; latency harm is slower than 1.5x AND +25 ms (p50 and p99);
# min_agreement 0.95; max_error_rate 0.05 (no reference); confidence 0.99
T = Thresholds()
MIN = 50


def version(latencies: np.ndarray | list[float], errors: int = 0, **extra: float) -> VersionCounts:
    """A version's window: one request per latency sample (seconds), ``errors`` of them failed."""
    samples = np.asarray(latencies, dtype=float)
    buckets = {le: float(np.count_nonzero(samples <= le)) for le in DEFAULT_BOUNDS}
    return VersionCounts(
        requests=float(len(samples)), errors=float(errors), latency_buckets=buckets, **extra
    )


def lognormal(seed: int, n: int, median_s: float, sigma: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median_s), sigma, n)


def with_tail(seed: int, n: int, median_s: float, share: float, tail_s: float) -> np.ndarray:
    """``n`` samples around ``median_s``; ``share`` of them replaced by ~``tail_s`` outliers."""
    samples = lognormal(seed, n, median_s, 0.3)
    k = int(n * share)
    samples[:k] = lognormal(seed + 1, k, tail_s, 0.1)
    return samples


def check(verdict: Verdict, name: str) -> Check:
    (found,) = [c for c in verdict.checks if c.name == name]
    return found


def assert_complete_evidence(verdict: Verdict) -> None:
    """Every verdict says what it measured, against which limits, on how many samples, as JSON."""
    evidence = orjson.loads(orjson.dumps(verdict.evidence()))
    assert evidence["decision"] == verdict.decision
    assert all(isinstance(n, float | int) for n in evidence["samples"].values())
    assert len(evidence["checks"]) == len(verdict.checks)
    for doc, item in zip(evidence["checks"], verdict.checks, strict=True):
        assert {"name", "decision", "value", "threshold", "detail", "interval", "proven"} <= set(
            doc
        )
        assert doc["decision"] == item.decision
        # a latency limit is unknown (None) only while stable's own quantile is unbounded
        assert doc["threshold"] is not None or (item.name.startswith("latency")
                                                and item.decision != "fail")
        if item.name == "sample_size":
            assert doc["threshold"] == MIN and doc["value"] < MIN and doc["interval"] is None
        elif item.interval is not None:
            low, high = item.interval
            assert doc["interval"] == [
                None if math.isinf(x) else pytest.approx(x, abs=1e-6) for x in (low, high)
            ]
            if item.value is not None and not item.name.startswith("latency"):
                assert low - 1e-9 <= item.value <= high + 1e-9  # the estimate lies inside
        assert ("needed" in doc) == (item.needed is not None)
    if verdict.needed is not None:
        assert evidence["needed_requests"] == round(verdict.needed)


# -- sample size ----------------------------------------------------------------------------------

STARVED = [  # name, stable requests, candidate requests, decision when all candidate requests fail
    ("candidate below the minimum", 1000, 49, FAIL),  # 49 of 49 failed: harm needs no minimum
    ("stable below the minimum", 49, 1000, FAIL),
    ("both below", 10, 10, WAIT),  # 10 of 10 failed against 0 of 10 is not yet evidence
    ("nothing at all", 0, 0, WAIT),
]


@pytest.mark.parametrize(
    ("stable_n", "candidate_n", "all_failing"),
    [c[1:] for c in STARVED],
    ids=[c[0] for c in STARVED],
)
def test_too_few_samples_wait_and_never_pass(
    stable_n: int, candidate_n: int, all_failing: str
) -> None:
    stable = version(lognormal(1, stable_n, 0.005))
    clean = judge(stable, version(lognormal(2, candidate_n, 0.005)), T, min_requests=MIN)
    assert clean.decision == WAIT
    assert clean.deciding() == check(clean, "sample_size")
    assert check(clean, "sample_size").value == min(stable_n, candidate_n)
    assert clean.needed == MIN - min(stable_n, candidate_n)
    assert clean.samples == {"stable_requests": stable_n, "candidate_requests": candidate_n}
    assert_complete_evidence(clean)
    failing = judge(
        stable, version(lognormal(2, candidate_n, 0.005), errors=candidate_n), T, min_requests=MIN
    )
    assert failing.decision == all_failing
    assert_complete_evidence(failing)


@pytest.mark.parametrize("seed", range(20))
def test_random_windows_below_the_minimum_never_pass(seed: int) -> None:
    rng = np.random.default_rng(seed)
    min_requests = int(rng.integers(20, 200))
    small = int(rng.integers(0, min_requests))
    large = int(rng.integers(min_requests, 5000))
    sizes = (small, large) if seed % 2 else (large, small)
    stable = version(lognormal(seed, sizes[0], 0.004))
    candidate = version(
        lognormal(seed + 100, sizes[1], 0.004), errors=int(rng.integers(0, sizes[1] + 1))
    )
    assert judge(stable, candidate, T, min_requests=min_requests).decision in (WAIT, FAIL)


def test_a_short_step_waits_even_when_the_phase_has_plenty() -> None:
    stable, candidate = (
        version(lognormal(7, 5000, 0.02, 0.3)),
        version(lognormal(8, 5000, 0.02, 0.3)),
    )
    verdict = judge(stable, candidate, T, min_requests=MIN, step=(10, 30), rate=2.0)
    assert verdict.decision == WAIT
    deciding = verdict.deciding()
    assert deciding is not None and deciding.name == "sample_size"
    assert (deciding.value, deciding.threshold) == (10, MIN)  # the fewer of the step's two
    assert verdict.needed == 40 and verdict.minutes == pytest.approx(40 / 2.0 / 60)
    assert verdict.samples == {"stable_requests": 5000, "candidate_requests": 5000}
    assert_complete_evidence(verdict)
    assert judge(stable, candidate, T, min_requests=MIN, step=(50, 60)).decision == PASS
    # harm over the whole phase fails at once, however short the step
    failing = version(lognormal(8, 5000, 0.02, 0.3), errors=500)
    assert judge(stable, failing, T, min_requests=MIN, step=(10, 10)).decision == FAIL


# -- error rate -----------------------------------------------------------------------------------

ERROR_CASES = [
    # name, (stable errors, requests), (candidate errors, requests), decision, increase
    ("equal and clean", (0, 1000), (0, 200), PASS, 0.0),
    ("equal error rates of 1 %", (10, 1000), (2, 200), PASS, 0.0),
    ("2.5 points more on 200 requests is no evidence", (0, 1000), (5, 200), PASS, 0.025),
    ("3 points more on 10000 each is no evidence yet", (100, 10_000), (400, 10_000), PASS, 0.03),
    ("4 points more on 10000 each is", (100, 10_000), (500, 10_000), FAIL, 0.04),
    ("a big increase: 1 % to 20 %", (10, 1000), (60, 300), FAIL, 0.19),
    ("20 % injected errors", (0, 1000), (40, 200), FAIL, 0.2),
    ("candidate better than stable", (100, 1000), (0, 200), PASS, -0.1),
]


@pytest.mark.parametrize(
    ("stable", "candidate", "decision", "increase"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_error_rate_increase(
    stable: tuple[int, int], candidate: tuple[int, int], decision: str, increase: float
) -> None:
    s = version(lognormal(3, stable[1], 0.005), errors=stable[0])
    c = version(lognormal(4, candidate[1], 0.005), errors=candidate[0])
    verdict = judge(s, c, T, min_requests=MIN)
    found = check(verdict, "error_rate_increase")
    assert verdict.decision == found.decision == decision  # latencies alike: errors decide
    assert found.value == pytest.approx(increase)
    assert found.threshold == T.max_error_rate_increase
    assert found.interval is not None
    low, high = found.interval
    assert low <= increase <= high
    if decision == FAIL:  # the whole interval is past the limit
        assert verdict.deciding() == found and low > T.max_error_rate_increase
    else:
        assert low <= T.max_error_rate_increase
    assert_complete_evidence(verdict)


# -- latency --------------------------------------------------------------------------------------

LATENCY_CASES = [  # name, stable samples (s), candidate samples (s), decision, failing checks
    (
        "0.58 ms vs 1.6 ms medians: 2.8x but +1 ms",
        lognormal(10, 5000, 0.00058, 0.3),
        lognormal(11, 5000, 0.0016, 0.3),
        PASS,
        (),
    ),
    ("3x slower but only +10 ms", lognormal(12, 1000, 0.005), lognormal(13, 300, 0.015), PASS, ()),
    (
        "300 ms slower everywhere",
        lognormal(14, 1000, 0.005),
        lognormal(15, 200, 0.305, 0.1),
        FAIL,
        ("latency_p50", "latency_p99"),
    ),
    (
        "5 % of requests take a second: the tail only",
        lognormal(16, 2000, 0.02, 0.3),
        with_tail(17, 2000, 0.02, 0.05, 1.0),
        FAIL,
        ("latency_p99",),
    ),
    (
        "a few slow requests in 200: not yet evidence",
        lognormal(18, 1000, 0.02, 0.3),
        with_tail(19, 200, 0.02, 0.02, 1.0),
        PASS,
        (),
    ),
    ("faster", lognormal(20, 1000, 0.2), lognormal(21, 200, 0.05), PASS, ()),
]


@pytest.mark.parametrize(
    ("stable", "candidate", "decision", "failing"),
    [c[1:] for c in LATENCY_CASES],
    ids=[c[0] for c in LATENCY_CASES],
)
def test_latency_fails_only_when_slower_by_the_ratio_and_the_margin(
    stable: np.ndarray, candidate: np.ndarray, decision: str, failing: tuple[str, ...]
) -> None:
    s, c = version(stable), version(candidate)
    verdict = judge(s, c, T, min_requests=MIN)
    assert verdict.decision == decision
    for q, name in ((0.5, "latency_p50"), (0.99, "latency_p99")):
        found = check(verdict, name)
        # value and threshold in ms: the candidate's quantile, and the most stable's allows: the
        # limit of stable's upper bound (a bucket bound at or above its estimate)
        assert found.value == pytest.approx(quantile(c.latency_buckets, q) * 1e3, abs=1e-4)
        estimate = quantile(s.latency_buckets, q) * 1e3
        if found.threshold is not None:
            assert found.threshold >= max(estimate * 1.5, estimate + 25.0) - 1e-6
            # harm shown means the candidate's whole interval lies above the limit
            assert (found.decision == FAIL) == (found.interval[0] >= found.threshold)
        assert f"candidate {found.value:.3g} ms" in found.detail
        assert "1.5x and +25 ms" in found.detail
        if name in failing:
            assert found.decision == FAIL
            assert found.interval is not None and found.interval[0] >= found.threshold
        else:
            assert found.decision == PASS
    deciding = verdict.deciding()
    assert (deciding.name if deciding else None) == (failing[0] if failing else None)
    assert check(verdict, "error_rate_increase").decision == PASS
    assert_complete_evidence(verdict)


def test_the_absolute_margin_is_what_passes_a_fast_service_slower_by_a_millisecond() -> None:
    stable = version(lognormal(10, 5000, 0.00058, 0.3))
    candidate = version(lognormal(11, 5000, 0.0016, 0.3))
    p50 = check(judge(stable, candidate, T, min_requests=MIN), "latency_p50")
    assert p50.decision == PASS and p50.value == pytest.approx(1.6, abs=0.1)
    assert p50.threshold == pytest.approx(0.58 + 25, abs=0.1)
    ratio_only = judge(stable, candidate, replace(T, max_latency_increase_ms=0.0), min_requests=MIN)
    assert ratio_only.decision == FAIL
    assert check(ratio_only, "latency_p50").decision == FAIL
    assert 0.58 * 1.5 <= check(ratio_only, "latency_p50").threshold <= 0.58 * 1.143 * 1.5


def test_300_ms_slower_names_its_milliseconds() -> None:
    verdict = judge(
        version(lognormal(14, 1000, 0.005)),
        version(lognormal(15, 200, 0.305, 0.1)),
        T,
        min_requests=MIN,
    )
    p50 = check(verdict, "latency_p50")
    # the interpolated bucket quantile: within the 280-320 ms bucket holding 305 ms
    assert 280 <= p50.value <= 320 and p50.threshold == pytest.approx(30, abs=1)
    assert (
        "stable 4.88 ms" in p50.detail
        and "candidate 307 ms (above 280 ms, at most 320 ms)" in p50.detail
    )
    assert verdict.deciding() == p50


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize(("median_s", "n"), [(0.003, 60), (0.02, 300), (0.2, 2000)])
def test_equal_distributions_pass(seed: int, median_s: float, n: int) -> None:
    stable = version(lognormal(1000 + seed, 5 * n, median_s), errors=n // 20)
    candidate = version(lognormal(2000 + seed, n, median_s), errors=n // 100)
    verdict = judge(stable, candidate, T, min_requests=MIN)
    assert verdict.decision == PASS, verdict.evidence()
    assert_complete_evidence(verdict)


# -- evidence for the final promotion -------------------------------------------------------------


def scaled(counts: VersionCounts, k: float) -> VersionCounts:
    """``k`` times the requests at the same rates and latencies."""
    return VersionCounts(
        requests=counts.requests * k,
        errors=counts.errors * k,
        latency_buckets={le: v * k for le, v in counts.latency_buckets.items()},
    )


def test_require_evidence_waits_on_thin_data_and_says_how_much_more_it_needs() -> None:
    stable, candidate = version(lognormal(7, 200, 0.02, 0.3)), version(lognormal(10, 60, 0.02, 0.3))
    assert judge(stable, candidate, T, min_requests=MIN).decision == PASS  # no harm shown
    verdict = judge(stable, candidate, T, min_requests=MIN, require_evidence=True, rate=2.0)
    assert verdict.decision == WAIT
    waiting = [c for c in verdict.checks if c.decision == WAIT]
    assert {c.name for c in waiting} == {"error_rate_increase", "latency_p99"}
    assert all(not c.proven and c.needed is not None and c.needed > 0 for c in waiting)
    assert check(verdict, "latency_p50").decision == PASS and check(verdict, "latency_p50").proven
    assert verdict.needed == max(c.needed for c in waiting)
    assert verdict.minutes == pytest.approx(verdict.needed / 2.0 / 60)
    evidence = orjson.loads(orjson.dumps(verdict.evidence()))
    assert evidence["needed_requests"] == round(verdict.needed)
    assert evidence["needed_minutes"] == pytest.approx(verdict.minutes, abs=0.05)
    # the promise holds: that many more candidate requests, at today's rates, prove it
    k = 1 + verdict.needed / candidate.requests
    more = judge(
        scaled(stable, k), scaled(candidate, k), T, min_requests=MIN, require_evidence=True
    )
    assert more.decision == PASS and all(c.proven for c in more.checks)
    assert_complete_evidence(verdict)


def test_require_evidence_passes_with_plenty_and_still_fails_on_harm() -> None:
    stable = version(lognormal(7, 20_000, 0.02, 0.3), errors=200)
    candidate = version(lognormal(10, 20_000, 0.02, 0.3), errors=220)
    verdict = judge(stable, candidate, T, min_requests=MIN, require_evidence=True, rate=50.0)
    assert verdict.decision == PASS
    assert [c.name for c in verdict.checks] == ["error_rate_increase", "latency_p50", "latency_p99"]
    assert all(c.proven for c in verdict.checks)
    assert verdict.needed is None and "needed_requests" not in verdict.evidence()
    harmful = version(lognormal(10, 20_000, 0.02, 0.3), errors=2000)
    assert judge(stable, harmful, T, min_requests=MIN, require_evidence=True).decision == FAIL


# -- shadow ---------------------------------------------------------------------------------------


def shadowed(agree: int, disagree: int, errors: int = 0, median_s: float = 0.005) -> VersionCounts:
    n = agree + disagree + errors
    samples = lognormal(40, n, median_s)
    return VersionCounts(
        shadow_requests=float(n),
        shadow_errors=float(errors),
        shadow_latency_buckets={
            le: float(np.count_nonzero(samples <= le)) for le in DEFAULT_BOUNDS
        },
        agree=float(agree),
        disagree=float(disagree),
    )


SHADOW_CASES = [  # name, mirrored candidate, decision, deciding check, its value
    ("all agree", shadowed(200, 0), PASS, "agreement", 1.0),
    ("agreement exactly at the minimum", shadowed(190, 10), PASS, "agreement", 0.95),
    ("0.9 over 200 rows: not yet evidence", shadowed(180, 20), PASS, "agreement", 0.9),
    ("0.8 over 2000 rows", shadowed(1600, 400), FAIL, "agreement", 0.8),
    (
        "candidate errors on mirrored copies",
        shadowed(180, 0, errors=20),
        FAIL,
        "error_rate_increase",
        0.1,
    ),
    ("too few compared", shadowed(40, 0), WAIT, "sample_size", 40),
]


@pytest.mark.parametrize(
    ("candidate", "decision", "deciding", "value"),
    [c[1:] for c in SHADOW_CASES],
    ids=[c[0] for c in SHADOW_CASES],
)
def test_shadow_agreement(
    candidate: VersionCounts, decision: str, deciding: str, value: float
) -> None:
    stable = version(lognormal(41, 1000, 0.005))
    verdict = judge(stable, candidate, T, min_requests=MIN, shadow=True)
    assert verdict.decision == decision
    found = check(verdict, deciding)
    assert found.value == pytest.approx(value)
    if decision != PASS:
        assert verdict.deciding() == found
    assert verdict.samples == {
        "stable_requests": 1000,
        "compared": candidate.agree + candidate.disagree,
        "candidate_shadow_requests": candidate.shadow_requests,
    }
    if deciding == "agreement":
        assert found.threshold == T.min_agreement
        assert f"{candidate.agree:.0f} agree" in found.detail
        assert found.interval is not None
        assert (found.interval[1] < T.min_agreement) == (decision == FAIL)
    assert_complete_evidence(verdict)


# -- one version after a switch ---------------------------------------------------------------------

ALONE_CASES = [  # name, after the switch, the reference window before it, decision, deciding check
    (
        "too few since the switch",
        version(lognormal(50, 20, 0.005)),
        version(lognormal(51, 500, 0.005)),
        WAIT,
        "sample_size",
    ),
    (
        "as good as the window before",
        version(lognormal(52, 300, 0.005), errors=1),
        version(lognormal(53, 500, 0.005), errors=2),
        PASS,
        None,
    ),
    (
        "errors the window before did not have",
        version(lognormal(54, 300, 0.005), errors=30),
        version(lognormal(55, 500, 0.005)),
        FAIL,
        "error_rate_increase",
    ),
    (
        "300 ms slower than the window before",
        version(lognormal(54, 300, 0.305, 0.1)),
        version(lognormal(55, 500, 0.005)),
        FAIL,
        "latency_p50",
    ),
    (
        "reference too small: the absolute limit",
        version(lognormal(56, 300, 0.005), errors=60),
        version(lognormal(57, 40, 0.005)),
        FAIL,
        "error_rate",
    ),
    (
        "no reference: within the absolute limit",
        version(lognormal(58, 300, 0.005), errors=3),
        None,
        PASS,
        None,
    ),
    (
        "no reference: 10 % on 300 is no evidence past 5 %",
        version(lognormal(59, 300, 0.005), errors=30),
        None,
        PASS,
        None,
    ),
    (
        "no reference: 20 % is",
        version(lognormal(60, 300, 0.005), errors=60),
        None,
        FAIL,
        "error_rate",
    ),
]


@pytest.mark.parametrize(
    ("after", "before", "decision", "deciding"),
    [c[1:] for c in ALONE_CASES],
    ids=[c[0] for c in ALONE_CASES],
)
def test_judge_alone(
    after: VersionCounts, before: VersionCounts | None, decision: str, deciding: str | None
) -> None:
    verdict = judge_alone(after, before, T, min_requests=MIN)
    assert verdict.decision == decision
    found = verdict.deciding()
    assert (found.name if found else None) == deciding
    assert verdict.samples["requests"] == after.requests
    compared = before is not None and before.requests >= MIN
    assert ("reference_requests" in verdict.samples) == compared
    names = {c.name for c in verdict.checks}
    assert ("error_rate" in names) == (not compared and bool(after.requests))
    if found is not None and found.name == "error_rate":
        assert found.threshold == T.max_error_rate and found.interval is not None
        assert found.interval[0] > T.max_error_rate
    assert_complete_evidence(verdict)


def test_judge_alone_without_reference_waits_for_evidence_when_required() -> None:
    after = version(lognormal(61, 60, 0.005))
    verdict = judge_alone(after, None, T, min_requests=MIN, require_evidence=True, rate=0.5)
    assert verdict.decision == WAIT
    (error_rate,) = verdict.checks
    assert error_rate.decision == WAIT and error_rate.needed == verdict.needed
    assert verdict.minutes == pytest.approx(verdict.needed / 0.5 / 60)
    more = version(lognormal(61, 60 + int(verdict.needed), 0.005))
    assert judge_alone(more, None, T, min_requests=MIN, require_evidence=True).decision == PASS


# -- the evidence document ------------------------------------------------------------------------


def test_evidence_is_json_with_intervals_and_none_for_unbounded_ends() -> None:
    verdict = judge(
        version(lognormal(7, 200, 0.02, 0.3)),
        version(lognormal(10, 60, 0.02, 0.3)),
        T,
        min_requests=MIN,
        require_evidence=True,
        rate=2.0,
    )
    evidence = orjson.loads(orjson.dumps(verdict.evidence()))
    p99 = next(c for c in evidence["checks"] if c["name"] == "latency_p99")
    assert p99["interval"][1] is None  # 60 requests cannot bound a p99 from above
    assert p99["interval"][0] == pytest.approx(check(verdict, "latency_p99").interval[0])
    errors = next(c for c in evidence["checks"] if c["name"] == "error_rate_increase")
    assert len(errors["interval"]) == 2 and all(isinstance(x, float) for x in errors["interval"])
    assert errors["needed"] > 0 and evidence["needed_requests"] > 0
    assert evidence["samples"] == {"stable_requests": 200.0, "candidate_requests": 60.0}
    assert_complete_evidence(verdict)
