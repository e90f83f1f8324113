"""A real Prometheus server scraping the router and both model services.

Needs the ``prometheus`` binary (Debian's ``prometheus`` package; ``PROMETHEUS_BIN`` names another):
without it the test skips, unless CI is "true", where it fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from metrics.sources import PrometheusSource
from metrics.window import VersionCounts, window
from tests.router.rollout.live import Admin, Traffic, metric, scrape, shut
from tests.router.helpers import PREDICT_BODY
from tests.servers import ServerProcess, free_port, router, wait_until

JSON = {"Content-Type": "application/json"}

pytestmark = pytest.mark.slow


class Prometheus:
    """``prometheus`` on a free loopback port, scraping ``targets`` every second."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(  # JSON is YAML
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {"job_name": job, "static_configs": [{"targets": hosts}]}
                        for job, hosts in targets.items()
                    ],
                }
            )
        )
        self._log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.workdir = workdir

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "prometheus.log").read_text()[-3000:])
            try:
                return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 30)

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def by_version(self, promql: str) -> dict[str, float]:
        return {r["metric"]["version"]: float(r["value"][1]) for r in self.query(promql)}

    def every_target_up(self, count: int) -> bool:
        targets = requests.get(self.url + "/api/v1/targets", timeout=5).json()
        return [t["health"] for t in targets["data"]["activeTargets"]] == ["up"] * count

    def wait_for_versions(self, promql: str, versions: set[str]) -> dict[str, float]:
        """``promql``'s value per version once every one of ``versions`` has a number."""

        def answered() -> dict[str, float] | None:
            values = self.by_version(promql)
            complete = set(values) == versions and not any(math.isnan(v) for v in values.values())
            return values if complete else None

        return wait_until(answered, 30, interval=0.5)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    binary = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if not binary:
        reason = "the prometheus binary is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true, so the Prometheus integration test must run")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def scraped_stack(
    prometheus_binary: str,
    v1_service: ServerProcess,
    v2_service: ServerProcess,
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, Prometheus]]:
    workdir = tmp_path_factory.mktemp("prometheus")
    server = router(
        {"v1": v1_service.url, "v2": v2_service.url}, log_dir, f"sqlite:///{workdir / 'state.db'}"
    )

    def host(server: ServerProcess) -> str:
        return server.url.removeprefix("http://")

    prometheus = Prometheus(
        prometheus_binary,
        workdir,
        {"router": [host(server)], "model": [host(v1_service), host(v2_service)]},
    )
    try:
        server.wait_ready()
        prometheus.wait_ready()
        yield server, prometheus
    finally:
        prometheus.stop()
        shut(server)


RATE = "sum by (version) (rate(router_requests_total[15s]))"
P99 = (
    "histogram_quantile(0.99, "
    "sum by (le, version) (rate(router_request_duration_seconds_bucket[15s])))"
)


def test_prometheus_reads_per_version_rate_latency_and_counts(
    scraped_stack: tuple[ServerProcess, Prometheus],
    v1_service: ServerProcess,
    v2_service: ServerProcess,
) -> None:
    server, prometheus = scraped_stack
    wait_until(lambda: prometheus.every_target_up(3), 30, interval=0.2)
    Admin(server.url).call(
        "PATCH", "/admin/state", json={"strategy": "canary", "canary_weight": 50}
    )

    with Traffic(server.url, threads=3) as traffic:
        started = time.time()
        rates = prometheus.wait_for_versions(RATE, {"v1", "v2"})
        quantiles = prometheus.wait_for_versions(P99, {"v1", "v2"})
    elapsed = time.time() - started
    assert {s.status for s in traffic.sent} == {200}
    sent = {v: sum(1 for s in traffic.sent if s.version == v) for v in ("v1", "v2")}

    for version in ("v1", "v2"):
        # per second: more than nothing, less than everything sent within one second
        assert 0 < rates[version] <= sent[version] / min(elapsed, 1.0)
        assert 0.001 <= quantiles[version] <= 10.0  # inside the histogram's resolved range
    assert 0.5 <= rates["v1"] / rates["v2"] <= 2.0  # a 50 % canary: comparable rates

    # totals: PrometheusSource catches up with what was sent within a few scrapes
    def caught_up() -> dict[str, VersionCounts] | None:
        reading = PrometheusSource(prometheus.url).read()
        counts = {v: reading[v].requests for v in ("v1", "v2") if v in reading}
        return reading if counts == sent else None

    reading = wait_until(caught_up, 15, interval=0.5)
    for version in ("v1", "v2"):
        assert reading[version].errors == 0
        assert reading[version].latency_buckets[float("inf")] == sent[version]

    # the model services' own metrics arrive too, as they expose them
    for service, version in ((v1_service, "v1"), (v2_service, "v2")):
        exposed = metric(scrape(service.url), "model_requests_total", version=version)
        query = "sum by (version) (model_requests_total)"
        wait_until(
            lambda v=version, n=exposed, q=query: prometheus.by_version(q).get(v) == n,
            15,
            interval=0.5,
        )


def test_an_instance_restarting_or_leaving_does_not_lower_the_totals(
    prometheus_binary: str,
    v1_service: ServerProcess,
    v2_service: ServerProcess,
    log_dir: Path,
    tmp_path: Path,
) -> None:
    """Two router instances; one restarts on its port (its counters begin again at 0), then
    goes away. PrometheusSource goes on counting from where each instance was, so the totals
    never fall and a window holds only the requests made in it."""
    upstreams = {"v1": v1_service.url, "v2": v2_service.url}
    first = router(upstreams, log_dir, f"sqlite:///{tmp_path / 'a.db'}")
    second = router(upstreams, log_dir, f"sqlite:///{tmp_path / 'b.db'}")
    port = second.port
    prometheus = Prometheus(
        prometheus_binary, tmp_path, {"router": [s.url.removeprefix("http://") for s in (first, second)]}
    )
    servers = [first, second]
    try:
        for server in servers:
            server.wait_ready()
        prometheus.wait_ready()
        source = PrometheusSource(prometheus.url)

        def send(server: ServerProcess, count: int) -> None:
            for _ in range(count):
                resp = requests.post(server.url + "/predict", data=PREDICT_BODY, headers=JSON, timeout=10)
                assert resp.status_code == 200, resp.text

        def totals_reach(requests_: float) -> Any:
            return wait_until(
                lambda: (r := source.read()).get("v1") and r["v1"].requests == requests_ and r, 20, 0.5
            )

        def instance_count(server_port: int) -> float | None:
            for series in prometheus.query("sum by (instance) (router_requests_total)"):
                if series["metric"]["instance"] == f"127.0.0.1:{server_port}":
                    return float(series["value"][1])
            return None

        send(first, 20)
        send(second, 30)
        before = totals_reach(50)

        shut(second)
        servers[1] = second = router(upstreams, log_dir, f"sqlite:///{tmp_path / 'b.db'}", port=port)
        second.wait_ready()
        send(second, 10)
        wait_until(lambda: instance_count(port) == 10, 20, 0.5)  # Prometheus saw the restart
        after_restart = source.read()
        assert after_restart["v1"].requests == 60
        assert window(after_restart, before)["v1"].requests == 10
        assert after_restart["v1"].latency_buckets[float("inf")] == 60

        shut(second)
        wait_until(lambda: instance_count(port) is None, 20, 0.5)  # its series went stale
        send(first, 5)
        after_leaving = totals_reach(65)
        assert window(after_leaving, after_restart)["v1"].requests == 5
    finally:
        prometheus.stop()
        for server in servers:
            shut(server)
