"""Liveness, readiness and the Prometheus exposition of a real router."""

from __future__ import annotations

import requests

from tests.router.conftest import StartRouter
from tests.router.helpers import change, error_of, metric, post_many, samples, state
from tests.servers import ServerProcess, free_port


def test_ready_follows_the_stable_service_while_health_stays_up(
    start_router: StartRouter, v1_service: ServerProcess
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    r = start_router({"v1": v1_service.url, "v2": down}, ROUTER_STRATEGY="blue-green",
                     WEB_CONCURRENCY="1")

    ready = requests.get(r.url + "/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["stable"] == "v1"
    assert ready.json()["config_version"] == state(r.url)["config_version"]

    change(r.url, stable="v2", candidate="v1")  # the stable role moves to a service that is down
    not_ready = requests.get(r.url + "/ready", timeout=5)
    assert not_ready.status_code == 503
    error = error_of(not_ready)
    assert error["code"] == "not_ready" and "v2" in error["message"]
    health = requests.get(r.url + "/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    change(r.url, stable="v1", candidate="v2")
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


def test_metrics_parse_and_follow_requests_and_changes(
    start_router: StartRouter, models: dict[str, str]
) -> None:
    r = start_router(models)  # two workers: the exposition aggregates both
    assert {"router_config_version", "router_traffic_weight"} <= {s.name for s in samples(r.url)}
    version = state(r.url)["config_version"]
    assert metric(r.url, "router_config_version") == version
    assert metric(r.url, "router_traffic_weight", version="v1") == 100
    assert metric(r.url, "router_traffic_weight", version="v2") == 0

    answers = post_many(r.url, [{}] * 30)
    assert all(a.status == 200 for a in answers)
    assert metric(r.url, "router_requests_total", version="v1", strategy="release-in-place",
                  code="200") == 30
    assert metric(r.url, "router_request_duration_seconds_count", version="v1") == 30

    changed = change(r.url, strategy="canary", canary_weight=25)
    assert changed["config_version"] == version + 1
    assert metric(r.url, "router_config_version") == version + 1
    assert metric(r.url, "router_traffic_weight", version="v1") == 75
    assert metric(r.url, "router_traffic_weight", version="v2") == 25
