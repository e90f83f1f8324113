"""Admin endpoints of automated rollouts and the live analysis."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from flask import Response

from common.errors import Conflict, ServiceUnavailable, Unprocessable, json_response
from metrics.analysis import Thresholds, judge
from metrics.sources import SourceUnavailable
from metrics.window import VersionCounts, quantile, window
from router.admin import _actor, _body, _ctx, _if_match, _reason, _state_response, admin
from metrics.quality import summarise
from router.live_state import Snapshot
from router.state import StateStoreError
from router.rollout import ACTIVE, new_rollout
from router.rollout_plan import RolloutPlan, parse_plan
from router.rollout_step import analyse, counts_of
from strategies import StrategyError, get


@admin.post("/rollout")
def start_rollout() -> Response:
    ctx = _ctx()
    if_match = _if_match()
    doc = _body(required=True)
    reason = _reason(doc)
    doc.pop("reason", None)
    current = ctx.live.refresh()
    plan = parse_plan(doc, candidate=current.routing.candidate, versions=list(ctx.config.upstreams),
                      can_reload=bool(ctx.config.model_admin_token), stable=current.routing.stable)
    served = ctx.slots.refresh()
    _check_release(plan, current, served, _replaced_by_last_promotion(ctx))
    if plan.strategy != "release-in-place" and plan.version is None \
            and not ctx.controller.ready(plan.candidate):
        raise Conflict(f"candidate slot {plan.candidate} is not ready (GET /ready failed); start "
                       "it first", code="candidate_not_ready")

    try:
        reading = ctx.source.read()  # the first phase's evidence begins now
    except SourceUnavailable:
        reading = None  # the controller reads the counts before its first analysis

    def mutate(snap: Snapshot) -> Snapshot:
        if snap.rollout and snap.rollout.get("status") in ACTIVE:
            raise Conflict(f"rollout {snap.rollout['id']} is {snap.rollout['status']}; pause/resume it or "
                           "POST /admin/rollback to abort it first", code="rollout_active")
        rollout, changes = new_rollout(plan, snap, time.time(), served, reading)
        return Snapshot(snap.config_version, replace(snap.routing, **changes), rollout)

    snap = ctx.live.change(mutate, actor=_actor(), action="rollout.start", reason=reason,
                           if_match=if_match, evidence={"plan": plan.to_dict()})
    return _state_response(snap)


def _replaced_by_last_promotion(ctx: Any) -> str | None:
    """The version the last promoted release replaced on stable (None when unknown)."""
    for record in reversed(ctx.store.releases(limit=50)):
        if record.get("outcome") == "promoted":
            return (record.get("stable_before") or {}).get("version")
    return None


def _check_release(plan: RolloutPlan, snap: Snapshot, served: dict[str, str | None],
                   replaced: str | None) -> None:
    """A release names what it releases, and releases something stable does not serve."""
    if plan.strategy == "release-in-place":
        return
    stable, candidate = snap.routing.stable, plan.candidate
    on_stable, on_candidate = served.get(stable), served.get(candidate)
    if plan.version is not None:
        if plan.version == on_stable:
            raise Conflict(f"{plan.version} is what stable (slot {stable}) serves already; "
                           "nothing to release", code="nothing_to_release")
        return
    if on_candidate is not None and on_candidate == on_stable:
        raise Conflict(f"both slots serve {on_candidate}; name the version to release with "
                       '"version" (rollout start --version V)', code="name_the_version")
    if on_candidate is not None and on_candidate == replaced:
        raise Conflict(f"slot {candidate} serves {on_candidate}, the version the last promotion "
                       "replaced; a release names what it releases: \"version\" (rollout start "
                       f"--version V), or --version {on_candidate} to release it again",
                       code="name_the_version")


def _rollout_body(snap: Snapshot) -> dict[str, Any]:
    if not snap.rollout:
        return {"rollout": None, "config_version": snap.config_version}
    rollout = snap.rollout
    plan = rollout["plan"]
    weight = snap.routing.canary_weight if snap.routing.strategy == "canary" else None
    return {"rollout": {**rollout, "current_weight": weight, "steps": plan.get("steps")},
            "config_version": snap.config_version}


@admin.get("/rollout")
def read_rollout() -> Response:
    snap = _ctx().live.refresh()
    return json_response(_rollout_body(snap), headers={"ETag": f'"{snap.config_version}"'})


def _set_status(expected: tuple[str, ...], action: str) -> Response:
    ctx = _ctx()
    if_match = _if_match()
    doc = _body(required=False)
    unknown = sorted(set(doc) - {"reason"})
    if unknown:
        raise Unprocessable(f"unknown field(s) {unknown}; only \"reason\" is accepted")
    reason = _reason(doc)

    def mutate(snap: Snapshot) -> Snapshot:
        rollout = snap.rollout
        if not rollout or rollout.get("status") not in expected:
            status = rollout.get("status") if rollout else "none"
            raise Conflict(f"cannot {action} a rollout whose status is {status}", code="rollout_state")
        routing = snap.routing
        if action == "pause":
            status = "paused"
        elif rollout["status"] == "awaiting_promotion":
            try:
                routing, status = get(routing.strategy).promote(routing), "promoted"
            except StrategyError as exc:  # e.g. the candidate was unset while it waited
                raise Conflict(f"cannot promote: {exc}", code="rollout_state") from None
        else:
            status = "running"
        return Snapshot(snap.config_version, routing, {**rollout, "status": status,
                                                       "phase": "done" if status == "promoted" else rollout["phase"],
                                                       "updated_at": time.time()})

    snap = ctx.live.change(mutate, actor=_actor(), action=f"rollout.{action}", reason=reason,
                           if_match=if_match)
    return json_response(_rollout_body(snap), headers={"ETag": f'"{snap.config_version}"'})


@admin.post("/rollout/pause")
def pause_rollout() -> Response:
    return _set_status(("running",), "pause")


@admin.post("/rollout/resume")
def resume_rollout() -> Response:
    return _set_status(("paused", "awaiting_promotion"), "resume")


def _summary(counts: VersionCounts) -> dict[str, Any]:
    def ms(q: float) -> float | None:
        value = quantile(counts.latency_buckets, q)
        return None if value is None else round(value * 1e3, 3)

    return {"requests": counts.requests, "errors": counts.errors, "error_rate": round(counts.error_rate, 6),
            "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99)},
            "shadow": {"requests": counts.shadow_requests, "errors": counts.shadow_errors,
                       "agree": counts.agree, "disagree": counts.disagree,
                       "agreement": counts.agreement}}


@admin.get("/analysis")
def analysis() -> Response:
    ctx = _ctx()
    snap = ctx.live.current
    try:
        reading = ctx.source.read()
    except SourceUnavailable as exc:
        raise ServiceUnavailable(str(exc), code="metrics_unavailable") from None
    rollout = snap.rollout or {}
    evidence = rollout.get("evidence") if rollout.get("status") in ACTIVE else None
    baseline = counts_of(evidence.get("counts")) if evidence else None
    stats = window(reading, baseline)
    plan = RolloutPlan.from_dict(rollout["plan"]) if rollout else None
    thresholds = plan.thresholds if plan else Thresholds()
    min_requests = plan.min_requests if plan else RolloutPlan.min_requests
    routing = snap.routing
    recorded = rollout.get("versions") or {} if rollout.get("status") in ACTIVE else {}

    def version_of(slot: str | None) -> str | None:
        if slot is None:
            return None
        return recorded.get(slot) or ctx.slots.get(slot) or slot

    verdict = None
    if evidence and plan is not None and rollout.get("phase") in ("shadow", "canary", "bake"):
        verdict = analyse(rollout, plan, routing, reading, time.time()).evidence()
    elif routing.candidate:
        shadow = routing.strategy == "shadow"
        verdict = judge(stats.get(version_of(routing.stable) or "", VersionCounts()),
                        stats.get(version_of(routing.candidate) or "", VersionCounts()), thresholds,
                        min_requests=min_requests, shadow=shadow).evidence()
    return json_response({
        "window": ("the running rollout's evidence, since its phase began" if baseline is not None
                   else "since the metrics began"),
        "stable": routing.stable, "candidate": routing.candidate, "strategy": routing.strategy,
        "stable_version": version_of(routing.stable),
        "candidate_version": version_of(routing.candidate),
        "versions": {v: _summary(c) for v, c in stats.items()},
        "verdict": verdict,
        "quality": _quality(ctx),
    })


def _quality(ctx: Any) -> dict[str, Any] | None:
    """Accuracy and log loss (or MAE and RMSE) per version from the labels received, and the
    paired shadow comparisons; None while feedback is off."""
    if ctx.config.feedback_token is None:
        return None
    try:
        counts = ctx.store.quality_counts()
    except StateStoreError as exc:
        return {"error": f"quality counts unavailable: {exc}"}
    return {"window": "requests served within ROUTER_FEEDBACK_RETENTION_S that got labels",
            **summarise(counts)}
