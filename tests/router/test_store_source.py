"""Rollout statistics from every router instance, through the counts each publishes to the store.

Unit cases run real counters (``RouterMetrics`` on a registry of their own, read by
``LocalSource``) against a real SQLite file and the real Redis; the end-to-end case runs two
routers on one Redis in front of the real v1 and v2, and restarts one of them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from metrics.published import INTERVAL_S, CountsPublisher
from metrics.router import RouterMetrics
from metrics.sources import LocalSource, PrometheusSource, SourceUnavailable, StoreSource
from metrics.window import Reading, went_down
from common.config import ConfigError
from router.config import RouterConfig
from router.state import StateStore, open_store
from router.state.redis import RedisStateStore
from tests.router.conftest import StartRouter, in_process_router
from tests.router.helpers import admin, post_many
from tests.servers import ServerProcess, free_port, wait_until

OpenStore = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def state_url(request: pytest.FixtureRequest, sqlite_url: Callable[[], str]) -> str:
    if request.param == "sqlite":
        return sqlite_url()
    return str(request.getfixturevalue("redis_state_url"))


@pytest.fixture
def stores(state_url: str) -> Iterator[OpenStore]:
    """Opens store objects on one shared state (as each router process would)."""
    opened: list[StateStore] = []

    def open_one() -> StateStore:
        opened.append(open_store(state_url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


class Counters:
    """One router instance's counters (a fresh registry: a started or restarted instance)."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.metrics = RouterMetrics(registry)
        self.local = LocalSource(registry, before_read=self.metrics.flush)

    def serve(self, version: str, n: int, seconds: float = 0.004) -> None:
        for _ in range(n):
            self.metrics.request(version, "canary", 200, seconds)

    def fail(self, version: str, n: int) -> None:
        self.metrics.child(self.metrics.upstream_errors, version, "timeout").inc(n)

    def publisher(self, store: StateStore, instance: str, **kwargs: Any) -> CountsPublisher:
        return CountsPublisher(store, self.local, instance, **kwargs)


def requests_of(reading: Reading) -> dict[str, float]:
    return {version: counts.requests for version, counts in reading.items() if counts.requests}


HOST = socket.gethostname()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ROUTER_INSTANCE_ID": "eu-1", "DYNO": "web.1"}, "eu-1"),
        ({"DYNO": "web.2", "PROMETHEUS_MULTIPROC_DIR": "/tmp/m"}, "web.2"),
        ({"PROMETHEUS_MULTIPROC_DIR": "/tmp/router-a/prometheus"},
         f"{HOST}:/tmp/router-a/prometheus"),
        ({"ROUTER_INSTANCE_ID": "  "}, f"{HOST}:{os.getpid()}"),
    ],
)
def test_an_instance_is_named_by_its_setting_its_dyno_or_its_host(
    env: dict[str, str], expected: str
) -> None:
    config = RouterConfig.from_env({"ROUTER_UPSTREAMS": "v1=http://127.0.0.1:1", **env})
    assert config.instance_id == expected
    assert config.counts_retention_s == 3600


@pytest.mark.parametrize("name", ["web\n1", "x" * 257])
def test_an_unusable_instance_name_is_refused_naming_the_variable(name: str) -> None:
    with pytest.raises(ConfigError, match="ROUTER_INSTANCE_ID"):
        RouterConfig(upstreams={"v1": "http://127.0.0.1:1"}, stable="v1", instance_id=name)


def test_the_reading_adds_up_every_instance(stores: OpenStore) -> None:
    one, two = Counters(), Counters()
    one.serve("v1", 30, seconds=0.004)
    one.serve("v2", 5, seconds=0.3)
    one.fail("v2", 2)
    two.serve("v1", 12, seconds=0.3)
    one.publisher(stores(), "web.1").publish()
    two.publisher(stores(), "web.2").publish()

    reading = StoreSource(stores()).read()

    assert requests_of(reading) == {"v1": 42, "v2": 5}
    assert (reading["v2"].errors, reading["v1"].errors) == (2, 0)
    buckets = reading["v1"].latency_buckets
    assert (buckets[0.005], buckets[0.5], buckets[float("inf")]) == (30, 42, 42)


def test_a_restarted_instance_carries_its_earlier_counts_on(stores: OpenStore) -> None:
    before = Counters()
    before.serve("v1", 30)
    before.serve("v2", 4)
    first = before.publisher(stores(), "web.1")
    first.publish()
    before.serve("v1", 3)  # after its last periodic publish: published as it stops
    first.stop()
    reader = StoreSource(stores())
    assert requests_of(reader.read()) == {"v1": 33, "v2": 4}

    after = Counters()  # the same instance started again: its counters begin at zero
    again = after.publisher(stores(), "web.1")
    again.publish()
    restarted = reader.read()
    assert requests_of(restarted) == {"v1": 33, "v2": 4}
    after.serve("v2", 6)
    again.publish()

    latest = reader.read()
    assert requests_of(latest) == {"v1": 33, "v2": 10}
    assert requests_of(StoreSource(stores()).read()) == {"v1": 33, "v2": 10}
    assert not went_down(latest, restarted)


def test_the_workers_of_one_instance_publish_its_counts_once(stores: OpenStore) -> None:
    shared = Counters()  # two worker processes of one instance read the same counters
    workers = [shared.publisher(stores(), "web.1", run="this-run") for _ in range(2)]
    shared.serve("v1", 20)
    published = [worker.publish() for worker in workers]
    assert [document is not None for document in published] == [True, False]
    assert requests_of(StoreSource(stores()).read()) == {"v1": 20}

    shared.serve("v1", 5)  # not published yet: the other worker's analysis still sees them
    assert requests_of(StoreSource(stores(), workers[1]).read()) == {"v1": 25}

    workers[0].stop()  # its last publish, then the other worker takes over
    shared.serve("v1", 2)
    assert workers[1].publish() is not None
    assert requests_of(StoreSource(stores()).read()) == {"v1": 27}


def test_old_and_new_run_of_one_instance_overlapping_count_once(stores: OpenStore) -> None:
    old, new = Counters(), Counters()
    old_publisher = old.publisher(stores(), "web.1")
    new_publisher = new.publisher(stores(), "web.1")
    old.serve("v1", 10)
    old_publisher.publish()
    new.serve("v2", 3)
    stores().release_lease(old_publisher.lease, old_publisher.holder)  # its lease lapses
    assert new_publisher.publish() is not None
    old.serve("v1", 4)  # still serving, not publishing: the new run holds the lease
    assert old_publisher.publish() is None
    new_publisher.stop()
    assert old_publisher.publish() is not None

    assert requests_of(StoreSource(stores()).read()) == {"v1": 14, "v2": 3}


def test_a_stopped_instance_counts_until_its_counts_expire(stores: OpenStore) -> None:
    gone, staying = Counters(), Counters()
    gone.serve("v1", 7)
    staying.serve("v1", 1)
    stopped = gone.publisher(stores(), "web.2", retention_s=1.0)
    stopped.publish()
    stopped.stop()
    staying.publisher(stores(), "web.1").publish()
    reader = StoreSource(stores())
    assert requests_of(reader.read()) == {"v1": 8}

    store = stores()
    wait_until(lambda: "web.2" not in store.published_counts(), timeout=10)
    assert requests_of(StoreSource(stores()).read()) == {"v1": 1}
    assert requests_of(reader.read()) == {"v1": 8}  # a reader that saw it keeps it: never less


def test_an_unreachable_store_leaves_the_statistics_unavailable() -> None:
    store = RedisStateStore(f"redis://127.0.0.1:{free_port()}/0")
    counters = Counters()
    try:
        for source in (StoreSource(store), StoreSource(store, counters.publisher(store, "web.1"))):
            with pytest.raises(SourceUnavailable, match="cannot be read"):
                source.read()
    finally:
        store.close()


def test_a_router_app_publishes_until_closed(models: dict[str, str], sqlite_url: Callable[[], str]
                                             ) -> None:
    url = sqlite_url()
    running = set(threading.enumerate())
    with in_process_router(models, url, instance_id="in-process") as app:
        ctx = app.extensions["router"]
        assert isinstance(ctx.source, StoreSource)
        resp = app.test_client().post("/predict", json={"instances": [[0.0] * 30]},
                                      headers={"X-Route-To": "v2"})
        assert resp.status_code == 200
        [publishing] = [thread for thread in threading.enumerate()
                        if thread not in running and thread.name == "counts-publisher"]
    assert not publishing.is_alive()
    store = open_store(url)
    try:
        [(instance, document)] = store.published_counts().items()
        assert instance == "in-process"
        assert requests_of(StoreSource(store).read()) == {"v2": 1}
        assert document["runs"]
    finally:
        store.close()


def test_a_router_reading_prometheus_publishes_nothing(models: dict[str, str],
                                                       sqlite_url: Callable[[], str]) -> None:
    with in_process_router(models, sqlite_url(), prometheus_url="http://127.0.0.1:9") as app:
        ctx = app.extensions["router"]
        assert isinstance(ctx.source, PrometheusSource) and ctx.publisher is None


# -- two routers, one restarted ------------------------------------------------------------------


def analysed(server: ServerProcess) -> dict[str, float]:
    """Requests per version in the router's GET /admin/analysis."""
    resp = admin("GET", server.url, "/admin/analysis")
    assert resp.status_code == 200, resp.text
    return {v: s["requests"] for v, s in resp.json()["versions"].items() if s["requests"]}


@pytest.mark.slow
def test_two_routers_count_every_request_once_across_a_restart(
    models: dict[str, str], start_router: StartRouter, redis_state_url: str
) -> None:
    def start(name: str) -> ServerProcess:
        return start_router(models, state_url=redis_state_url, ROUTER_INSTANCE_ID=name)

    sent: Counter[str] = Counter()

    def send(server: ServerProcess, version: str, n: int) -> None:
        answers = post_many(server.url, [{"X-Route-To": version}] * n)
        assert [(a.status, a.version) for a in answers] == [(200, version)] * n
        sent[version] += n

    one, two = start("router-1"), start("router-2")
    send(one, "v1", 40)
    send(two, "v1", 30)
    send(two, "v2", 20)
    two.stop()  # its workers publish their last counts as they exit
    two = start("router-2")  # the same instance again, its counters at zero
    send(two, "v2", 25)
    send(one, "v2", 10)
    send(two, "v1", 5)
    expected = dict(sent)

    for server in (one, two):
        wait_until(lambda server=server: analysed(server) == expected, timeout=20)
    store = open_store(redis_state_url)
    try:
        assert requests_of(StoreSource(store).read()) == expected
        assert set(store.published_counts()) == {"router-1", "router-2"}
    finally:
        store.close()
    time.sleep(3 * INTERVAL_S)  # a few more publishes: nothing counted twice after the fact
    assert analysed(one) == expected

    two.stop()  # stopped for good: its requests stay in the sum until its counts expire
    assert analysed(one) == expected
