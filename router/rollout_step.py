"""A rollout's next step: a pure function of the rollout, its plan, the routing, what was
observed and the time.

``next_step`` decides; it reads nothing and writes nothing. It returns a ``Step``: the action
to record, the changes to the rollout document and to the routing, and at most one ``Effect``
(reload a slot's model service, check that a slot is ready) for the controller to carry out
first, with the step to record instead if that effect fails. The controller
(``router.rollout``) gathers the ``Observation``, carries out the effect and commits the step.

Evidence carries forward: a judged phase (shadow, canary, bake) keeps the counts of when it
began (``evidence``), and every analysis judges everything since then; each step keeps the
counts of when it began (``step_counts``) only to require ``min_requests`` new requests per
version before the step passes.

    >>> step = next_step(rollout, plan, routing, Observation(reading=reading), now, verdict)  # doctest: +SKIP
    >>> step.action, step.routing
    ('advance', {'canary_weight': 25})
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from metrics.analysis import FAIL, PASS, WAIT, Check, Verdict, judge, judge_alone
from metrics.window import Reading, VersionCounts, window
from router.rollout_plan import RolloutPlan
from strategies import get
from strategies.base import RoutingState

LOAD_BUDGET_S = 60.0  # from asking a slot to load a version to it reporting that version
JUDGED = ("shadow", "canary", "bake")


@dataclass(frozen=True)
class Effect:
    """Something the controller does before it records a step."""

    kind: str  # "reload" (load ``version`` into ``slot``'s model service) or "check_ready"
    slot: str
    version: str | None = None


@dataclass(frozen=True)
class Step:
    """What to record: an action, rollout and routing changes, and an effect to carry out first."""

    action: str
    updates: dict[str, Any]
    verdict: Verdict | None = None
    routing: dict[str, Any] | None = None  # routing fields to set
    routing_op: str | None = None  # "promote", "rollback" or "switch": the strategy's transition
    effect: Effect | None = None
    on_failure: Step | None = None  # recorded instead when the effect fails
    detail: dict[str, Any] | None = None
    decision: str | None = None  # counted as a final decision: "promote" or "rollback"
    quiet: bool = False  # a bookkeeping write: not added to the rollout's decisions


@dataclass(frozen=True)
class Observation:
    """What the controller saw this tick."""

    reading: Reading | None = None  # cumulative per-version counts (when wanted)
    loaded: bool = False  # phase load: the slot reports the version and is ready
    reported: str | None = None  # phase load: the version the slot reports
    moved: str | None = None  # why the rollout cannot go on: a slot serves another version
    quality: dict[str, Any] | None = None  # summed quality counts since ``quality_since``
    drift: dict[str, Any] | None = None  # the slots' input drift (``input_drift``)


# -- what the controller needs to gather ---------------------------------------------------------


def analysis_due(rollout: dict[str, Any], plan: RolloutPlan, now: float) -> bool:
    """An interval has passed since the phase began or was last analysed."""
    return (rollout.get("evidence") is not None
            and now - float(rollout.get("analysed_at") or 0.0) >= plan.interval_s)


def wants_reading(rollout: dict[str, Any], plan: RolloutPlan, now: float) -> bool:
    """The controller should read the counts: to start a phase's evidence, or to analyse."""
    if rollout.get("status") != "running" or rollout.get("phase") in ("load", "done"):
        return False
    return rollout.get("evidence") is None or analysis_due(rollout, plan, now)


def quality_since(rollout: dict[str, Any]) -> float:
    """From when labelled predictions count for the quality check: the phase's evidence, or in a
    bake the reference window before the switch (the version before it is judged on those)."""
    evidence = rollout.get("evidence") or {}
    since = rollout.get("reference_since") if rollout.get("phase") == "bake" else None
    return float(since if since is not None else evidence.get("since") or 0.0)


def input_drift(slots: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The evidence's note on the inputs: per slot (version, ``GET /drift`` cut to its top
    columns), and whether any column shifted while the rollout was analysed."""
    shifted = []
    for slot, (version, doc) in sorted(slots.items()):
        for column in doc.get("columns") or []:
            if column.get("reading") in ("moderate", "major"):
                shifted.append(f"{column.get('name')} on {slot} ({version}): PSI "
                               f"{column.get('psi')}, {column.get('reading')}")
    note = ("the input mix is shifting: " + "; ".join(shifted) + ". The versions are compared on "
            "the same traffic, but what holds now may not hold on yesterday's inputs"
            if shifted else "no input column shows a shift")
    if not shifted and not any(doc.get("available") for _, doc in slots.values()):
        note = "no slot reports its input drift"
    return {"shifting": bool(shifted), "note": note,
            "slots": {slot: {"version": version, **doc} for slot, (version, doc) in slots.items()}}


def judged_phases(plan: RolloutPlan) -> int:
    """How many phases of ``plan`` judge the candidate: each gets a share of the error rate."""
    if plan.strategy == "shadow-then-canary":
        return 2 if plan.steps[0] < 100 else 1
    if plan.strategy == "blue-green":
        return 2 if plan.preview_analysis else 1
    return 1


# -- documents kept in the rollout ------------------------------------------------------------------


def counts_doc(reading: Reading, versions: list[str]) -> dict[str, Any]:
    return {v: reading.get(v, VersionCounts()).to_doc() for v in versions if v}


def counts_of(doc: dict[str, Any] | None) -> Reading:
    return {v: VersionCounts.from_doc(c) for v, c in (doc or {}).items()}


def _slot_version(rollout: dict[str, Any], slot: str) -> str:
    return (rollout.get("versions") or {}).get(slot) or slot


def _involved(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState) -> list[str]:
    slots = [routing.stable] + ([plan.candidate] if plan.strategy != "release-in-place" else [])
    return [_slot_version(rollout, s) for s in slots]


def begin_evidence(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState,
                   reading: Reading, now: float) -> dict[str, Any]:
    """Rollout updates that begin a phase's evidence (and its first step) at ``reading``."""
    counts = counts_doc(reading, _involved(rollout, plan, routing))
    return {"evidence": {"since": now, "counts": counts}, "step_counts": counts,
            "analysed_at": now}


def _new_step(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState,
              reading: Reading, now: float) -> dict[str, Any]:
    """Rollout updates that begin the next step (or analysis) of the same phase."""
    return {"step_counts": counts_doc(reading, _involved(rollout, plan, routing)),
            "analysed_at": now}


# -- the analysis ------------------------------------------------------------------------------------


def analyse(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState, reading: Reading,
            now: float, quality: dict[str, Any] | None = None) -> Verdict:
    """The judge's verdict on everything since the phase began (pure).

    ``quality`` is the summed quality counts of predictions served since ``quality_since``
    (``metrics.quality``'s shape); the plan's quality check uses it when it asks for one."""
    phase = rollout["phase"]
    evidence = rollout.get("evidence") or {}
    since = window(reading, counts_of(evidence.get("counts")))
    step = window(reading, counts_of(rollout.get("step_counts")))
    since_t = evidence.get("since")
    elapsed = max(now - (now if since_t is None else float(since_t)), 1e-9)
    empty = VersionCounts()
    stable_v = _slot_version(rollout, routing.stable)
    t = plan.thresholds
    alpha = (1.0 - t.confidence) / judged_phases(plan)
    final = _final(rollout, plan)
    require = plan.require_evidence and final
    scored = (quality or {}).get("versions") or {}
    wants_quality = t.quality and quality is not None

    if phase in ("shadow", "canary"):
        cand_v = _slot_version(rollout, plan.candidate)
        stable, cand = since.get(stable_v, empty), since.get(cand_v, empty)
        shadow = phase == "shadow"
        n_c = cand.shadow_requests if shadow else cand.requests
        step_s, step_c = step.get(stable_v, empty), step.get(cand_v, empty)
        have_c = min(step_c.shadow_requests, step_c.agree + step_c.disagree) if shadow \
            else step_c.requests
        return judge(stable, cand, t, min_requests=plan.min_requests, shadow=shadow,
                     step=(step_s.requests, have_c), require_evidence=require, alpha=alpha,
                     rate=n_c / elapsed, min_labels=plan.min_labels,
                     quality=(scored.get(stable_v), scored.get(cand_v)) if wants_quality else None)
    counts = since.get(stable_v, empty)
    if phase == "reference":  # stable's counts before the switch: a sample, not a judgement
        short = plan.min_requests - step.get(stable_v, empty).requests
        samples = {"reference_requests": counts.requests}
        if short > 0:
            check = Check("sample_size", WAIT, plan.min_requests - short, plan.min_requests,
                          f"{short:.0f} more requests on stable before the switch")
            rate = counts.requests / elapsed
            return Verdict(WAIT, (check,), samples, short, short / rate / 60 if rate else None)
        return Verdict(PASS, (), samples)
    reference = rollout.get("reference")
    before = rollout.get("reference_version")
    return judge_alone(counts, VersionCounts.from_doc(reference) if reference else None, t,
                       min_requests=plan.min_requests, step=step.get(stable_v, empty).requests,
                       require_evidence=require, alpha=alpha, rate=counts.requests / elapsed,
                       min_labels=plan.min_labels,
                       quality=(scored.get(before) if before else None, scored.get(stable_v))
                       if wants_quality else None)


def _final(rollout: dict[str, Any], plan: RolloutPlan) -> bool:
    """A pass in this phase, now, would promote the candidate."""
    phase, passed = rollout["phase"], rollout.get("passed_in_phase", 0) + 1
    if phase == "canary":
        step = rollout["step"]
        return not (step + 1 < len(plan.steps) and plan.steps[step + 1] < 100)
    if phase == "shadow":
        return (passed >= plan.shadow_analyses and plan.strategy != "blue-green"
                and plan.steps[0] >= 100)
    return phase == "bake" and passed >= plan.bake_analyses


# -- the next step --------------------------------------------------------------------------------


def first_phase(plan: RolloutPlan) -> tuple[str, dict[str, Any]]:
    """The phase a plan starts in (once its version is loaded) and the routing it needs."""
    if plan.strategy == "canary":
        return "canary", {"strategy": "canary", "candidate": plan.candidate,
                          "canary_weight": plan.steps[0], "shadow_percent": 0}
    if plan.strategy == "shadow-then-canary" or (plan.strategy == "blue-green"
                                                 and plan.preview_analysis):
        return "shadow", {"strategy": "shadow", "candidate": plan.candidate, "canary_weight": 0,
                          "shadow_percent": plan.shadow_percent}
    if plan.strategy == "blue-green":
        return "reference", {"strategy": "blue-green", "candidate": plan.candidate,
                             "canary_weight": 0, "shadow_percent": 0}
    return "reference", {"strategy": "release-in-place", "canary_weight": 0, "shadow_percent": 0}


def apply_routing(routing: RoutingState, fields: dict[str, Any] | None,
                  op: str | None) -> RoutingState:
    """The routing after a step: the strategy's own transition, then the fields it sets."""
    if op == "promote":
        routing = get(routing.strategy).promote(routing)
    elif op == "rollback":
        routing = get(routing.strategy).rollback(routing)
    elif op == "switch":
        routing = get("blue-green").promote(replace(routing, strategy="blue-green"))
    return replace(routing, **fields) if fields else routing


def abort(why: str) -> Step:
    """End the rollout with all traffic on stable and the reason recorded."""
    return Step("abort", {"status": "aborted", "phase": "done", "error": why},
                routing_op="rollback", detail={"why": why}, decision="rollback")


def next_step(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState,
              seen: Observation, now: float, verdict: Verdict | None = None) -> Step | None:
    """The step to take now, or None to do nothing this tick.

    ``verdict`` is the analysis of ``seen.reading`` (given when ``analysis_due``).
    """
    if rollout.get("status") != "running":
        return None
    phase = rollout["phase"]
    if phase == "load":
        return _load_step(rollout, plan, routing, seen, now)
    if seen.moved:
        return abort(seen.moved)
    if rollout.get("evidence") is None:
        if seen.reading is None:
            return None
        return Step("observe", begin_evidence(rollout, plan, routing, seen.reading, now), quiet=True)
    if verdict is None or seen.reading is None:
        return None
    if verdict.decision == WAIT:
        # keep every sample (evidence and step alike); look again after another interval
        return Step("wait", {"analysed_at": now}, verdict)
    if verdict.decision == FAIL:
        failed = rollout["failed_analyses"] + 1
        if failed < plan.max_failed_analyses:
            return Step("retry", {"failed_analyses": failed, "analysed_at": now}, verdict)
        return _rollback(rollout, verdict, failed)
    return _passed(rollout, plan, routing, seen.reading, now, verdict)


def _rollback(rollout: dict[str, Any], verdict: Verdict, failed: int) -> Step:
    updates = {"status": "rolled_back", "phase": "done", "failed_analyses": failed}
    restore = rollout.get("restore_version")
    step = Step("rollback", updates, verdict, routing_op="rollback", decision="rollback")
    if restore:  # release-in-place: stable's service goes back to the version it served
        effect = Effect("reload", str((rollout.get("release") or {}).get("slot")), restore)
        return replace(step, effect=effect, on_failure=replace(step, detail={
            "restore_failed": f"reloading {restore} failed: {{error}}"}))
    return step


def _passed(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState, reading: Reading,
            now: float, verdict: Verdict) -> Step:
    phase = rollout["phase"]
    passed = rollout["passed_in_phase"] + 1
    if phase == "canary":
        step = rollout["step"]
        if step + 1 < len(plan.steps) and plan.steps[step + 1] < 100:
            return Step("advance", {"step": step + 1, "passed_in_phase": 0,
                                    **_new_step(rollout, plan, routing, reading, now)},
                        verdict, routing={"canary_weight": plan.steps[step + 1]})
        return _promote(plan, verdict)
    if phase == "shadow":
        if passed < plan.shadow_analyses:
            return Step("pass", {"passed_in_phase": passed,
                                 **_new_step(rollout, plan, routing, reading, now)}, verdict)
        if plan.strategy == "blue-green":
            return Step("shadow-passed", {"phase": "reference", "passed_in_phase": 0,
                                          **begin_evidence(rollout, plan, routing, reading, now)},
                        verdict, routing={"strategy": "blue-green", "shadow_percent": 0})
        if plan.steps[0] >= 100:
            return _promote(plan, verdict)
        return Step("advance", {"phase": "canary", "step": 0, "passed_in_phase": 0,
                                **begin_evidence(rollout, plan, routing, reading, now)}, verdict,
                    routing={"strategy": "canary", "shadow_percent": 0,
                             "canary_weight": plan.steps[0]})
    if phase == "reference":
        stable_v = _slot_version(rollout, routing.stable)
        counts = window(reading, counts_of((rollout.get("evidence") or {}).get("counts")))
        reference = {"reference": counts.get(stable_v, VersionCounts()).to_doc(),
                     "reference_version": stable_v,
                     "reference_since": (rollout.get("evidence") or {}).get("since")}
        return _switch(rollout, plan, routing, reading, now, verdict, reference)
    if passed < plan.bake_analyses:
        return Step("pass", {"passed_in_phase": passed,
                             **_new_step(rollout, plan, routing, reading, now)}, verdict)
    return Step("complete", {"status": "promoted", "phase": "done"}, verdict, decision="promote")


def _promote(plan: RolloutPlan, verdict: Verdict) -> Step:
    if plan.manual_promotion:
        return Step("await-promotion", {"status": "awaiting_promotion"}, verdict)
    return Step("promote", {"status": "promoted", "phase": "done"}, verdict, routing_op="promote",
                decision="promote")


def _switch(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState, reading: Reading,
            now: float, verdict: Verdict, reference: dict[str, Any]) -> Step:
    """Blue-green: all traffic to the candidate; release-in-place: reload stable's service."""
    if plan.strategy == "blue-green":
        after = replace(routing, stable=plan.candidate)
        begin = begin_evidence(rollout, plan, after, reading, now)
        not_ready = Step("abort-not-ready", {"status": "rolled_back", "phase": "done"}, verdict,
                         routing={"shadow_percent": 0}, decision="rollback")
        return Step("switch", {"phase": "bake", "passed_in_phase": 0, **reference,
                               **begin}, verdict, routing_op="switch",
                    effect=Effect("check_ready", plan.candidate), on_failure=not_ready)
    slot = routing.stable
    target = plan.release_version or plan.candidate
    versions = {**(rollout.get("versions") or {}), slot: target}
    begin = begin_evidence({**rollout, "versions": versions}, plan, routing, reading, now)
    failed = Step("abort-reload-failed", {"status": "rolled_back", "phase": "done",
                                          "error": "{error}"}, verdict, decision="rollback")
    return Step("reload", {"phase": "bake", "passed_in_phase": 0, **reference,
                           "restore_version": _slot_version(rollout, slot), "versions": versions,
                           **begin}, verdict, effect=Effect("reload", slot, target),
                on_failure=failed)


def _load_step(rollout: dict[str, Any], plan: RolloutPlan, routing: RoutingState,
               seen: Observation, now: float) -> Step | None:
    """Load the plan's version into the candidate's slot; then start the plan's first phase."""
    slot, version = plan.candidate, str(plan.version)
    load = rollout.get("load") or {}
    if not load:
        return Step("load", {"load": {"requested_at": now}}, effect=Effect("reload", slot, version),
                    on_failure=abort(f"loading {version} into slot {slot} failed: {{error}}"),
                    detail={"slot": slot, "version": version})
    if seen.loaded:
        phase, changes = first_phase(plan)
        versions = {**(rollout.get("versions") or {}), slot: version}
        updates = {"phase": phase, "versions": versions, "evidence": None,
                   "load": {**load, "loaded_at": now}}
        if seen.reading is not None:
            routing = apply_routing(routing, changes, None)
            updates.update(begin_evidence({**rollout, "versions": versions}, plan, routing,
                                          seen.reading, now))
        return Step("loaded", updates, routing=changes, detail={"slot": slot, "version": version})
    if now - float(load.get("requested_at", now)) > LOAD_BUDGET_S:
        return abort(f"slot {slot} reports {seen.reported or 'no version'}, not {version}, "
                     f"{LOAD_BUDGET_S:g} s after it was asked to load it")
    return None


def retimed(step: Step, done_at: float) -> Step:
    """``step`` as of ``done_at``, when its effect finished: the next analysis is due an interval
    after that (a reload that took most of an interval must not be judged at once)."""
    updates = dict(step.updates)
    if "analysed_at" in updates:
        updates["analysed_at"] = done_at
    if isinstance(updates.get("evidence"), dict):
        updates["evidence"] = {**updates["evidence"], "since": done_at}
    return replace(step, updates=updates)


def failed(step: Step, error: str) -> Step:
    """The step to record when ``step``'s effect failed with ``error``."""
    alternative = step.on_failure or step

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{error}", error)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return replace(alternative, updates=fill(alternative.updates), detail=fill(alternative.detail),
                   effect=None, on_failure=None)
