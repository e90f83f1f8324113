"""Traffic moving between versions under load: a blue/green switch and a growing canary."""

from __future__ import annotations

import time

import pytest
from scipy.stats import binom

from tests.reliability.conftest import SETTLE_S, Row
from tests.reliability.tools import Load, Router
from tests.router.helpers import metric, post_many, versions
from tests.servers import settled

CONFIDENCE = 0.999


def binomial_interval(n: int, percent: int) -> tuple[int, int]:
    """Central 99.9% interval of the candidate's count when each request goes there w.p. percent."""
    tail = (1 - CONFIDENCE) / 2
    return int(binom.ppf(tail, n, percent / 100)), int(binom.ppf(1 - tail, n, percent / 100))


def requests_by_version(router: Router) -> dict[str, float]:
    """Once every worker has written its request tallies (see tests.servers.settled)."""
    return settled(
        lambda: {v: metric(router.url, "router_requests_total", version=v) for v in ("v1", "v2")}
    )


@pytest.mark.slow
@pytest.mark.scenario(1, "blue/green switch at ~100 req/s for 20 s")
def test_blue_green_switch_under_steady_load(gateway: Router, scenario: Row) -> None:
    """About 100 req/s for 20 s, the switch halfway: nothing fails, and from 1 s after the
    switch returned every answer is the new colour; the router's counters match the client's."""
    gateway.change(strategy="blue-green")
    time.sleep(SETTLE_S)
    before = requests_by_version(gateway)

    with Load(gateway.url, threads=4, rate=25) as load:
        time.sleep(10)
        switch_sent = time.monotonic()
        promoted = gateway.call("POST", "/admin/promote", json={"reason": "switch under load"})
        switch_returned = time.monotonic()
        time.sleep(10)
    calls = load.snapshot()
    after = requests_by_version(gateway)

    failed = [c for c in calls if c.status != 200]
    late = [c for c in calls if c.started > switch_returned + 1.0]
    stale = [c for c in late if (c.version, c.model_version) != ("v2", "v2")]
    scenario.record(len(calls), len(failed) + len(stale),
                    f"{len(late)} requests started >1 s after the switch, all v2")
    assert promoted["stable"] == "v2"
    assert not failed, f"{len(failed)} of {len(calls)} failed, e.g. {failed[:3]}"
    assert all(c.version == c.model_version for c in calls)
    assert all(c.version == "v1" for c in calls if c.ended < switch_sent)
    assert len(late) >= 500
    assert not stale, f"{len(stale)} answered by the old colour after the switch, e.g. {stale[:3]}"
    counted = {v: after[v] - before[v] for v in after}
    assert counted == {v: float(sum(1 for c in calls if c.version == v)) for v in counted}
    assert sum(counted.values()) == len(calls)


@pytest.mark.slow
@pytest.mark.scenario(2, "canary at 10% over 10,000 requests; sticky users while it grows")
def test_canary_share_and_sticky_users(gateway: Router, scenario: Row) -> None:
    """The candidate's share of 10,000 anonymous requests is inside the binomial 99.9% interval;
    a user on the candidate stays there while the weight grows 10 -> 25 -> 50."""
    gateway.change(strategy="canary", canary_weight=10)
    time.sleep(SETTLE_S)
    answers = post_many(gateway.url, [{}] * 10_000, threads=8)
    failed = [a for a in answers if a.status != 200]
    counts = versions(answers)
    low, high = binomial_interval(len(answers), 10)

    population = [{"X-User-ID": f"user-{i}"} for i in range(300)]
    cohorts: list[set[str]] = []
    unsteady: list[str] = []
    sent = len(answers)
    for weight in (10, 25, 50):
        if weight != 10:
            gateway.change(canary_weight=weight)
            time.sleep(SETTLE_S)
        first, again = post_many(gateway.url, population), post_many(gateway.url, population)
        sent += len(first) + len(again)
        failed += [a for a in first + again if a.status != 200]
        unsteady += [h["X-User-ID"] for h, a, b in zip(population, first, again, strict=True)
                     if a.version != b.version]
        cohorts.append({h["X-User-ID"] for h, a in zip(population, first, strict=True)
                        if a.version == "v2"})

    moved_back = (cohorts[0] - cohorts[1]) | (cohorts[1] - cohorts[2])
    scenario.record(sent, len(failed) + len(unsteady) + len(moved_back),
                    f"v2 share {counts.get('v2', 0)}/{len(answers)} in [{low}, {high}]; "
                    f"users on v2: {' -> '.join(str(len(c)) for c in cohorts)}")
    assert not failed, f"{len(failed)} failed, e.g. {failed[:3]}"
    assert len(answers) == 10_000
    assert all(a.json()["model_version"] == a.version for a in answers[:500])
    assert low <= counts["v2"] <= high, f"{counts['v2']} of 10000 outside [{low}, {high}]"
    assert not unsteady, f"users changed version at a fixed weight: {unsteady[:5]}"
    assert not moved_back, f"moved from the candidate back to stable: {sorted(moved_back)[:5]}"
    assert 0 < len(cohorts[0]) < len(cohorts[1]) < len(cohorts[2])
