"""The rollout controller: carries out the steps ``router.rollout_step.next_step`` decides.

Every router process runs one controller thread; a lease in the state store makes exactly one of
them (across processes and router instances) drive a rollout. The rollout itself lives in the
routing state document (``rollout``), so a restarted router resumes it where it was. Each
decision is one compare-and-set of the state with an audit event carrying its evidence and
the controller that took it. What to do is decided by a pure function (``next_step``); the
controller only gathers what it needs (the counts, a slot's version), carries out the step's
effect (reloading or checking a model service) and commits it.

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
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from metrics.analysis import Verdict
from metrics.sources import MetricSource, SourceUnavailable
from metrics.window import Reading
from router.live_state import LiveState, Snapshot
from router.rollout_plan import RolloutPlan
from router.rollout_step import (
    Effect,
    Observation,
    Step,
    analyse,
    analysis_due,
    apply_routing,
    begin_evidence,
    failed,
    first_phase,
    input_drift,
    next_step,
    quality_since,
    retimed,
    wants_reading,
)
from router.drift_client import ask_drift
from router.slots import SlotVersions
from router.state import StateStoreError
from router.state.base import quality_bucket
from router.upstream import UpstreamError, UpstreamPool

log = logging.getLogger(__name__)
LEASE = "rollout"
# Long against the 0.2 s renewal: a worker busy for a few seconds (a CPU-bound burst blocks its
# event loop) keeps driving instead of handing over mid-rollout; a dead one is replaced after it.
LEASE_TTL_S = 6.0
ACTOR = "rollout-controller"
ACTIVE = ("running", "awaiting_promotion", "paused")
MAX_DECISIONS = 100
DRIFT_TOP = 3  # input columns per slot in an analysis's evidence
MOVED_GRACE_S = 3.0  # a slot reporting another version this long has moved (not a reload in flight)


class Skip(Exception):
    """The rollout changed under us (paused, aborted, advanced elsewhere): do nothing."""


def new_rollout(plan: RolloutPlan, snap: Snapshot, now: float,
                served: dict[str, str | None] | None = None, reading: Reading | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The initial rollout document and routing changes for ``plan``.

    ``served`` is the version each slot serves now. A plan naming a ``version`` for the candidate's
    slot starts in phase ``load``, which loads it there and changes no traffic. ``reading`` (the
    counts now) begins the first phase's evidence; without it the controller reads them first.
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
        "evidence": None, "step_counts": None, "analysed_at": None,
    }
    if reading is not None and phase != "load":
        rollout.update(begin_evidence(rollout, plan, replace(routing, **changes), reading, now))
    return rollout, changes


Analyse = Callable[[dict[str, Any], RolloutPlan, Any, Reading, float], Verdict]


class RolloutController:
    """Drives the rollout in the routing state when this process holds the lease.

    ``analyse`` turns the counts into a verdict (default: the judge); the simulator
    (``router.simulate``) passes another judge to compare the two under the same traffic.
    """

    def __init__(self, live: LiveState, source: MetricSource, pools: dict[str, UpstreamPool],
                 metrics: Any, model_admin_token: str | None, slots: SlotVersions,
                 tick_s: float = 0.2, analyse: Analyse = analyse,
                 model_headers: Sequence[tuple[str, str]] = ()) -> None:
        self.live = live
        self.slots = slots
        self.source = source
        self.pools = pools
        self.metrics = metrics
        self.model_admin_token = model_admin_token
        self.model_headers = list(model_headers)  # the access token, on every call but a reload
        self.tick_s = tick_s
        self.analyse = analyse
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
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

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop ticking and wait for a tick under way (it may be reloading a slot)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid() \
                and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick(time.time())
            except Exception:
                log.exception("rollout controller tick failed")

    # -- one step ---------------------------------------------------------------------------
    def tick(self, now: float) -> str | None:
        """Gather what the rollout needs, decide the next step and carry it out.

        Returns the action taken ("advance", "wait", "rollback", ...), or None.
        """
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
            return None
        plan = RolloutPlan.from_dict(rollout["plan"])
        seen = self._observe(rollout, plan, now)
        if seen is None:
            return None
        verdict = None
        if seen.reading is not None and analysis_due(rollout, plan, now):
            more = {"quality": seen.quality} if seen.quality is not None else {}
            verdict = self.analyse(rollout, plan, snap.routing, seen.reading, now, **more)
            if seen.drift is not None:
                verdict = replace(verdict, input_drift=seen.drift)
        step = next_step(rollout, plan, snap.routing, seen, now, verdict)
        if step is None:
            return None
        if step.effect is not None:
            began = time.monotonic()
            ok, error = self._carry_out(step.effect)
            if not ok:
                step = failed(step, error)
            now += time.monotonic() - began  # the step takes effect once its effect is done
            step = retimed(step, now)
        self._commit(rollout, step, now)
        return step.action

    def _observe(self, rollout: dict[str, Any], plan: RolloutPlan, now: float) -> Observation | None:
        """What ``next_step`` needs this tick (None: the counts could not be read; try later)."""
        if rollout["phase"] == "load":
            if not rollout.get("load"):
                return Observation()
            slot = plan.candidate
            reported = self.slots.ask(slot)
            loaded = reported == plan.version and self.ready(slot)
            reading = None
            if loaded:
                self.slots.refresh(slot)
                try:
                    reading = self.source.read()  # the first phase's evidence begins now
                except SourceUnavailable:
                    pass
            return Observation(reading=reading, loaded=loaded, reported=reported)
        moved = self._slot_moved(rollout, now)
        if moved:
            return Observation(moved=moved)
        if not wants_reading(rollout, plan, now):
            return Observation()
        try:
            reading = self.source.read()
        except SourceUnavailable as exc:
            log.warning("rollout analysis postponed: %s", exc)
            return None
        if rollout.get("evidence") is None or not analysis_due(rollout, plan, now):
            return Observation(reading=reading)
        quality = None
        if plan.thresholds.quality:
            try:  # counted per minute of serving: the minute the phase began counts whole
                quality = self.live.store.quality_counts(quality_bucket(quality_since(rollout)))
            except StateStoreError as exc:
                log.warning("rollout analysis postponed: quality counts unavailable: %s", exc)
                return None
        return Observation(reading=reading, quality=quality, drift=self._drift(rollout))

    def _drift(self, rollout: dict[str, Any]) -> dict[str, Any] | None:
        """What the rollout's slots say of their inputs (``GET /drift``), for the evidence."""
        slots = {}
        for slot, version in (rollout.get("versions") or {}).items():
            pool = self.pools.get(slot)
            if pool is not None:
                slots[slot] = (version or slot, ask_drift(pool, self.model_headers, DRIFT_TOP))
        return input_drift(slots) if slots else None

    def _carry_out(self, effect: Effect) -> tuple[bool, str]:
        if effect.kind == "check_ready":
            return (True, "") if self.ready(effect.slot) else (False, f"slot {effect.slot} is not ready")
        return self.reload_slot(effect.slot, str(effect.version))

    def _release(self) -> None:
        if self.holding:
            try:
                self.live.store.release_lease(LEASE, self.holder)
            except StateStoreError:
                pass
            self.holding = False

    def _commit(self, rollout: dict[str, Any], step: Step, now: float) -> Snapshot:
        """Record ``step`` as one compare-and-set, unless the rollout moved on meanwhile."""
        verdict = step.verdict
        if step.action == "abort":
            log.warning("rollout %s aborted: %s", rollout.get("id"), (step.detail or {}).get("why"))
        evidence = verdict.evidence() if verdict is not None else {}
        entry = {"time": now, "phase": rollout["phase"], "step": rollout["step"],
                 "action": step.action, "controller": self.holder, **evidence,
                 **(step.detail or {})}

        def mutate(snap: Snapshot) -> Snapshot:
            current = snap.rollout
            if not current or current["id"] != rollout["id"] or current["status"] != rollout["status"] \
                    or current["phase"] != rollout["phase"] or current["step"] != rollout["step"]:
                raise Skip()
            routing = apply_routing(snap.routing, step.routing, step.routing_op)
            decisions = current.get("decisions") or []
            if not step.quiet:
                decisions = decisions[-(MAX_DECISIONS - 1):] + [entry]
            doc = {**current, **step.updates, "decisions": decisions, "updated_at": now}
            return Snapshot(snap.config_version, routing, doc)

        try:
            snap = self.live.change(mutate, actor=ACTOR, action=f"rollout.{step.action}", reason=None,
                                    evidence=orjson.loads(orjson.dumps(entry)))
        except Skip:  # an operator paused, resumed or ended it meanwhile: nothing was decided
            return self.live.current
        # counted once recorded, so the counter and the rollout's decisions agree
        if verdict is not None:
            self.metrics.rollout_decisions.labels(decision=verdict.decision).inc()
        if step.decision is not None:
            self.metrics.rollout_decisions.labels(decision=step.decision).inc()
        return snap

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

    # -- model-service calls ----------------------------------------------------------------------
    def ready(self, version: str) -> bool:
        try:
            resp = self.pools[version].request("GET", "/ready", b"", self.model_headers,
                                               time.monotonic() + 2.0)
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
