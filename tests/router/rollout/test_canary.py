"""Canary rollouts driven by the router's own measurements, against real model services."""

from __future__ import annotations

import math
import time
from itertools import pairwise
from typing import Any

import pytest

from tests.router.rollout.live import (
    Admin,
    Sent,
    Stack,
    StartRouter,
    StartService,
    Traffic,
    check_named,
    judged,
    metric,
    predict,
    scrape,
    share,
    wait_all_answered_by,
)

pytestmark = pytest.mark.slow

PROPAGATION_S = 0.5  # a state change reaches the router's other worker within its refresh interval


def assert_share(sent: list[Sent], version: str, weight: int) -> None:
    """``version`` answered ``weight`` percent of ``sent``, within a 4-sigma binomial bound."""
    hits, n = share(sent, version)
    assert n > 0
    p = weight / 100
    bound = 4 * math.sqrt(p * (1 - p) / n) + 1 / n
    assert abs(hits / n - p) <= bound, f"{version} answered {hits}/{n}, expected {weight} %"


def decided(before: dict, after: dict, decision: str) -> float:
    """How many ``decision``s router_rollout_decisions_total counted between two scrapes."""
    name = "router_rollout_decisions_total"
    return metric(after, name, decision=decision) - metric(before, name, decision=decision)


def test_a_good_candidate_is_promoted_through_every_step(shared: Stack) -> None:
    router, admin = shared.router, shared.admin
    before = scrape(router.url)
    plan = {"strategy": "canary", "steps": [10, 50, 100], "interval_s": 1, "min_requests": 30}
    with Traffic(router.url) as traffic:
        started = time.time()
        state = admin.start(plan)
        assert (state["strategy"], state["canary_weight"], state["weights"]) == (
            "canary",
            10,
            {"v1": 90, "v2": 10},
        )
        rollout = admin.wait_done()
    assert rollout["status"] == "promoted"
    state = admin.state()
    assert (state["stable"], state["candidate"], state["weights"]) == (
        "v2",
        "v1",
        {"v1": 0, "v2": 100},
    )

    decisions = judged(rollout)
    assert [(d["action"], d["step"], d["decision"]) for d in decisions] == [
        ("advance", 0, "pass"),
        ("promote", 1, "pass"),
    ]
    for d in decisions:
        assert d["samples"]["stable_requests"] >= 30 and d["samples"]["candidate_requests"] >= 30
        errors = check_named(d, "error_rate_increase")
        assert errors["decision"] == "pass" and errors["threshold"] == 0.02
        low, high = errors["interval"]
        assert low <= errors["value"] <= high  # the estimate lies in its confidence interval
        for name in ("latency_p50", "latency_p99"):
            latency = check_named(d, name)
            # each quantile's own estimate and limit, in ms: the limit is 1.5x stable's or +25 ms
            assert latency["decision"] == "pass" and latency["value"] is not None
            # the limit (ms), unknown (None) while stable's own quantile is not yet bounded
            assert latency["threshold"] is None or latency["threshold"] >= 25.0
    waits = [d for d in rollout["decisions"] if d["action"] == "wait"]
    for d in waits:
        assert d["decision"] == "wait" and check_named(d, "sample_size")["value"] < 30

    # clients saw each step's weight: 10 % of answers from v2, then 50 %
    advance, promote = decisions[0]["time"], decisions[1]["time"]
    assert_share(traffic.between(started + PROPAGATION_S, advance), "v2", 10)
    assert_share(traffic.between(advance + PROPAGATION_S, promote), "v2", 50)
    wait_all_answered_by(router.url, "v2")

    # every decision is an audit event carrying its evidence
    events = [e for e in admin.rollout_events() if e["action"] != "rollout.observe"]
    assert [e["action"] for e in events if e["action"] != "rollout.wait"] == [
        "rollout.start",
        "rollout.advance",
        "rollout.promote",
    ]
    by_action = {e["action"]: e for e in events}
    assert by_action["rollout.advance"]["new"]["canary_weight"] == 50
    assert by_action["rollout.promote"]["new"]["stable"] == "v2"
    assert [e["evidence"] for e in events if e["action"] != "rollout.start"] == rollout["decisions"]

    after = scrape(router.url)
    assert decided(before, after, "pass") == 2
    assert decided(before, after, "promote") == 1
    assert decided(before, after, "wait") == len(waits)
    assert decided(before, after, "fail") == decided(before, after, "rollback") == 0


@pytest.mark.parametrize(
    ("fault", "steps", "failing_check"),
    [
        ({"FAULT_ERROR_RATE": "0.2"}, [10, 50, 100], "error_rate_increase"),
        ({"FAULT_LATENCY_MS": "300"}, [20, 50, 100], "latency_p50"),
    ],
    ids=["errors", "latency"],
)
def test_a_bad_candidate_is_rolled_back_on_evidence_of_harm(
    fault: dict[str, str],
    steps: list[int],
    failing_check: str,
    v1_service: Any,
    start_service: StartService,
    start_router: StartRouter,
) -> None:
    bad_v2 = start_service("v2", wait=False, WEB_CONCURRENCY="1", **fault)
    router = start_router({"v1": v1_service.url, "v2": bad_v2.url})
    bad_v2.wait_ready()
    admin = Admin(router.url)
    plan = {"strategy": "canary", "steps": steps, "interval_s": 1, "min_requests": 40}
    with Traffic(router.url, threads=6) as traffic:
        started = time.time()
        admin.start(plan)
        rollout = admin.wait_done()
        wait_all_answered_by(router.url, "v1")
    assert rollout["status"] == "rolled_back"
    decisions = judged(rollout)
    # passing steps (no evidence of harm yet) may come first; the candidate never reaches 100 %
    *passed, last = decisions
    assert all(d["action"] == "advance" and d["decision"] == "pass" for d in passed)
    assert (last["action"], last["decision"]) == ("rollback", "fail")
    failed = [c["name"] for c in last["checks"] if c["decision"] == "fail"]
    assert failing_check in failed
    found = check_named(last, failing_check)
    # harm is shown: the whole confidence interval lies beyond the limit
    assert found["value"] > found["threshold"] and found["interval"][0] > found["threshold"]

    state = admin.state()
    assert (state["stable"], state["canary_weight"], state["weights"]) == (
        "v1",
        0,
        {"v1": 100, "v2": 0},
    )
    after = predict(router.url, 50)
    assert all(r.status_code == 200 and r.headers["X-Model-Version"] == "v1" for r in after)

    # the candidate hurt fewer clients than its share of the traffic in that window
    window = traffic.between(started, last["time"])
    failures = [s for s in window if s.status != 200]
    assert len(failures) < steps[len(passed)] / 100 * len(window)
    if "FAULT_ERROR_RATE" in fault:
        assert failures, "the faulty candidate answered some clients"
        assert all(s.version == "v2" for s in failures)

    samples = scrape(router.url)
    assert metric(samples, "router_rollout_decisions_total", decision="fail") == 1
    assert metric(samples, "router_rollout_decisions_total", decision="rollback") == 1
    assert metric(samples, "router_rollout_decisions_total", decision="pass") == len(passed)
    (event,) = [e for e in admin.events() if e["action"] == "rollout.rollback"]
    assert event["evidence"] == rollout["decisions"][-1]
    assert event["new"]["canary_weight"] == 0


def test_both_versions_failing_five_percent_is_no_harm_and_the_canary_is_promoted(
    start_service: StartService, start_router: StartRouter
) -> None:
    # the same error rate on both sides: no difference beyond max_error_rate_increase to show
    v1 = start_service("v1", wait=False, FAULT_ERROR_RATE="0.05")
    v2 = start_service("v2", wait=False, FAULT_ERROR_RATE="0.05")
    router = start_router({"v1": v1.url, "v2": v2.url}, wait=False)
    for server in (v1, v2, router):
        server.wait_ready()
    admin = Admin(router.url)
    plan = {"strategy": "canary", "steps": [10, 50, 100], "interval_s": 1, "min_requests": 60}
    with Traffic(router.url, threads=6) as traffic:
        admin.start(plan)
        rollout = admin.wait_done(timeout=120)
    assert rollout["status"] == "promoted", judged(rollout)[-1]
    failed = [s for s in traffic.sent if s.status != 200]
    assert len(failed) >= 0.02 * len(traffic.sent), "the faults reached the clients"
    for d in judged(rollout):
        errors = check_named(d, "error_rate_increase")
        low, high = errors["interval"]
        assert low <= 0.02 and errors["decision"] == "pass"
        assert d["samples"]["candidate_requests"] > 0


def test_without_traffic_the_rollout_waits_and_pause_resume_abort_work(shared: Stack) -> None:
    router, admin = shared.router, shared.admin
    before = scrape(router.url)
    interval = 1.0
    admin.start(
        {"strategy": "canary", "steps": [10, 50, 100], "interval_s": interval, "min_requests": 20}
    )
    rollout = admin.wait_for(lambda r: len(r["decisions"]) >= 3, timeout=30)
    assert rollout["status"] == "running"
    assert {(d["action"], d["decision"]) for d in rollout["decisions"]} == {("wait", "wait")}
    for d in rollout["decisions"]:
        sample_size = check_named(d, "sample_size")
        assert (sample_size["value"], sample_size["threshold"]) == (0, 20)
    times = [d["time"] for d in rollout["decisions"]]
    assert all(b - a >= interval * 0.99 for a, b in pairwise(times)), "one verdict per interval"
    assert admin.state()["canary_weight"] == 10

    paused = admin.call("POST", "/admin/rollout/pause")["rollout"]
    assert paused["status"] == "paused"
    admin.call("POST", "/admin/rollout/pause", expect=409)
    seen = len(paused["decisions"])
    time.sleep(1.5 * interval)
    rollout = admin.rollout()
    assert rollout["status"] == "paused" and len(rollout["decisions"]) == seen

    assert admin.call("POST", "/admin/rollout/resume")["rollout"]["status"] == "running"
    admin.call("POST", "/admin/rollout/resume", expect=409)
    rollout = admin.wait_for(lambda r: len(r["decisions"]) > seen, timeout=30)
    assert rollout["decisions"][-1]["action"] == "wait" and rollout["status"] == "running"
    assert admin.state()["canary_weight"] == 10

    state = admin.call("POST", "/admin/rollback", json={"reason": "abort the test rollout"})
    assert state["rollout"]["status"] == "aborted"
    assert (state["canary_weight"], state["weights"]) == (0, {"v1": 100, "v2": 0})
    seen = len(state["rollout"]["decisions"])
    time.sleep(1.5 * interval)
    assert len(admin.rollout()["decisions"]) == seen
    actions = [(e["action"], e["actor"]) for e in admin.rollout_events()]
    assert ("rollout.pause", "admin-api") in actions and ("rollout.resume", "admin-api") in actions
    assert actions[-1] == ("rollback", "admin-api")
    after = scrape(router.url)
    assert decided(before, after, "pass") == 0
    assert decided(before, after, "wait") == seen


def test_a_good_candidate_raises_no_false_alarm_in_ten_rollouts(shared: Stack) -> None:
    router, admin = shared.router, shared.admin
    plan = {"strategy": "canary", "steps": [50, 100], "interval_s": 1, "min_requests": 20}
    outcomes = []
    with Traffic(router.url):
        for _ in range(10):
            admin.call(
                "PATCH",
                "/admin/state",
                json={"strategy": "canary", "stable": "v1", "candidate": "v2", "canary_weight": 0},
            )
            admin.start(plan)
            outcomes.append(admin.wait_done())
    failed = [judged(r) for r in outcomes if r["status"] != "promoted"]
    assert not failed, f"good v2 rolled back: {failed}"
    assert all(d["decision"] == "pass" for r in outcomes for d in judged(r))


def test_manual_promotion_holds_until_resumed(shared: Stack) -> None:
    router, admin = shared.router, shared.admin
    plan = {
        "strategy": "canary",
        "steps": [50, 100],
        "interval_s": 1,
        "min_requests": 20,
        "manual_promotion": True,
    }
    with Traffic(router.url):
        admin.start(plan)
        rollout = admin.wait_for(lambda r: r["status"] != "running")
        assert rollout["status"] == "awaiting_promotion"
        assert judged(rollout)[-1]["action"] == "await-promotion"
        held = len(rollout["decisions"])
        time.sleep(1.5)  # more than an interval with traffic: still held, nothing decided
        rollout = admin.rollout()
        assert rollout["status"] == "awaiting_promotion" and len(rollout["decisions"]) == held
        state = admin.state()
        assert (state["stable"], state["canary_weight"]) == ("v1", 50)

        resumed = admin.call("POST", "/admin/rollout/resume")["rollout"]
    assert resumed["status"] == "promoted"
    state = admin.state()
    assert (state["stable"], state["weights"]) == ("v2", {"v1": 0, "v2": 100})
    wait_all_answered_by(router.url, "v2")


def test_plans_are_validated_over_http(shared: Stack) -> None:
    admin = shared.admin  # a router without ROUTER_MODEL_ADMIN_TOKEN
    version = admin.state()["config_version"]
    for plan in (
        {"strategy": "canary", "steps": [10, 50]},
        {"strategy": "canary", "steps": [10, 50, 100], "interval_s": -1},
        {"strategy": "canary", "thresholds": {"max_p99": 2}},
        {"strategy": "release-in-place", "release_version": "v2"},
    ):
        error = admin.call("POST", "/admin/rollout", expect=422, json=plan)["error"]
        assert error["code"] == "invalid_plan" and error["message"]
    assert admin.state()["config_version"] == version
    admin.start({"strategy": "canary", "steps": [10, 100], "interval_s": 30})
    error = admin.call("POST", "/admin/rollout", expect=409, json={"strategy": "canary"})["error"]
    assert error["code"] == "rollout_active"
