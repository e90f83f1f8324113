"""Per-version statistics read back from a real router's /metrics exposition."""

from __future__ import annotations

from itertools import pairwise

import requests
from prometheus_client.parser import text_string_to_metric_families

from metrics.sources import reading_from_metrics
from metrics.window import Reading, window
from tests.metrics.conftest import Routers
from tests.router.rollout.live import ROWS, wait_every_worker_counts
from tests.servers import settled, wait_until

INF = float("inf")


def read_now(url: str) -> Reading:
    text = requests.get(url + "/metrics", timeout=10).text
    return reading_from_metrics(text_string_to_metric_families(text))


def read(url: str) -> Reading:
    """The router's statistics once every worker has written its request tallies."""
    return settled(lambda: read_now(url))


def send(url: str, version: str, n: int) -> list[int]:
    with requests.Session() as session:
        return [
            session.post(
                url + "/predict",
                json={"instances": [ROWS[i]]},
                headers={"X-Route-To": version},
                timeout=10,
            ).status_code
            for i in range(n)
        ]


def test_requests_errors_and_latency_per_version(routers: Routers) -> None:
    url = routers.a.url
    before = read(url)
    assert send(url, "v1", 30) == [200] * 30
    assert send(url, "v2", 20) == [200] * 20
    assert send(url, "v3", 5) == [502] * 5  # refused: no version answered
    stats = window(read(url), before)

    assert (stats["v1"].requests, stats["v1"].errors) == (30, 0)
    assert (stats["v2"].requests, stats["v2"].errors) == (20, 0)
    assert (stats["v3"].requests, stats["v3"].errors, stats["v3"].error_rate) == (5, 5, 1.0)
    for version, n in (("v1", 30), ("v2", 20), ("v3", 5)):
        buckets = stats[version].latency_buckets
        assert buckets[INF] == n
        assert all(buckets[a] <= buckets[b] for a, b in pairwise(sorted(buckets)))


def test_a_candidate_that_refuses_counts_its_attempts_while_stable_answers(
    routers: Routers,
) -> None:
    url = routers.a.url
    admin = routers.admin(routers.a)
    admin.call(
        "PATCH",
        "/admin/state",
        json={
            "strategy": "canary",
            "stable": "v1",
            "candidate": "v3",
            "canary_weight": 100,
            "shadow_percent": 0,
        },
    )
    try:
        wait_every_worker_counts(url, "router_upstream_errors_total", version="v3")
        before = read(url)
        with requests.Session() as session:
            answered = [
                session.post(url + "/predict", json={"instances": [ROWS[i]]}, timeout=10)
                for i in range(8)
            ]
        stats = window(read(url), before)
    finally:
        admin.call(
            "PATCH",
            "/admin/state",
            json={"strategy": "release-in-place", "candidate": "v2", "canary_weight": 0},
        )
    assert [(r.status_code, r.headers["X-Model-Version"]) for r in answered] == [(200, "v1")] * 8
    assert (stats["v1"].requests, stats["v1"].errors) == (8, 0)
    assert (stats["v3"].requests, stats["v3"].errors) == (8, 8)


def test_the_admin_analysis_reads_the_same_numbers_as_the_exposition(routers: Routers) -> None:
    url = routers.a.url
    send(url, "v1", 10)
    send(url, "v3", 2)
    exposed = read(url)
    analysis = routers.admin(routers.a).call("GET", "/admin/analysis")
    for version, counts in exposed.items():
        shown = analysis["versions"][version]
        assert (shown["requests"], shown["errors"]) == (counts.requests, counts.errors), version


def test_shadow_outcomes_and_agreement(routers: Routers) -> None:
    url = routers.a.url
    admin = routers.admin(routers.a)
    admin.call(
        "PATCH",
        "/admin/state",
        json={
            "strategy": "shadow",
            "stable": "v1",
            "candidate": "v2",
            "shadow_percent": 100,
            "canary_weight": 0,
        },
    )
    try:
        wait_every_worker_counts(url, "router_shadow_requests_total", version="v2")
        before = read(url)
        with requests.Session() as session:
            for i in range(25):
                resp = session.post(url + "/predict", json={"instances": [ROWS[i]]}, timeout=10)
                assert resp.headers["X-Model-Version"] == "v1"

        def mirrored() -> Reading | None:
            stats = window(read(url), before)
            return stats if stats["v2"].shadow_requests >= 25 else None

        stats = wait_until(mirrored, 10)
    finally:
        admin.call(
            "PATCH", "/admin/state", json={"strategy": "release-in-place", "shadow_percent": 0}
        )
    v1, v2 = stats["v1"], stats["v2"]
    assert (v1.requests, v2.requests) == (25, 0)
    assert (v2.shadow_requests, v2.shadow_errors) == (25, 0)
    assert v2.agree + v2.disagree == 25
    assert v2.shadow_latency_buckets[INF] == 25
