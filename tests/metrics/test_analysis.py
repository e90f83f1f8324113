"""The rollout judge: pass, wait or fail for a candidate against stable over one window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metrics.analysis import FAIL, PASS, WAIT, Thresholds, Verdict, judge, judge_alone
from metrics.window import DEFAULT_BOUNDS, VersionCounts

# max_error_rate_increase 0.02, max_p99_ratio 1.5, min_agreement 0.95, confidence 0.99
T = Thresholds()
MIN = 50


def version(latencies: np.ndarray | list[float], errors: int = 0, **extra: float) -> VersionCounts:
    """A version's window: one request per latency sample, ``errors`` of them failed."""
    samples = np.asarray(latencies, dtype=float)
    buckets = {le: float(np.count_nonzero(samples <= le)) for le in DEFAULT_BOUNDS}
    return VersionCounts(
        requests=float(len(samples)), errors=float(errors), latency_buckets=buckets, **extra
    )


def lognormal(seed: int, n: int, median_s: float, sigma: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median_s), sigma, n)


def check(verdict: Verdict, name: str) -> dict:
    (found,) = [c for c in verdict.evidence()["checks"] if c["name"] == name]
    return found


def assert_complete_evidence(verdict: Verdict, min_requests: int) -> None:
    """Every verdict says what it measured, against which limits, on how many samples."""
    evidence = json.loads(json.dumps(verdict.evidence()))  # it travels as JSON
    assert evidence["decision"] == verdict.decision
    assert evidence["samples"] and all(
        isinstance(n, float | int) for n in evidence["samples"].values()
    )
    assert evidence["checks"]
    for item in evidence["checks"]:
        assert {"name", "decision", "value", "threshold", "detail"} <= set(item)
        assert item["threshold"] is not None
        if item["name"] == "sample_size":
            assert item["threshold"] == min_requests
            assert item["value"] < min_requests
        elif verdict.decision != WAIT:
            assert item["value"] is not None


# -- sample size --------------------------------------------------------------------------------

STARVED = [
    ("candidate below the minimum", 1000, 49),
    ("stable below the minimum", 49, 1000),
    ("both below", 10, 10),
    ("nothing at all", 0, 0),
]


@pytest.mark.parametrize(
    ("stable_n", "candidate_n"), [c[1:] for c in STARVED], ids=[c[0] for c in STARVED]
)
@pytest.mark.parametrize("candidate_errors", ["none", "all"])
def test_too_few_samples_wait_and_never_pass(
    stable_n: int, candidate_n: int, candidate_errors: str
) -> None:
    stable = version(lognormal(1, stable_n, 0.005))
    candidate = version(
        lognormal(2, candidate_n, 0.005), errors=candidate_n if candidate_errors == "all" else 0
    )
    verdict = judge(stable, candidate, T, min_requests=MIN)
    assert verdict.decision == WAIT
    assert check(verdict, "sample_size")["value"] == min(stable_n, candidate_n)
    assert verdict.samples == {"stable_requests": stable_n, "candidate_requests": candidate_n}
    assert_complete_evidence(verdict, MIN)


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
    assert judge(stable, candidate, T, min_requests=min_requests).decision == WAIT


# -- error rate -----------------------------------------------------------------------------------

ERROR_CASES = [
    # (stable errors/requests, candidate errors/requests, decision, increase)
    ("equal and clean", (0, 1000), (0, 200), PASS, 0.0),
    ("both at 1 %", (10, 1000), (2, 200), PASS, 0.0),
    ("increase of exactly the threshold", (0, 1000), (4, 200), PASS, 0.02),
    ("increase of 2.5 %", (0, 1000), (5, 200), FAIL, 0.025),
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
    assert found["decision"] == decision
    assert found["value"] == pytest.approx(increase)
    assert found["threshold"] == T.max_error_rate_increase
    assert verdict.decision == decision  # latencies are alike: the error check decides
    assert_complete_evidence(verdict, MIN)


# -- latency --------------------------------------------------------------------------------------


def tail(seed: int, n: int, share: float, seconds: float) -> np.ndarray:
    """``n`` samples around 5 ms with ``share`` of them replaced by ~``seconds`` outliers."""
    samples = lognormal(seed, n, 0.005, 0.3)
    k = int(n * share)
    samples[:k] = lognormal(seed + 1, k, seconds, 0.1)
    return samples


LATENCY_CASES = [
    # name, stable samples, candidate samples, decision
    ("3x slower everywhere", lognormal(10, 1000, 0.005), lognormal(11, 200, 0.015), FAIL),
    ("300 ms slower everywhere", lognormal(12, 1000, 0.005), lognormal(13, 60, 0.3, 0.1), FAIL),
    (
        "p99 exceeded by a few outliers, bulk the same",
        lognormal(14, 1000, 0.005, 0.3),
        tail(15, 200, 0.03, 0.05),
        PASS,
    ),
    (
        "a little slower everywhere, with a noisy tail",
        lognormal(16, 1000, 0.005, 0.3),
        np.concatenate([lognormal(17, 196, 0.006, 0.3), lognormal(18, 4, 0.06, 0.1)]),
        PASS,
    ),
    (
        # a noisy stable tail keeps the p99 ratio under the limit; the bulk is 6x slower
        "much slower bulk, p99 hidden by a noisy stable tail",
        tail(19, 1000, 0.03, 2.0),
        lognormal(20, 200, 0.03, 0.1),
        FAIL,
    ),
    ("faster", lognormal(21, 1000, 0.02), lognormal(22, 200, 0.005), PASS),
]


@pytest.mark.parametrize(
    ("stable", "candidate", "decision"),
    [c[1:] for c in LATENCY_CASES],
    ids=[c[0] for c in LATENCY_CASES],
)
def test_latency_fails_when_the_candidate_is_significantly_slower_in_tail_or_bulk(
    stable: np.ndarray, candidate: np.ndarray, decision: str
) -> None:
    verdict = judge(version(stable), version(candidate), T, min_requests=MIN)
    found = check(verdict, "latency_p99_ratio")
    assert found["decision"] == decision
    assert verdict.decision == decision
    assert found["threshold"] == T.max_p99_ratio
    p50_ratio = float(found["detail"].split("p50 ratio ")[1].split(";")[0])
    if decision == FAIL:  # a failure names a ratio beyond the limit: the tail's or the bulk's
        assert found["value"] > T.max_p99_ratio or p50_ratio > T.max_p99_ratio
    assert "Mann-Whitney" in found["detail"] and f"confidence {T.confidence}" in found["detail"]
    assert_complete_evidence(verdict, MIN)


def test_a_slower_candidate_within_the_ratio_passes_and_a_failing_one_names_its_p99s() -> None:
    stable = version(lognormal(30, 1000, 0.005))
    verdict = judge(stable, version(lognormal(31, 300, 0.02)), T, min_requests=MIN)
    found = check(verdict, "latency_p99_ratio")
    assert found["decision"] == FAIL
    assert "p99 stable" in found["detail"] and "candidate" in found["detail"]
    loose = Thresholds(max_p99_ratio=10.0)
    assert (
        judge(stable, version(lognormal(31, 300, 0.02)), loose, min_requests=MIN).decision == PASS
    )


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize(("median_s", "n"), [(0.003, 60), (0.02, 300)])
def test_equal_distributions_pass(seed: int, median_s: float, n: int) -> None:
    stable = version(lognormal(1000 + seed, 5 * n, median_s))
    candidate = version(lognormal(2000 + seed, n, median_s))
    verdict = judge(stable, candidate, T, min_requests=MIN)
    assert verdict.decision == PASS, verdict.evidence()
    assert_complete_evidence(verdict, MIN)


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


SHADOW_CASES = [
    ("all agree", shadowed(200, 0), PASS, "agreement", 1.0),
    ("agreement exactly at the minimum", shadowed(190, 10), PASS, "agreement", 0.95),
    ("agreement below the minimum", shadowed(180, 20), FAIL, "agreement", 0.9),
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
    assert found["decision"] == decision
    assert found["value"] == pytest.approx(value)
    assert verdict.samples["compared"] == candidate.agree + candidate.disagree
    assert verdict.samples["candidate_shadow_requests"] == candidate.shadow_requests
    if deciding == "agreement":
        assert found["threshold"] == T.min_agreement
        assert f"{candidate.agree:.0f} agree" in found["detail"]
    assert_complete_evidence(verdict, MIN)


# -- one version after a switch ---------------------------------------------------------------------

ALONE_CASES = [
    (
        "too few since the switch",
        version(lognormal(50, 20, 0.005)),
        version(lognormal(51, 500, 0.005)),
        WAIT,
    ),
    (
        "as good as the window before",
        version(lognormal(52, 300, 0.005)),
        version(lognormal(53, 500, 0.005)),
        PASS,
    ),
    (
        "errors the window before did not have",
        version(lognormal(54, 300, 0.005), errors=30),
        version(lognormal(55, 500, 0.005)),
        FAIL,
    ),
    (
        "no reference: within the absolute limit",
        version(lognormal(56, 300, 0.005), errors=3),
        None,
        PASS,
    ),
    (
        "no reference: past the absolute limit",
        version(lognormal(57, 300, 0.005), errors=30),
        None,
        FAIL,
    ),
]


@pytest.mark.parametrize(
    ("after", "before", "decision"), [c[1:] for c in ALONE_CASES], ids=[c[0] for c in ALONE_CASES]
)
def test_judge_alone(after: VersionCounts, before: VersionCounts | None, decision: str) -> None:
    verdict = judge_alone(after, before, T, min_requests=MIN)
    assert verdict.decision == decision
    assert verdict.samples["requests"] == after.requests
    if before is not None and decision != WAIT:
        assert verdict.samples["reference_requests"] == before.requests
    assert_complete_evidence(verdict, MIN)
