"""Liveness, readiness and the Prometheus exposition of a real router."""

from __future__ import annotations

import requests

from tests.router.conftest import StartRouter
from tests.router.helpers import change, error_of, metric, post_many, put_state, samples, state
from tests.servers import ServerProcess, free_port, settled


def test_ready_follows_the_stable_service_while_health_stays_up(
    one_worker_router: ServerProcess
) -> None:
    r = one_worker_router
    put_state(r.url, "blue-green")
    ready = requests.get(r.url + "/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["stable"] == "v1"
    assert ready.json()["config_version"] == state(r.url)["config_version"]

    put_state(r.url, "blue-green", stable="down", candidate="v1")  # stable is now a dead service
    not_ready = requests.get(r.url + "/ready", timeout=5)
    assert not_ready.status_code == 503
    error = error_of(not_ready)
    assert error["code"] == "not_ready" and "down" in error["message"]
    health = requests.get(r.url + "/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    put_state(r.url, "blue-green")
    assert requests.get(r.url + "/ready", timeout=5).status_code == 200


def test_a_router_whose_stable_is_down_from_the_start_is_alive_but_not_ready(
    start_router: StartRouter, v2_service: ServerProcess
) -> None:
    r = start_router({"v1": f"http://127.0.0.1:{free_port()}", "v2": v2_service.url},
                     ready_path="/health")
    assert requests.get(r.url + "/health", timeout=5).status_code == 200
    ready = requests.get(r.url + "/ready", timeout=5)
    assert ready.status_code == 503
    assert error_of(ready)["code"] == "not_ready"


def test_metrics_parse_and_follow_requests_and_changes(shared_router: ServerProcess) -> None:
    r = shared_router  # two workers: the exposition aggregates both
    assert {"router_config_version", "router_traffic_weight"} <= {s.name for s in samples(r.url)}
    current = put_state(r.url, "canary", canary_weight=10)
    assert metric(r.url, "router_config_version") == current["config_version"]
    assert metric(r.url, "router_traffic_weight", version="v1") == 90
    assert metric(r.url, "router_traffic_weight", version="v2") == 10

    served = {"version": "v1", "code": "200"}

    def counts() -> tuple[float, float]:
        return (metric(r.url, "router_requests_total", **served),
                metric(r.url, "router_request_duration_seconds_count", version="v1"))

    before = settled(counts)
    answers = post_many(r.url, [{"X-Route-To": "v1"}] * 30)
    assert all(a.status == 200 for a in answers)
    after = settled(counts)
    assert (after[0] - before[0], after[1] - before[1]) == (30, 30)

    changed = change(r.url, strategy="blue-green", stable="v2", candidate="v1")
    assert changed["config_version"] == current["config_version"] + 1
    assert metric(r.url, "router_config_version") == current["config_version"] + 1
    assert metric(r.url, "router_traffic_weight", version="v1") == 0
    assert metric(r.url, "router_traffic_weight", version="v2") == 100
