"""The router's /metrics: one exposition for all its workers, bounded labels, live routing gauges."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from metrics.buckets import LATENCY_BUCKETS
from tests.metrics.conftest import Routers
from tests.router.rollout.live import ROWS, metric, scrape
from tests.servers import ServerProcess, settled, wait_until

PROPAGATION_S = 1.0  # the contract: every router worker routes by a change within 1 s

ROUTER_LABELS = {
    "version",
    "strategy",
    "code",
    "reason",
    "outcome",
    "result",
    "stable",
    "candidate",
    "le",
    "decision",
}


def worker_files(server: ServerProcess, kind: str) -> set[str]:
    """The multiprocess files of ``kind`` the server's live workers wrote (one per worker pid)."""
    environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
    settings = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    folder = Path(settings["PROMETHEUS_MULTIPROC_DIR"])
    return {p.name for p in folder.glob(f"{kind}_*.db") if p.stem.split("_")[-1].isdigit()}


def fresh_connection_predict(url: str, version: str, i: int) -> requests.Response:
    """One prediction on a new connection, so the kernel spreads them over the workers."""
    return requests.post(
        url + "/predict",
        json={"instances": [ROWS[i % len(ROWS)]]},
        timeout=10,
        headers={
            "X-Route-To": version,
            "X-User-ID": f"user-{uuid.uuid4()}",
            "X-Request-ID": f"req-{uuid.uuid4()}",
            "Connection": "close",
        },
    )


def test_per_version_counters_add_up_across_workers(
    routers: Routers, v1_service: ServerProcess, v2_service: ServerProcess
) -> None:
    url = routers.a.url
    before = settled(lambda: scrape(url))
    v1_before, v2_before = scrape(v1_service.url), scrape(v2_service.url)
    sent = {"v1": 0, "v2": 0}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # until both workers have answered (the kernel picks who accepts)
            versions = ["v1", "v2", "v2"] * 20
            answers = list(
                pool.map(
                    lambda iv: fresh_connection_predict(url, iv[1], iv[0]), enumerate(versions)
                )
            )
            assert all(r.status_code == 200 for r in answers)
            for version in versions:
                sent[version] += 1
            if len(worker_files(routers.a, "counter")) >= 2:
                break
    assert len(worker_files(routers.a, "counter")) >= 2, "only one worker answered"

    after = settled(lambda: scrape(url))
    v1_after, v2_after = scrape(v1_service.url), scrape(v2_service.url)
    for version, n in sent.items():
        for name in ("router_requests_total", "router_request_duration_seconds_count"):
            assert metric(after, name, version=version) - metric(before, name, version=version) == n
        assert (
            metric(after, "router_request_duration_seconds_bucket", version=version, le="+Inf")
            - metric(before, "router_request_duration_seconds_bucket", version=version, le="+Inf")
            == n
        )
    assert metric(after, "router_requests_total", code="200") - metric(
        before, "router_requests_total", code="200"
    ) == sum(sent.values())
    # the model services count the same requests, across their own workers
    assert (
        metric(v1_after, "model_requests_total", version="v1")
        - metric(v1_before, "model_requests_total", version="v1")
        == sent["v1"]
    )
    assert (
        metric(v2_after, "model_predictions_total", version="v2")
        - metric(v2_before, "model_predictions_total", version="v2")
        == sent["v2"]
    )


def test_label_sets_stay_bounded_whoever_sends(
    routers: Routers, v1_service: ServerProcess, v2_service: ServerProcess
) -> None:
    url = routers.a.url
    routers.admin(routers.a).call(
        "PATCH",
        "/admin/state",
        json={
            "strategy": "canary",
            "stable": "v1",
            "candidate": "v2",
            "canary_weight": 50,
            "shadow_percent": 0,
        },
    )
    time.sleep(PROPAGATION_S)  # until every worker routes, and so labels, by the canary state

    def send_batch() -> list[str]:
        ids = []
        with requests.Session() as session:
            for i in range(40):
                user, request_id = f"user-{uuid.uuid4()}", f"req-{uuid.uuid4()}"
                ids += [user, request_id]
                resp = session.post(
                    url + "/predict",
                    json={"instances": [ROWS[i]]},
                    headers={"X-User-ID": user, "X-Request-ID": request_id},
                    timeout=10,
                )
                assert resp.status_code == 200 and resp.headers["X-Request-ID"] == request_id
        return ids

    ids = send_batch()
    # a worker writes its request tallies every flush interval: read once every worker's are in
    series = settled(lambda: set(scrape(url)))
    ids += send_batch()
    assert settled(lambda: set(scrape(url))) == series, "new users or request ids made new series"

    for server in (routers.a, v1_service, v2_service):
        text = requests.get(server.url + "/metrics", timeout=10).text
        leaked = [i for i in ids if i in text]
        assert not leaked, f"{server.url}/metrics carries request-specific values: {leaked[:3]}"
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            assert set(sample.labels) <= ROUTER_LABELS, sample
            if "version" in sample.labels:
                assert sample.labels["version"] in {"v1", "v2", "v3"}
            if "code" in sample.labels:
                assert sample.labels["code"].isdigit() and len(sample.labels["code"]) == 3


def test_latency_histograms_resolve_a_quarter_millisecond_to_10s(routers: Routers, v1_service: ServerProcess) -> None:
    fresh_connection_predict(routers.a.url, "v1", 0)
    for server, name in (
        (routers.a, "router_request_duration_seconds_bucket"),
        (v1_service, "model_inference_duration_seconds_bucket"),
    ):
        bounds = sorted(
            {float(dict(labels)["le"]) for (n, labels) in scrape(server.url) if n == name}
        )
        assert bounds[-1] == float("inf")
        finite = bounds[:-1]
        assert (finite[0], finite[-1]) == (0.00025, 10.0)
        assert finite == list(LATENCY_BUCKETS)


def routing_gauges(url: str) -> tuple[dict[str, float], float]:
    samples = scrape(url)
    weights = {
        dict(labels)["version"]: value
        for (name, labels), value in samples.items()
        if name == "router_traffic_weight"
    }
    return weights, metric(samples, "router_config_version")


def wait_for_gauges(url: str, weights: dict[str, float], config_version: int) -> None:
    """The gauges show ``weights`` and ``config_version`` within 1.5 s (every worker refreshes)."""
    try:
        wait_until(lambda: routing_gauges(url) == (weights, config_version), timeout=1.5)
    except TimeoutError:
        raise AssertionError(
            f"{url}: {routing_gauges(url)}, expected {(weights, config_version)}"
        ) from None


def test_routing_gauges_follow_every_change_on_every_instance(routers: Routers) -> None:
    a, b = routers.admin(routers.a), routers.admin(routers.b)
    state = a.call(
        "PATCH",
        "/admin/state",
        json={
            "strategy": "canary",
            "stable": "v1",
            "candidate": "v2",
            "canary_weight": 30,
            "shadow_percent": 0,
        },
    )
    wait_for_gauges(routers.a.url, {"v1": 70, "v2": 30, "v3": 0}, state["config_version"])
    wait_for_gauges(routers.b.url, {"v1": 70, "v2": 30, "v3": 0}, state["config_version"])

    state = b.call(
        "PATCH", "/admin/state", json={"canary_weight": 60}
    )  # through the other instance
    wait_for_gauges(routers.a.url, {"v1": 40, "v2": 60, "v3": 0}, state["config_version"])

    state = b.call("PATCH", "/admin/state", json={"strategy": "blue-green"})
    wait_for_gauges(routers.a.url, {"v1": 100, "v2": 0, "v3": 0}, state["config_version"])

    state = b.call("POST", "/admin/promote")
    wait_for_gauges(routers.a.url, {"v1": 0, "v2": 100, "v3": 0}, state["config_version"])
    state = a.call("POST", "/admin/rollback")
    assert state["stable"] == "v1"
    wait_for_gauges(routers.b.url, {"v1": 100, "v2": 0, "v3": 0}, state["config_version"])


def test_a_forked_child_flushes_its_own_requests_only() -> None:
    """The tally of a process that forks: the child writes what it counts, never the parent's."""
    import os

    from prometheus_client import CollectorRegistry

    from metrics.router import RouterMetrics

    metrics = RouterMetrics(CollectorRegistry())
    metrics.request("v1", "canary", 200, 0.002)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: counts one request of its own
        try:
            metrics.request("v1", "canary", 200, 0.002)
            metrics.flush()
            value = metrics.requests.labels(version="v1", strategy="canary", code="200")._value.get()
            os.write(write, str(value).encode())
        finally:
            os._exit(0)
    os.close(write)
    seen = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    metrics.flush()
    assert seen == "1.0"
    assert metrics.requests.labels(version="v1", strategy="canary", code="200")._value.get() == 1
