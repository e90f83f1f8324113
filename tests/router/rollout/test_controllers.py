"""Exactly one controller drives a rollout: across a restart, and across router instances."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.router.rollout.live import Admin, StartRouter, Traffic, judged, metric, scrape

pytestmark = pytest.mark.slow

PLAN = {"strategy": "canary", "steps": [10, 50, 100], "interval_s": 1, "min_requests": 30}


def test_a_router_restarted_mid_rollout_resumes_it(
    upstreams: dict[str, str], start_router: StartRouter, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    first = start_router(upstreams, state_url)
    admin = Admin(first.url)
    with Traffic(first.url):
        admin.start(PLAN)
        before = admin.wait_for(lambda r: r["step"] == 1 or r["status"] != "running")
    assert (before["status"], before["step"]) == ("running", 1)
    assert first.stop() == 0  # SIGTERM: a graceful stop, mid-rollout

    second = start_router(upstreams, state_url)
    admin = Admin(second.url)
    resumed = admin.rollout()
    assert (resumed["id"], resumed["status"], resumed["step"]) == (before["id"], "running", 1)
    assert admin.state()["canary_weight"] == 50
    with Traffic(second.url):
        after = admin.wait_done()
    assert after["status"] == "promoted"
    decisions = judged(after)
    assert [(d["action"], d["step"]) for d in decisions] == [("advance", 0), ("promote", 1)]
    assert decisions[0]["controller"] != decisions[1]["controller"]  # the new process took over
    assert all(d["step"] == 1 for d in after["decisions"][len(before["decisions"]) :])
    assert admin.state()["stable"] == "v2"


def test_two_routers_on_one_state_drive_the_rollout_once(
    upstreams: dict[str, str], redis_state_url: str, start_router: StartRouter
) -> None:
    a = start_router(upstreams, redis_state_url, wait=False)
    b = start_router(upstreams, redis_state_url)
    a.wait_ready()
    plan = {**PLAN, "min_requests": 20}  # each router measures only the traffic it carries
    with Traffic(a.url, threads=3), Traffic(b.url, threads=3):
        Admin(a.url).start(plan)
        rollout = Admin(b.url).wait_done()
    assert rollout["status"] == "promoted"

    time.sleep(2 * plan["interval_s"])  # a second driver would have acted by now
    for router in (a, b):
        state = Admin(router.url).state()
        assert (state["stable"], state["candidate"], state["rollout"]["status"]) == (
            "v2",
            "v1",
            "promoted",
        )
    events = Admin(a.url).rollout_events()
    decided = [e for e in events
               if e["actor"] == "rollout-controller" and e["action"] != "rollout.observe"]
    assert [e["action"] for e in decided if e["action"] != "rollout.wait"] == [
        "rollout.advance",
        "rollout.promote",
    ]
    controllers = {e["evidence"]["controller"] for e in decided}
    assert len(controllers) == 1, f"more than one controller decided: {controllers}"
    assert [e["evidence"] for e in decided] == rollout["decisions"]

    promotes = sum(
        metric(scrape(r.url), "router_rollout_decisions_total", decision="promote") for r in (a, b)
    )
    passes = sum(
        metric(scrape(r.url), "router_rollout_decisions_total", decision="pass") for r in (a, b)
    )
    assert (promotes, passes) == (1, 2)
