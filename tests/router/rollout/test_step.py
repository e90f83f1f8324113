"""A rollout's next step, decided purely from the rollout document, its plan, the routing, what was
observed and the time: every phase, every outcome, and the effects the controller must carry out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from metrics.analysis import FAIL, PASS, WAIT, Verdict
from metrics.window import Reading, VersionCounts
from router.live_state import Snapshot
from router.rollout import new_rollout
from router.rollout_plan import RolloutPlan, parse_plan
from router.rollout_step import (
    LOAD_BUDGET_S,
    Effect,
    Observation,
    Step,
    analyse,
    analysis_due,
    apply_routing,
    counts_doc,
    failed,
    first_phase,
    input_drift,
    next_step,
    quality_since,
    wants_reading,
)
from strategies.base import RoutingState

PASSED, WAITING, FAILED = Verdict(PASS, ()), Verdict(WAIT, ()), Verdict(FAIL, ())
START = RoutingState("canary", stable="v1", candidate="v2")
SERVED = {"v1": "v1", "v2": "v2"}
NOW = 1000.0
SINCE = 100.0  # when the judged phase began

CANARY = {"strategy": "canary", "steps": [10, 25, 50, 100], "interval_s": 30}
SHADOW = {"strategy": "shadow-then-canary", "steps": [10, 50, 100], "shadow_analyses": 2}
BLUE_GREEN = {"strategy": "blue-green", "bake_analyses": 2}
PREVIEW = {"strategy": "blue-green", "preview_analysis": True}
IN_PLACE = {"strategy": "release-in-place", "version": "v3", "bake_analyses": 2}


def plan_of(doc: dict[str, Any]) -> RolloutPlan:
    if doc["strategy"] == "release-in-place":
        return parse_plan(doc, candidate=None, versions=["v1", "v2"], can_reload=True, stable="v1")
    return parse_plan(doc, candidate="v2", versions=["v1", "v2"], can_reload=True, stable="v1")


def reading(v1: float = 0, v2: float = 0, v3: float = 0, errors: float = 0) -> Reading:
    """Cumulative counts: requests per version (``errors`` of the candidate's failed)."""
    return {
        "v1": VersionCounts(requests=v1),
        "v2": VersionCounts(requests=v2, errors=errors),
        "v3": VersionCounts(requests=v3),
    }


BEGAN = reading(1000, 100, 0)  # counts when the phase began
LATER = reading(3000, 400, 0)  # counts now


def started(
    doc: dict[str, Any], routing: RoutingState = START, **changes: Any
) -> tuple[dict[str, Any], RolloutPlan, RoutingState]:
    """A rollout of ``doc`` as ``new_rollout`` starts it, then ``changes`` to its document."""
    plan = plan_of(doc)
    rollout, fields = new_rollout(plan, Snapshot(7, routing), 0.0, dict(SERVED))
    return {**rollout, **changes}, plan, replace(routing, **fields)


def judged(
    doc: dict[str, Any], phase: str | None = None, routing: RoutingState = START, **changes: Any
) -> tuple[dict[str, Any], RolloutPlan, RoutingState]:
    """A rollout in a judged phase whose evidence began at BEGAN at SINCE, last analysed at 0."""
    rollout, plan, after = started(doc, routing)
    versions = [v for v in (rollout["versions"] or {}).values() if v]
    evidence = {"since": SINCE, "counts": counts_doc(BEGAN, versions)}
    rollout = {
        **rollout,
        "evidence": evidence,
        "step_counts": counts_doc(BEGAN, versions),
        "analysed_at": 0.0,
        **({"phase": phase} if phase else {}),
        **changes,
    }
    return rollout, plan, after


def decide(
    rollout: dict[str, Any],
    plan: RolloutPlan,
    routing: RoutingState,
    verdict: Verdict | None = PASSED,
    seen: Observation | None = None,
    now: float = NOW,
) -> Step | None:
    return next_step(rollout, plan, routing, seen or Observation(reading=LATER), now, verdict)


# -- load -------------------------------------------------------------------------------------------


def test_a_plan_with_a_version_starts_by_loading_it_without_moving_traffic() -> None:
    rollout, plan, routing = started({**CANARY, "version": "v3"})
    assert rollout["phase"] == "load" and rollout["versions"] == SERVED
    assert (routing.canary_weight, routing.shadow_percent, routing.candidate) == (0, 0, "v2")
    step = decide(rollout, plan, routing, None, Observation(), now=5.0)
    assert step is not None and step.action == "load"
    assert step.updates == {"load": {"requested_at": 5.0}}
    assert step.effect == Effect("reload", "v2", "v3")
    assert step.on_failure is not None and step.on_failure.action == "abort"
    assert step.on_failure.routing_op == "rollback" and step.on_failure.decision == "rollback"
    assert step.on_failure.updates["status"] == "aborted"
    assert step.decision is None and step.routing is None


FIRST_PHASES = [  # plan, the phase it starts in once loaded, the routing it needs
    (
        {**CANARY, "version": "v3"},
        "canary",
        {"strategy": "canary", "candidate": "v2", "canary_weight": 10, "shadow_percent": 0},
    ),
    (
        {**SHADOW, "version": "v3"},
        "shadow",
        {"strategy": "shadow", "candidate": "v2", "canary_weight": 0, "shadow_percent": 100},
    ),
    (
        {**PREVIEW, "version": "v3"},
        "shadow",
        {"strategy": "shadow", "candidate": "v2", "canary_weight": 0, "shadow_percent": 100},
    ),
    (
        {**BLUE_GREEN, "version": "v3"},
        "reference",
        {"strategy": "blue-green", "candidate": "v2", "canary_weight": 0, "shadow_percent": 0},
    ),
]


@pytest.mark.parametrize(
    ("doc", "phase", "routing"),
    FIRST_PHASES,
    ids=[d["strategy"] + (" preview" if "preview_analysis" in d else "") for d, *_ in FIRST_PHASES],
)
def test_once_loaded_the_plan_starts_its_first_phase(
    doc: dict[str, Any], phase: str, routing: dict[str, Any]
) -> None:
    rollout, plan, start = started(doc, load={"requested_at": 5.0})
    step = decide(rollout, plan, start, None, Observation(loaded=True, reported="v3"), now=12.0)
    assert step is not None and step.action == "loaded"
    assert step.updates == {
        "phase": phase,
        "versions": {"v1": "v1", "v2": "v3"},
        "evidence": None,
        "load": {"requested_at": 5.0, "loaded_at": 12.0},
    }
    assert step.routing == routing == first_phase(plan)[1]
    assert step.effect is None and step.decision is None


LOADING = [  # seconds since the load was asked for, what the slot reports, action
    (0.0, None, None),
    (LOAD_BUDGET_S, "v2", None),  # at the budget: still waiting
    (LOAD_BUDGET_S + 0.5, "v2", "abort"),
    (LOAD_BUDGET_S + 0.5, None, "abort"),
]


@pytest.mark.parametrize(("elapsed", "reported", "action"), LOADING)
def test_a_load_that_does_not_arrive_in_time_aborts(
    elapsed: float, reported: str | None, action: str | None
) -> None:
    rollout, plan, routing = started({**CANARY, "version": "v3"}, load={"requested_at": 5.0})
    step = decide(rollout, plan, routing, None, Observation(reported=reported), now=5.0 + elapsed)
    if action is None:
        assert step is None
        return
    assert step is not None and step.action == "abort" and step.routing_op == "rollback"
    assert step.updates["status"] == "aborted" and step.updates["phase"] == "done"
    assert step.updates["error"] == (
        f"slot v2 reports {reported or 'no version'}, not v3, "
        f"{LOAD_BUDGET_S:g} s after it was asked to load it"
    )
    assert step.decision == "rollback"


# -- gathering evidence -----------------------------------------------------------------------------


def test_a_moved_slot_aborts_any_running_phase() -> None:
    why = "slot v2 now serves v9, not v2: the version changed during the rollout"
    for rollout, plan, routing in (judged(CANARY), started(CANARY), judged(IN_PLACE, "bake")):
        step = decide(rollout, plan, routing, PASSED, Observation(moved=why))
        assert step is not None and step.action == "abort"
        assert step.updates == {"status": "aborted", "phase": "done", "error": why}
        assert step.routing_op == "rollback" and step.decision == "rollback"
        assert step.detail == {"why": why} and not step.quiet


def test_a_phase_without_evidence_observes_quietly_to_begin_it() -> None:
    rollout, plan, routing = started(CANARY)
    assert rollout["evidence"] is None
    step = decide(rollout, plan, routing, None, Observation(reading=BEGAN), now=3.0)
    assert step is not None and step.action == "observe" and step.quiet
    counts = {v: BEGAN[v].to_doc() for v in ("v1", "v2")}
    assert step.updates == {
        "evidence": {"since": 3.0, "counts": counts},
        "step_counts": counts,
        "analysed_at": 3.0,
    }
    assert step.verdict is None and step.routing is None and step.decision is None
    # no reading, no step
    assert decide(rollout, plan, routing, None, Observation(), now=3.0) is None


def test_nothing_happens_without_a_verdict_or_a_reading() -> None:
    rollout, plan, routing = judged(CANARY)
    assert decide(rollout, plan, routing, None) is None
    assert decide(rollout, plan, routing, PASSED, Observation()) is None
    for status in ("paused", "awaiting_promotion", "promoted", "rolled_back"):
        assert decide({**rollout, "status": status}, plan, routing, PASSED) is None


# -- canary -----------------------------------------------------------------------------------------

CANARY_OUTCOMES = [
    # name, plan changes, rollout changes, verdict, action, updates, routing, routing_op, decision
    ("wait keeps every sample", {}, {}, WAITING, "wait", {"analysed_at": NOW}, None, None, None),
    (
        "a first failure retries",
        {"max_failed_analyses": 2},
        {},
        FAILED,
        "retry",
        {"failed_analyses": 1, "analysed_at": NOW},
        None,
        None,
        None,
    ),
    (
        "a second failure rolls back",
        {"max_failed_analyses": 2},
        {"failed_analyses": 1},
        FAILED,
        "rollback",
        {"status": "rolled_back", "phase": "done", "failed_analyses": 2},
        None,
        "rollback",
        "rollback",
    ),
    (
        "one failure rolls back by default",
        {},
        {},
        FAILED,
        "rollback",
        {"status": "rolled_back", "phase": "done", "failed_analyses": 1},
        None,
        "rollback",
        "rollback",
    ),
    (
        "a pass advances to the next weight",
        {},
        {"step": 0},
        PASSED,
        "advance",
        {
            "step": 1,
            "passed_in_phase": 0,
            "step_counts": counts_doc(LATER, ["v1", "v2"]),
            "analysed_at": NOW,
        },
        {"canary_weight": 25},
        None,
        None,
    ),
    (
        "a pass at 25 advances to 50",
        {},
        {"step": 1},
        PASSED,
        "advance",
        {
            "step": 2,
            "passed_in_phase": 0,
            "step_counts": counts_doc(LATER, ["v1", "v2"]),
            "analysed_at": NOW,
        },
        {"canary_weight": 50},
        None,
        None,
    ),
    (
        "a pass at the last step before 100 promotes",
        {},
        {"step": 2},
        PASSED,
        "promote",
        {"status": "promoted", "phase": "done"},
        None,
        "promote",
        "promote",
    ),
    (
        "manual promotion waits at the gate",
        {"manual_promotion": True},
        {"step": 2},
        PASSED,
        "await-promotion",
        {"status": "awaiting_promotion"},
        None,
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("plan_changes", "changes", "verdict", "action", "updates", "routing", "op", "decision"),
    [c[1:] for c in CANARY_OUTCOMES],
    ids=[c[0] for c in CANARY_OUTCOMES],
)
def test_canary_outcomes(
    plan_changes: dict[str, Any],
    changes: dict[str, Any],
    verdict: Verdict,
    action: str,
    updates: dict[str, Any],
    routing: dict[str, Any] | None,
    op: str | None,
    decision: str | None,
) -> None:
    rollout, plan, start = judged({**CANARY, **plan_changes}, **changes)
    assert rollout["phase"] == "canary" and start.canary_weight == 10
    step = decide(rollout, plan, start, verdict)
    assert step is not None
    assert (step.action, step.updates, step.routing, step.routing_op, step.decision) == (
        action,
        updates,
        routing,
        op,
        decision,
    )
    assert step.verdict is verdict and step.effect is None and not step.quiet


def test_an_advance_keeps_the_phase_evidence_and_renews_the_step() -> None:
    rollout, plan, routing = judged(CANARY)
    step = decide(rollout, plan, routing, PASSED)
    assert step is not None and step.action == "advance"
    after = {**rollout, **step.updates}
    assert after["evidence"] == rollout["evidence"]  # the counts of when the phase began
    assert after["evidence"]["counts"]["v2"]["requests"] == 100
    assert after["step_counts"]["v2"]["requests"] == 400  # the counts of now
    # the next analysis judges everything since the phase began ...
    now = reading(5000, 700, 0)
    verdict = analyse(after, plan, apply_routing(routing, step.routing, None), now, NOW + 30)
    assert verdict.samples == {"stable_requests": 4000, "candidate_requests": 600}
    # ... and the step needs min_requests (100) of its own: 20 new candidate requests wait
    short = analyse(after, plan, routing, reading(5000, 420, 0), NOW + 30)
    assert short.decision == WAIT and short.checks[0].name == "sample_size"
    assert short.checks[0].value == 20 and short.samples["candidate_requests"] == 320


def test_analyse_judges_the_candidate_on_everything_since_the_phase_began() -> None:
    rollout, plan, routing = judged(
        CANARY, step_counts=counts_doc(reading(2900, 390), ["v1", "v2"])
    )
    # 30 of the candidate's 300 requests since the phase began failed, none of stable's: but the
    # step holds only 10 candidate requests
    harmful = analyse(rollout, plan, routing, reading(3000, 400, errors=30), NOW)
    assert harmful.decision == FAIL and harmful.deciding().name == "error_rate_increase"
    assert harmful.samples == {"stable_requests": 2000, "candidate_requests": 300}
    assert harmful.deciding().value == pytest.approx(0.1)
    clean = analyse(rollout, plan, routing, reading(3000, 400), NOW)
    assert clean.decision == WAIT and clean.deciding().name == "sample_size"
    rate = 300 / (NOW - SINCE)  # the candidate's requests a second since the phase began
    need = plan.min_requests - 10  # the step has 10 of its min_requests
    assert clean.needed == need and clean.minutes == pytest.approx(need / rate / 60)
    step = decide(
        rollout, plan, routing, harmful, Observation(reading=reading(3000, 400, errors=30))
    )
    assert step is not None and step.action == "rollback" and step.verdict is harmful


# -- shadow ------------------------------------------------------------------------------------------

SHADOW_ROUTING = replace(START, strategy="shadow", shadow_percent=100)


def test_shadow_passes_count_up_to_shadow_analyses_then_the_canary_begins() -> None:
    rollout, plan, routing = judged(SHADOW, routing=SHADOW_ROUTING)
    assert rollout["phase"] == "shadow" and routing.strategy == "shadow"
    first = decide(rollout, plan, routing, PASSED)
    assert first is not None and first.action == "pass"
    assert first.updates == {
        "passed_in_phase": 1,
        "step_counts": counts_doc(LATER, ["v1", "v2"]),
        "analysed_at": NOW,
    }
    second = decide({**rollout, **first.updates}, plan, routing, PASSED)
    assert second is not None and second.action == "advance"
    counts = counts_doc(LATER, ["v1", "v2"])
    assert second.updates == {
        "phase": "canary",
        "step": 0,
        "passed_in_phase": 0,
        "evidence": {"since": NOW, "counts": counts},  # a new phase
        "step_counts": counts,
        "analysed_at": NOW,
    }
    assert second.routing == {"strategy": "canary", "shadow_percent": 0, "canary_weight": 10}
    assert second.routing_op is None and second.decision is None


def test_shadow_straight_to_100_promotes() -> None:
    rollout, plan, routing = judged({**SHADOW, "steps": [100], "shadow_analyses": 1})
    step = decide(rollout, plan, routing, PASSED)
    assert step is not None and step.action == "promote" and step.routing_op == "promote"
    assert step.updates == {"status": "promoted", "phase": "done"} and step.decision == "promote"


def test_blue_green_preview_passes_to_the_reference_window() -> None:
    rollout, plan, routing = judged(PREVIEW)
    assert rollout["phase"] == "shadow"
    step = decide(rollout, plan, routing, PASSED)
    assert step is not None and step.action == "shadow-passed"
    counts = counts_doc(LATER, ["v1", "v2"])
    assert step.updates == {
        "phase": "reference",
        "passed_in_phase": 0,
        "evidence": {"since": NOW, "counts": counts},
        "step_counts": counts,
        "analysed_at": NOW,
    }
    assert step.routing == {"strategy": "blue-green", "shadow_percent": 0}
    assert step.decision is None and step.effect is None


@pytest.mark.parametrize(
    ("doc", "verdict", "action"),
    [(SHADOW, WAITING, "wait"), (SHADOW, FAILED, "rollback"), (PREVIEW, FAILED, "rollback")],
)
def test_shadow_waits_and_failures(doc: dict[str, Any], verdict: Verdict, action: str) -> None:
    rollout, plan, routing = judged(doc)
    step = decide(rollout, plan, routing, verdict)
    assert step is not None and step.action == action
    assert step.routing_op == ("rollback" if verdict is FAILED else None)


# -- reference and switch ----------------------------------------------------------------------------


def test_blue_green_switches_after_the_reference_window_once_the_candidate_is_ready() -> None:
    rollout, plan, routing = judged(BLUE_GREEN)
    assert rollout["phase"] == "reference" and routing.strategy == "blue-green"
    step = decide(rollout, plan, routing, PASSED)
    assert step is not None and step.action == "switch"
    assert step.effect == Effect("check_ready", "v2") and step.routing_op == "switch"
    only_v2 = counts_doc(LATER, ["v2"])  # after the switch, v2 is stable: its counts from now
    assert step.updates == {
        "phase": "bake",
        "passed_in_phase": 0,
        "reference": VersionCounts(requests=2000).to_doc(),  # stable's since the window began
        "reference_version": "v1",  # judged against v1's labelled predictions of that window
        "reference_since": SINCE,
        "evidence": {"since": NOW, "counts": only_v2},
        "step_counts": only_v2,
        "analysed_at": NOW,
    }
    assert step.on_failure is not None and step.on_failure.action == "abort-not-ready"
    assert step.on_failure.updates == {"status": "rolled_back", "phase": "done"}
    assert step.on_failure.routing == {"shadow_percent": 0}
    assert step.on_failure.decision == "rollback" and step.on_failure.routing_op is None
    assert failed(step, "slot v2 is not ready").action == "abort-not-ready"


def test_release_in_place_reloads_stable_after_the_reference_window() -> None:
    rollout, plan, routing = judged(IN_PLACE)
    assert rollout["phase"] == "reference" and rollout["versions"] == {"v1": "v1"}
    assert routing.strategy == "release-in-place"
    step = decide(rollout, plan, routing, PASSED)
    assert step is not None and step.action == "reload"
    assert step.effect == Effect("reload", "v1", "v3")
    v3 = counts_doc(LATER, ["v3"])  # stable's slot serves v3 from now on
    assert step.updates == {
        "phase": "bake",
        "passed_in_phase": 0,
        "reference": VersionCounts(requests=2000).to_doc(),
        "reference_version": "v1",
        "reference_since": SINCE,
        "restore_version": "v1",
        "versions": {"v1": "v3"},
        "evidence": {"since": NOW, "counts": v3},
        "step_counts": v3,
        "analysed_at": NOW,
    }
    assert step.routing is None and step.routing_op is None
    assert step.on_failure is not None and step.on_failure.action == "abort-reload-failed"
    after = failed(step, "slot v1 answered 500: no such version")
    assert after.updates == {
        "status": "rolled_back",
        "phase": "done",
        "error": "slot v1 answered 500: no such version",
    }
    assert after.decision == "rollback" and after.effect is None and after.on_failure is None


def test_the_reference_window_waits_for_stable_samples() -> None:
    rollout, plan, routing = judged(BLUE_GREEN)
    verdict = analyse(rollout, plan, routing, reading(1030, 100), NOW)
    assert verdict.decision == WAIT and verdict.checks[0].name == "sample_size"
    assert verdict.needed == plan.min_requests - 30 and verdict.samples == {"reference_requests": 30}
    assert analyse(rollout, plan, routing, LATER, NOW).decision == PASS


# -- bake ---------------------------------------------------------------------------------------------

BAKED = RoutingState("blue-green", stable="v2", candidate="v1", previous_stable="v1")


@pytest.mark.parametrize(
    ("doc", "routing"),
    [(BLUE_GREEN, BAKED), (IN_PLACE, None)],
    ids=["blue-green", "release-in-place"],
)
def test_bake_passes_count_up_to_bake_analyses_then_complete(
    doc: dict[str, Any], routing: RoutingState | None
) -> None:
    rollout, plan, start = judged(doc, "bake")
    routing = routing or start
    first = decide(rollout, plan, routing, PASSED)
    assert first is not None and first.action == "pass" and first.updates["passed_in_phase"] == 1
    done = decide({**rollout, **first.updates}, plan, routing, PASSED)
    assert done is not None and done.action == "complete"
    assert done.updates == {"status": "promoted", "phase": "done"}
    assert done.decision == "promote" and done.routing_op is None and done.effect is None


def test_a_failed_bake_after_a_reload_reloads_the_version_stable_served() -> None:
    rollout, plan, routing = judged(IN_PLACE, "bake", restore_version="v1", versions={"v1": "v3"})
    step = decide(rollout, plan, routing, FAILED)
    assert step is not None and step.action == "rollback" and step.decision == "rollback"
    assert step.effect == Effect("reload", "v1", "v1")
    assert step.updates == {"status": "rolled_back", "phase": "done", "failed_analyses": 1}
    after = failed(step, "connection refused")
    assert after.action == "rollback" and after.effect is None
    assert after.detail == {"restore_failed": "reloading v1 failed: connection refused"}
    assert after.updates == step.updates  # rolled back all the same


def test_a_failed_blue_green_bake_switches_back() -> None:
    rollout, plan, _ = judged(BLUE_GREEN, "bake")
    step = decide(rollout, plan, BAKED, FAILED)
    assert step is not None and step.action == "rollback" and step.effect is None
    after = apply_routing(BAKED, step.routing, step.routing_op)
    assert (after.stable, after.candidate, after.previous_stable) == ("v1", "v2", None)


# -- failed effects and routing transitions ---------------------------------------------------------


def test_failed_fills_the_error_into_the_alternative_step() -> None:
    rollout, plan, routing = started({**CANARY, "version": "v3"})
    load = decide(rollout, plan, routing, None, Observation(), now=5.0)
    assert load is not None
    after = failed(load, "slot v2 answered 404: unknown version v3")
    why = "loading v3 into slot v2 failed: slot v2 answered 404: unknown version v3"
    assert after.action == "abort" and after.updates["error"] == why
    assert after.detail == {"why": why} and after.effect is None and after.on_failure is None
    # a step without an alternative is recorded as it is, without its effect
    plain = Step("pass", {"note": "{error}"}, effect=Effect("check_ready", "v2"))
    assert failed(plain, "x") == Step("pass", {"note": "x"})


ROUTING_CASES = [  # name, before, fields, op, after
    (
        "promote a canary",
        replace(START, canary_weight=50),
        None,
        "promote",
        RoutingState("canary", "v2", "v1", 0, 0, "v1"),
    ),
    (
        "roll a canary back",
        replace(START, canary_weight=50),
        None,
        "rollback",
        RoutingState("canary", "v1", "v2", 0, 0, None),
    ),
    (
        "roll a shadow back",
        SHADOW_ROUTING,
        None,
        "rollback",
        RoutingState("shadow", "v1", "v2", 0, 0, None),
    ),
    (
        "switch from the preview",
        SHADOW_ROUTING,
        {"shadow_percent": 0},
        "switch",
        RoutingState("blue-green", "v2", "v1", 0, 0, "v1"),
    ),
    (
        "switch blue-green",
        RoutingState("blue-green", "v1", "v2"),
        None,
        "switch",
        RoutingState("blue-green", "v2", "v1", 0, 0, "v1"),
    ),
    ("roll a switch back", BAKED, None, "rollback", RoutingState("blue-green", "v1", "v2")),
    (
        "fields alone",
        replace(START, canary_weight=10),
        {"canary_weight": 25},
        None,
        replace(START, canary_weight=25),
    ),
    ("nothing", START, None, None, START),
]


@pytest.mark.parametrize(
    ("before", "fields", "op", "after"),
    [c[1:] for c in ROUTING_CASES],
    ids=[c[0] for c in ROUTING_CASES],
)
def test_apply_routing(
    before: RoutingState, fields: dict[str, Any] | None, op: str | None, after: RoutingState
) -> None:
    assert apply_routing(before, fields, op) == after


# -- when the controller reads and analyses ---------------------------------------------------------

READING_TABLE = [  # name, rollout changes, now, wants a reading, analysis due
    ("no evidence yet", {"evidence": None, "analysed_at": None}, 5.0, True, False),
    ("evidence, interval not over", {}, 29.9, False, False),
    ("evidence, interval over", {}, 30.0, True, True),
    ("analysed since", {"analysed_at": 20.0}, 49.0, False, False),
    ("analysed since, interval over", {"analysed_at": 20.0}, 50.0, True, True),
    ("loading", {"phase": "load", "evidence": None}, 100.0, False, False),
    ("done", {"phase": "done"}, 100.0, False, True),
    ("paused", {"status": "paused"}, 100.0, False, True),
    ("at the manual gate", {"status": "awaiting_promotion"}, 100.0, False, True),
]


@pytest.mark.parametrize(
    ("changes", "now", "wants", "due"),
    [c[1:] for c in READING_TABLE],
    ids=[c[0] for c in READING_TABLE],
)
def test_wants_reading_and_analysis_due(
    changes: dict[str, Any], now: float, wants: bool, due: bool
) -> None:
    rollout, plan, _ = judged(CANARY, **changes)
    assert plan.interval_s == 30
    assert wants_reading(rollout, plan, now) is wants
    assert analysis_due(rollout, plan, now) is due


# -- labels and inputs --------------------------------------------------------------------------------


def test_labels_count_from_the_phase_and_in_a_bake_from_the_reference_window() -> None:
    assert quality_since({"phase": "canary", "evidence": {"since": 500.0}}) == 500.0
    assert quality_since({"phase": "bake", "evidence": {"since": 900.0},
                          "reference_since": 300.0}) == 300.0


def test_the_evidence_says_when_the_input_mix_shifts() -> None:
    quiet = {"available": True, "columns": [{"name": "age", "psi": 0.02, "reading": "stable"}]}
    moved = {"available": True, "columns": [{"name": "income", "psi": 0.4, "reading": "major"},
                                            {"name": "age", "psi": 0.03, "reading": "stable"}]}
    calm = input_drift({"blue": ("v1", quiet), "green": ("v2", quiet)})
    assert calm["shifting"] is False and calm["note"] == "no input column shows a shift"
    shifting = input_drift({"blue": ("v1", moved), "green": ("v2", quiet)})
    assert shifting["shifting"] is True
    assert "income on blue (v1): PSI 0.4, major" in shifting["note"]
    assert shifting["slots"]["blue"]["version"] == "v1"
    silent = input_drift({"blue": ("v1", {"available": False, "problem": "unreachable"})})
    assert silent["shifting"] is False and silent["note"] == "no slot reports its input drift"
