"""The rollout controller: analyses each interval and advances, waits, promotes or rolls back.

Every router process runs one controller thread; a lease in the state store makes exactly one of
them (across processes and router instances) drive a rollout. The rollout itself lives in the
routing state document (``rollout``), so a restarted router resumes it where it was. Each
decision is one compare-and-set of the state with an audit event carrying its evidence and
the controller that took it.

Phases by plan strategy::

    canary               canary(step 0) -> ... -> canary(last step before 100) -> promote
    shadow-then-canary   shadow -> canary steps -> promote
    blue-green           [shadow if preview_analysis] -> reference -> switch -> bake -> done
    release-in-place     reference -> reload stable's service -> bake -> done (or reload back)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import orjson

from metrics.analysis import FAIL, PASS, WAIT, Verdict, judge, judge_alone
from metrics.sources import MetricSource, SourceUnavailable
from metrics.window import Reading, VersionCounts, counts_from_doc, counts_to_doc, window
from router.live_state import LiveState, Snapshot
from router.rollout_plan import RolloutPlan
from router.slots import SlotVersions
from router.state import StateStoreError
from router.upstream import UpstreamError, UpstreamPool
from strategies import get

log = logging.getLogger(__name__)
LEASE = "rollout"
# Long against the 0.2 s renewal: a worker busy for a few seconds (a CPU-bound burst blocks its
# event loop) keeps driving instead of handing over mid-rollout; a dead one is replaced after it.
LEASE_TTL_S = 6.0
ACTOR = "rollout-controller"
ACTIVE = ("running", "awaiting_promotion", "paused")
MAX_DECISIONS = 100
LOAD_BUDGET_S = 60.0  # from asking a slot to load a version to it reporting that version
MOVED_GRACE_S = 3.0  # a slot reporting another version this long has moved (not a reload in flight)


class Skip(Exception):
    """The rollout changed under us (paused, aborted, advanced elsewhere): do nothing."""


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


def new_rollout(plan: RolloutPlan, snap: Snapshot, now: float,
                served: dict[str, str | None] | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The initial rollout document and routing changes for ``plan``.

    ``served`` is the version each slot serves now. A plan naming a ``version`` for the candidate's
    slot starts in phase ``load``, which loads it there and changes no traffic.
    """
    routing = snap.routing
    served = served or {}
    in_place = plan.strategy == "release-in-place"
    versions = {routing.stable: served.get(routing.stable)}
    if not in_place:
        versions[plan.candidate] = served.get(plan.candidate)
    release = ({"slot": routing.stable, "version": plan.release_version} if in_place
               else {"slot": plan.candidate, "version": plan.version or served.get(plan.candidate)})
    if plan.version and not in_place:
        phase, changes = "load", {"candidate": plan.candidate, "canary_weight": 0,
                                  "shadow_percent": 0}
    else:
        phase, changes = first_phase(plan)
    rollout = {
        "id": uuid.uuid4().hex[:12], "plan": plan.to_dict(), "status": "running", "phase": phase,
        "step": 0, "failed_analyses": 0, "passed_in_phase": 0, "stable_at_start": routing.stable,
        "candidate": plan.candidate, "started_at": now, "updated_at": now, "decisions": [],
        "reference": None, "restore_version": None, "versions": versions, "release": release,
    }
    return rollout, changes


@dataclass
class _Window:
    key: tuple[Any, ...]
    baseline: Reading
    started: float


class RolloutController:
    """Drives the rollout in the routing state when this process holds the lease."""

    def __init__(self, live: LiveState, source: MetricSource, pools: dict[str, UpstreamPool],
                 metrics: Any, model_admin_token: str | None, slots: SlotVersions,
                 tick_s: float = 0.2) -> None:
        self.live = live
        self.slots = slots
        self.source = source
        self.pools = pools
        self.metrics = metrics
        self.model_admin_token = model_admin_token
        self.tick_s = tick_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.window: _Window | None = None
        self.holding = False
        self._moved_since: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stop = threading.Event()

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick(time.time())
            except Exception:
                log.exception("rollout controller tick failed")

    # -- one step ---------------------------------------------------------------------------
    def tick(self, now: float) -> str | None:
        """Analyse and act if an interval has passed; returns the decision taken, if any."""
        snap = self.live.current
        rollout = snap.rollout
        if not rollout or rollout.get("status") != "running":
            self._release()
            return None
        try:
            self.holding = self.live.store.acquire_lease(LEASE, self.holder, LEASE_TTL_S)
        except StateStoreError:
            self.holding = False
        if not self.holding:
            self.window = None
            return None
        plan = RolloutPlan.from_dict(rollout["plan"])
        if rollout["phase"] == "load":
            self.window = None
            return self._load(rollout, plan, now)
        moved = self._slot_moved(rollout, now)
        if moved:
            self._abort(rollout, moved, now)
            return "abort"
        key = (rollout["id"], rollout["phase"], rollout["step"], rollout["failed_analyses"],
               rollout["passed_in_phase"])
        try:
            if self.window is None or self.window.key != key:
                self.window = _Window(key, self.source.read(), now)
                return None
            if now - self.window.started < plan.interval_s:
                return None
            reading = self.source.read()
        except SourceUnavailable as exc:
            log.warning("rollout analysis postponed: %s", exc)
            return None
        stats = window(reading, self.window.baseline)
        decision = self._act(snap, plan, stats, now)
        if decision == WAIT:
            # Keep the baseline so samples accumulate, but judge again only after another interval.
            self.window.started = now
        return decision

    def _release(self) -> None:
        if self.holding:
            try:
                self.live.store.release_lease(LEASE, self.holder)
            except StateStoreError:
                pass
            self.holding = False
        self.window = None

    def _verdict(self, snap: Snapshot, plan: RolloutPlan, stats: Reading) -> Verdict:
        rollout = snap.rollout or {}
        phase = rollout["phase"]
        routing = snap.routing
        empty = VersionCounts()
        versions = rollout.get("versions") or {}

        def of(slot: str) -> VersionCounts:
            """A slot's statistics: those of the version it serves (metrics carry versions)."""
            return stats.get(versions.get(slot) or slot, empty)

        if phase == "shadow":
            return judge(of(routing.stable), of(plan.candidate),
                         plan.thresholds, min_requests=plan.min_requests, shadow=True)
        if phase == "canary":
            return judge(of(routing.stable), of(plan.candidate),
                         plan.thresholds, min_requests=plan.min_requests)
        if phase == "reference":
            counts = of(routing.stable)
            if counts.requests < plan.min_requests:
                return judge_alone(counts, None, plan.thresholds, min_requests=plan.min_requests)
            return Verdict(PASS, (), {"reference_requests": counts.requests})
        reference = rollout.get("reference")
        return judge_alone(of(routing.stable),
                           counts_from_doc(reference) if reference else None,
                           plan.thresholds, min_requests=plan.min_requests)

    def _act(self, snap: Snapshot, plan: RolloutPlan, stats: Reading, now: float) -> str:
        rollout = snap.rollout or {}
        verdict = self._verdict(snap, plan, stats)
        phase = rollout["phase"]
        self.metrics.rollout_decisions.labels(decision=verdict.decision).inc()
        if verdict.decision == WAIT:
            self._record(rollout, verdict, "wait", {}, now)
            return WAIT
        if verdict.decision == FAIL:
            failed = rollout["failed_analyses"] + 1
            if failed < plan.max_failed_analyses:
                self._record(rollout, verdict, "retry", {"failed_analyses": failed}, now)
                return FAIL
            self._rollback(rollout, verdict, now)
            return "rollback"
        passed = rollout["passed_in_phase"] + 1
        if phase == "canary":
            step = rollout["step"]
            if step + 1 < len(plan.steps) and plan.steps[step + 1] < 100:
                self._record(rollout, verdict, "advance",
                             {"step": step + 1, "passed_in_phase": 0}, now,
                             routing={"canary_weight": plan.steps[step + 1]})
                return "advance"
            self._promote_or_hold(rollout, verdict, plan, now)
            return "promote"
        if phase == "shadow":
            if passed < plan.shadow_analyses:
                self._record(rollout, verdict, "pass", {"passed_in_phase": passed}, now)
                return PASS
            if plan.strategy == "blue-green":
                self._record(rollout, verdict, "shadow-passed",
                             {"phase": "reference", "passed_in_phase": 0}, now,
                             routing={"strategy": "blue-green", "shadow_percent": 0})
                return "advance"
            if plan.steps[0] >= 100:
                self._promote_or_hold(rollout, verdict, plan, now)
                return "promote"
            self._record(rollout, verdict, "advance", {"phase": "canary", "step": 0, "passed_in_phase": 0},
                         now, routing={"strategy": "canary", "shadow_percent": 0,
                                       "canary_weight": plan.steps[0]})
            return "advance"
        if phase == "reference":
            versions = rollout.get("versions") or {}
            stable = snap.routing.stable
            reference = counts_to_doc(stats.get(versions.get(stable) or stable, VersionCounts()))
            if plan.strategy == "blue-green":
                self._switch(rollout, verdict, plan, reference, now)
            else:
                self._reload(rollout, verdict, plan, reference, now)
            return "switch"
        if passed < plan.bake_analyses:  # bake
            self._record(rollout, verdict, "pass", {"passed_in_phase": passed}, now)
            return PASS
        self._record(rollout, verdict, "complete", {"status": "promoted", "phase": "done"}, now)
        self.metrics.rollout_decisions.labels(decision="promote").inc()
        return "promote"

    # -- transitions -------------------------------------------------------------------------
    def _record(self, rollout: dict[str, Any], verdict: Verdict | None, action: str,
                updates: dict[str, Any], now: float, routing: dict[str, Any] | None = None,
                routing_fn: Any = None, detail: dict[str, Any] | None = None) -> Snapshot:
        evidence = verdict.evidence() if verdict is not None else {}
        entry = {"time": now, "phase": rollout["phase"], "step": rollout["step"],
                 "action": action, "controller": self.holder, **evidence, **(detail or {})}

        def mutate(snap: Snapshot) -> Snapshot:
            current = snap.rollout
            if not current or current["id"] != rollout["id"] or current["status"] != rollout["status"] \
                    or current["phase"] != rollout["phase"] or current["step"] != rollout["step"]:
                raise Skip()
            new_routing = snap.routing
            if routing_fn is not None:
                new_routing = routing_fn(new_routing)
            if routing:
                new_routing = replace(new_routing, **routing)
            decisions = (current.get("decisions") or [])[-(MAX_DECISIONS - 1):] + [entry]
            doc = {**current, **updates, "decisions": decisions, "updated_at": now}
            return Snapshot(snap.config_version, new_routing, doc)

        try:
            return self.live.change(mutate, actor=ACTOR, action=f"rollout.{action}", reason=None,
                                    evidence=orjson.loads(orjson.dumps(entry)))
        except Skip:
            return self.live.current

    def _promote_or_hold(self, rollout: dict[str, Any], verdict: Verdict, plan: RolloutPlan,
                         now: float) -> None:
        if plan.manual_promotion:
            self._record(rollout, verdict, "await-promotion", {"status": "awaiting_promotion"}, now)
            return
        self.metrics.rollout_decisions.labels(decision="promote").inc()
        self._record(rollout, verdict, "promote", {"status": "promoted", "phase": "done"}, now,
                     routing_fn=lambda r: get(r.strategy).promote(r))

    def _rollback(self, rollout: dict[str, Any], verdict: Verdict, now: float) -> None:
        self.metrics.rollout_decisions.labels(decision="rollback").inc()
        if rollout.get("restore_version"):
            self.reload_stable(rollout["restore_version"])
        self._record(rollout, verdict, "rollback", {"status": "rolled_back", "phase": "done",
                                                     "failed_analyses": rollout["failed_analyses"] + 1},
                     now, routing_fn=lambda r: get(r.strategy).rollback(r))

    def _switch(self, rollout: dict[str, Any], verdict: Verdict, plan: RolloutPlan,
                reference: dict[str, Any], now: float) -> None:
        if not self.ready(plan.candidate):
            self.metrics.rollout_decisions.labels(decision="rollback").inc()
            self._record(rollout, verdict, "abort-not-ready", {"status": "rolled_back", "phase": "done"},
                         now, routing={"shadow_percent": 0})
            return
        self._record(rollout, verdict, "switch", {"phase": "bake", "passed_in_phase": 0,
                                                   "reference": reference}, now,
                     routing_fn=lambda r: get("blue-green").promote(replace(r, strategy="blue-green")))

    def _reload(self, rollout: dict[str, Any], verdict: Verdict, plan: RolloutPlan,
                reference: dict[str, Any], now: float) -> None:
        stable = self.live.current.routing.stable
        previous = self.slots.ask(stable)
        target = plan.release_version or plan.candidate
        ok, detail = self.reload_stable(target)
        if not ok:
            self.metrics.rollout_decisions.labels(decision="rollback").inc()
            self._record(rollout, verdict, "abort-reload-failed",
                         {"status": "rolled_back", "phase": "done", "error": detail}, now)
            return
        versions = {**(rollout.get("versions") or {}), stable: target}
        self._record(rollout, verdict, "reload", {"phase": "bake", "passed_in_phase": 0,
                                                   "reference": reference, "restore_version": previous,
                                                   "versions": versions},
                     now)

    # -- releasing a version into the candidate's slot ------------------------------------------
    def _load(self, rollout: dict[str, Any], plan: RolloutPlan, now: float) -> str | None:
        """Load the plan's version into the candidate's slot; then start the plan's first phase.

        Traffic changes only once the slot is ready and reports the version; a failed load, or a
        slot that reports another version past the load budget, aborts the rollout.
        """
        slot, version = plan.candidate, str(plan.version)
        load = rollout.get("load") or {}
        if not load:
            ok, detail = self.reload_slot(slot, version)
            if not ok:
                self._abort(rollout, f"loading {version} into slot {slot} failed: {detail}", now)
                return "abort"
            self._record(rollout, None, "load", {"load": {"requested_at": now}}, now,
                         detail={"slot": slot, "version": version})
            return "load"
        reported = self.slots.ask(slot)
        if reported == version and self.ready(slot):
            self.slots.refresh(slot)
            phase, changes = first_phase(plan)
            versions = {**(rollout.get("versions") or {}), slot: version}
            self._record(rollout, None, "loaded", {"phase": phase, "versions": versions,
                                                  "load": {**load, "loaded_at": now}}, now,
                         routing=changes, detail={"slot": slot, "version": version})
            return "loaded"
        if now - float(load.get("requested_at", now)) > LOAD_BUDGET_S:
            self._abort(rollout, f"slot {slot} reports {reported or 'no version'}, not {version}, "
                                 f"{LOAD_BUDGET_S:g} s after it was asked to load it", now)
            return "abort"
        return None

    def _slot_moved(self, rollout: dict[str, Any], now: float) -> str | None:
        """Why the rollout cannot go on: a slot now serves another version than it recorded.

        A reload reaches a model service's workers one after another, so for a moment answers
        name both versions: a slot counts as moved only when it still reports the other version
        to ``GET /version`` after ``MOVED_GRACE_S``.
        """
        for slot, expected in (rollout.get("versions") or {}).items():
            now_serving = self.slots.get(slot)
            if not expected or not now_serving or now_serving == expected:
                self._moved_since.pop(slot, None)
                continue
            since = self._moved_since.setdefault(slot, now)
            if now - since < MOVED_GRACE_S:
                continue
            confirmed = self.slots.ask(slot)
            if confirmed is None or confirmed == expected:
                self._moved_since.pop(slot, None)
                self.slots.refresh(slot)
                continue
            return (f"slot {slot} now serves {confirmed}, not {expected}: the version "
                    "changed during the rollout; traffic is back on stable")
        return None

    def _abort(self, rollout: dict[str, Any], why: str, now: float) -> None:
        """End the rollout with all traffic on stable and the reason recorded."""
        log.warning("rollout %s aborted: %s", rollout.get("id"), why)
        self.metrics.rollout_decisions.labels(decision="rollback").inc()
        self._record(rollout, None, "abort", {"status": "aborted", "phase": "done", "error": why},
                     now, routing_fn=lambda r: get(r.strategy).rollback(r), detail={"why": why})

    # -- model-service calls ----------------------------------------------------------------------
    def ready(self, version: str) -> bool:
        try:
            resp = self.pools[version].request("GET", "/ready", b"", [], time.monotonic() + 2.0)
        except (UpstreamError, KeyError):
            return False
        return resp.status == 200

    def reload_stable(self, version: str) -> tuple[bool, str]:
        return self.reload_slot(self.live.current.routing.stable, version)

    def reload_slot(self, slot: str, version: str) -> tuple[bool, str]:
        """``POST /admin/reload`` on a slot's model service; (done, why not)."""
        body = orjson.dumps({"version": version})
        headers = [("Content-Type", "application/json"),
                   ("Authorization", f"Bearer {self.model_admin_token or ''}")]
        try:
            resp = self.pools[slot].request("POST", "/admin/reload", body, headers,
                                            time.monotonic() + 30.0)
        except UpstreamError as exc:
            return False, str(exc)
        if resp.status != 200:
            try:
                message = orjson.loads(resp.body)["error"]["message"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = resp.body[:200].decode(errors="replace")
            return False, f"slot {slot} answered {resp.status}: {message}"
        self.slots.refresh(slot)
        return True, ""
