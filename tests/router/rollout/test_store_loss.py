"""A state store that forgets: a Redis without persistence restarted mid-rollout comes back empty.

Each router writes back the last state it read (rollout included) at the next config_version,
with a ``state.restored`` audit event; exactly one router wins; the rollout goes on to its end;
the history the store lost is in the routers' logs (logger ``router.audit``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.config import RouterConfig
from router.live_state import LiveState, Snapshot, with_routing
from router.state import StoredState
from router.state.sqlite import SQLiteStateStore
from tests.router.helpers import RedisProcess
from tests.router.rollout.live import Admin, StartRouter, Traffic
from tests.servers import ServerProcess, wait_until

CONFIG = RouterConfig(upstreams={"v1": "http://127.0.0.1:9", "v2": "http://127.0.0.1:10"},
                      stable="v1", candidate="v2", strategy="canary")
ROLLOUT = {"id": "r-1", "status": "running", "phase": "canary", "step": 0,
           "plan": {"strategy": "canary", "steps": [30, 100]}, "started_at": 100.0,
           "release": {"version": "v2", "slot": "v2"}, "decisions": []}


# -- one process's view, in process ----------------------------------------------------------


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def open_live(store_path: Path) -> Iterator[Any]:
    """``open_live()``: a LiveState of its own (a router process) on the test's one state file."""
    opened: list[SQLiteStateStore] = []

    def open_one() -> LiveState:
        opened.append(SQLiteStateStore(store_path))
        return LiveState(CONFIG, opened[-1])

    yield open_one
    for store in opened:
        store.close()


def forget(path: Path) -> None:
    """Empty the store as a Redis without persistence comes back from a restart."""
    # sqlite3's own context manager commits but does not close: closing() does.
    with closing(sqlite3.connect(path)) as conn, conn:
        for table in ("routing_state", "audit_events", "releases", "leases", "sqlite_sequence"):
            conn.execute(f"DELETE FROM {table}")


def mid_rollout(live: LiveState) -> Snapshot:
    """A canary rollout started and at 30 %: config_version 3."""
    live.change(lambda s: replace(s, rollout=ROLLOUT), actor="admin", action="rollout.start",
                reason=None)
    return live.change(lambda s: with_routing(s, canary_weight=30), actor="rollout-controller",
                       action="rollout.advance", reason=None)


def test_a_store_that_came_back_empty_gets_the_last_snapshot_back(
        open_live: Any, store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = open_live()
    before = mid_rollout(live)
    assert before.config_version == 3
    forget(store_path)

    with caplog.at_level(logging.INFO, logger="router.audit"):
        after = live.refresh()

    assert after.config_version == 4
    assert after.routing == before.routing
    assert after.rollout == {**before.rollout, "config_versions": [2, 3, 4]}
    assert live.store.read() == StoredState(4, after.document())
    [restored] = live.store.events()
    assert (restored["actor"], restored["action"], restored["config_version"]) == (
        "router", "state.restored", 4)
    assert restored["reason"] == ("the state store came back empty (config_version 0 < 3): "
                                  "restored this router's last snapshot")
    assert restored["new"]["canary_weight"] == 30 and restored["old"]["canary_weight"] is None
    [record] = live.store.releases()
    assert (record["id"], record["outcome"], record["config_versions"]) == (
        "r-1", "running", [2, 3, 4])
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "router.audit"]
    assert [line["audit_event"]["action"] for line in logged if "audit_event" in line] == [
        "state.restored"]


def test_a_store_older_than_the_snapshot_is_overwritten_upward(
        open_live: Any, store_path: Path) -> None:
    live = open_live()
    before = mid_rollout(live)
    forget(store_path)
    newcomer = open_live()  # a router started while the store was empty: its configured default
    assert (newcomer.current.config_version, newcomer.current.rollout) == (1, None)

    after = live.refresh()

    assert (after.config_version, after.rollout["id"]) == (4, "r-1")
    assert after.routing == before.routing
    [restored] = live.store.events()
    assert restored["reason"].startswith("the state store came back older (config_version 1 < 3)")
    assert newcomer.refresh() == after


def test_of_two_routers_one_restores_and_the_other_reads_it(
        open_live: Any, store_path: Path) -> None:
    first, second = open_live(), open_live()
    mid_rollout(first)
    assert second.refresh().config_version == 3
    forget(store_path)

    barrier = threading.Barrier(2)
    seen: list[Snapshot] = []

    def refresh(live: LiveState) -> None:
        barrier.wait()
        seen.append(live.refresh())

    threads = [threading.Thread(target=refresh, args=(live,)) for live in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [s.config_version for s in seen] == [4, 4]
    assert seen[0] == seen[1]
    assert [e["action"] for e in first.store.events()] == ["state.restored"]


def test_a_change_on_a_store_that_forgot_is_made_on_the_restored_state(
        open_live: Any, store_path: Path) -> None:
    live = open_live()
    mid_rollout(live)
    forget(store_path)

    changed = live.change(lambda s: with_routing(s, canary_weight=60), actor="rollout-controller",
                          action="rollout.advance", reason=None)

    assert changed.config_version == 5
    assert (changed.routing.canary_weight, changed.rollout["config_versions"]) == (60, [2, 3, 4, 5])
    assert [(e["action"], e["config_version"]) for e in live.store.events()] == [
        ("state.restored", 4), ("rollout.advance", 5)]


def test_a_new_deployment_still_starts_from_its_configuration(open_live: Any) -> None:
    live = open_live()
    assert live.current.config_version == 1
    assert (live.current.routing.strategy, live.current.rollout) == ("canary", None)
    assert live.store.events() == []


# -- routers on a real Redis restarted empty ---------------------------------------------------


class StateSampler:
    """GET /admin/state on each router in turn until stopped: every config_version it answered."""

    def __init__(self, urls: list[str]) -> None:
        self.admins = [Admin(url) for url in urls]
        self.seen: dict[str, list[int]] = {url: [] for url in urls}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StateSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for admin in self.admins:
                try:
                    self.seen[admin.url].append(admin.state()["config_version"])
                except Exception as exc:  # reported by the test, not lost
                    self.failures.append(f"{admin.url}: {exc!r}")


def audit_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The structured audit events a router wrote to its log."""
    found = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"audit_event"' in line:
            found.append(json.loads(line)["audit_event"])
    return found


def store_reachable(admin: Admin) -> bool:
    return bool(admin.state()["store"]["reachable"])


@pytest.mark.slow
@pytest.mark.redis
def test_a_rollout_goes_on_when_its_redis_restarts_empty(
    upstreams: dict[str, str], start_router: StartRouter, private_redis: RedisProcess
) -> None:
    # One worker each: two processes of one router may each answer GET /admin/state, and while
    # the store is down each answers with the last state it read, which can differ by a change.
    a = start_router(upstreams, private_redis.url, wait=False, WEB_CONCURRENCY="1")
    b = start_router(upstreams, private_redis.url, WEB_CONCURRENCY="1")
    a.wait_ready()
    admin_a, admin_b = Admin(a.url), Admin(b.url)
    plan = {"strategy": "canary", "steps": [30, 60, 100], "interval_s": 1, "min_requests": 20}

    with StateSampler([a.url, b.url]) as sampler, Traffic(a.url, threads=3) as traffic_a, \
            Traffic(b.url, threads=3) as traffic_b:
        started = admin_a.start(plan)
        admin_b.wait_for(lambda r: r["step"] >= 1 or r["status"] != "running")

        def settled() -> int | None:
            versions = {admin_a.state()["config_version"], admin_b.state()["config_version"]}
            return versions.pop() if len(versions) == 1 else None

        lost_at = wait_until(settled, timeout=10)
        before = admin_a.rollout()
        assert (before["status"], before["id"]) == ("running", started["rollout"]["id"])

        private_redis.kill()
        wait_until(lambda: not store_reachable(admin_a) and not store_reachable(admin_b), 10)
        private_redis.start()  # the same port, nothing in it

        after = admin_a.wait_done(timeout=90)
        final = admin_b.state()

    assert (after["id"], after["status"]) == (before["id"], "promoted")
    assert (final["stable"], final["rollout"]["status"]) == ("v2", "promoted")
    answers = traffic_a.sent + traffic_b.sent
    assert answers and all(s.status == 200 for s in answers)

    assert not sampler.failures, sampler.failures[:3]
    for url, versions in sampler.seen.items():
        assert versions == sorted(versions), f"{url} answered a lower config_version"
        assert max(versions) > lost_at

    events = admin_b.events()
    restored = [e for e in events if e["action"] == "state.restored"]
    assert len(restored) == 1, restored
    assert events[0] == restored[0]  # what the store held before the restart is gone from it
    assert restored[0]["actor"] == "router"
    assert restored[0]["config_version"] == lost_at + 1
    assert restored[0]["reason"] == (f"the state store came back empty (config_version 0 < "
                                     f"{lost_at}): restored this router's last snapshot")
    assert restored[0]["new"]["rollout"]["id"] == before["id"]
    assert all(e["config_version"] > lost_at for e in events)

    # The router logs keep the history the store lost: every change before the restart.
    logged = audit_lines(a) + audit_lines(b)
    before_loss = sorted(e["config_version"] for e in logged if e["config_version"] <= lost_at)
    assert before_loss == list(range(2, lost_at + 1))
    actions = {e["action"] for e in logged if e["config_version"] <= lost_at}
    assert {"rollout.start", "rollout.advance"} <= actions
    assert [e["config_version"] for e in logged if e["action"] == "state.restored"] == [lost_at + 1]

    [record] = admin_b.call("GET", "/admin/releases")["releases"]
    assert (record["id"], record["outcome"]) == (before["id"], "promoted")
    assert lost_at + 1 in record["config_versions"]
