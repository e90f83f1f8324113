"""Blue-green rollouts: a reference window on the live colour, an atomic switch, then a bake."""

from __future__ import annotations

import time

import pytest

from tests.router.rollout.live import Stack, Traffic, check_named, judged

pytestmark = pytest.mark.slow

PROPAGATION_S = 0.5

# Before and after a switch are different minutes on a shared machine: the bake's latency limit is
# wide, so that only a broken colour (not a busy neighbour) switches back.
PLAN = {
    "strategy": "blue-green",
    "interval_s": 1,
    "min_requests": 30,
    "thresholds": {"max_p99_ratio": 5},
}


@pytest.mark.parametrize("preview", [False, True], ids=["switch", "preview-then-switch"])
def test_blue_green_switches_after_the_reference_window_and_completes_the_bake(
    shared: Stack, preview: bool
) -> None:
    router, admin = shared.router, shared.admin
    with Traffic(router.url) as traffic:
        started = time.time()
        state = admin.start({**PLAN, "preview_analysis": preview})
        assert state["strategy"] == ("shadow" if preview else "blue-green")
        assert state["weights"] == {"v1": 100, "v2": 0}
        rollout = admin.wait_done()
    assert rollout["status"] == "promoted"
    decisions = judged(rollout)
    expected = [("reference", "switch"), ("bake", "complete")]
    if preview:
        expected.insert(0, ("shadow", "shadow-passed"))
    assert [(d["phase"], d["action"]) for d in decisions] == expected
    switch, bake = decisions[-2], decisions[-1]
    assert switch["samples"]["reference_requests"] >= 30
    assert bake["samples"]["requests"] >= 30 and bake["samples"]["reference_requests"] >= 30
    assert check_named(bake, "error_rate_increase")["decision"] == "pass"
    assert rollout["reference"]["requests"] == switch["samples"]["reference_requests"]

    state = admin.state()
    assert (state["strategy"], state["stable"], state["candidate"], state["previous_stable"]) == (
        "blue-green",
        "v2",
        "v1",
        "v1",
    )
    assert state["weights"] == {"v1": 0, "v2": 100}

    # one colour at a time: v1 answered everything before the switch, v2 everything after it
    before = traffic.between(started, switch["time"])
    after = traffic.between(switch["time"] + PROPAGATION_S, bake["time"])
    assert before and after
    assert {(s.status, s.version) for s in before} == {(200, "v1")}
    assert {(s.status, s.version) for s in after} == {(200, "v2")}

    (event,) = [e for e in admin.rollout_events() if e["action"] == "rollout.switch"]
    assert (event["old"]["stable"], event["new"]["stable"]) == ("v1", "v2")
