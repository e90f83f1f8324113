"""The scenarios and releases of a comparison run, and what the router says it decided.

A scenario says what v2 is (as trained, with injected faults, or a model as fast and reliable as v1
that is clearly more often wrong) and what the rollout plans check; a release says how v2 reaches
users: a restart or hot reload of stable's service, or an automated rollout (``POST
/admin/rollout``) with the blue-green, canary or shadow plan below.

    >>> RELEASES["canary"].plan(interval_s=2, min_requests=20)["steps"]
    [10, 25, 50, 100]
"""

from __future__ import annotations

from metrics.analysis import Thresholds

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

import requests

STABLE, CANDIDATE = "v1", "v2"
ADMIN_TOKEN = "bench"  # the token loadtest.harness.router() starts the router with
FINAL = ("promoted", "rolled_back")
# The router's default thresholds: the latency check's absolute margin (max_latency_increase_ms)
# keeps the few milliseconds of noise on a shared host from failing a healthy v2.
THRESHOLDS = {name: getattr(Thresholds(), name) for name in (
    "max_error_rate_increase", "max_latency_ratio", "max_latency_increase_ms", "latency_quantile",
    "min_agreement", "confidence")}


# The quality check of the bad-quality scenarios: v2 may be right at most 5 points less often
# than v1, judged once each version has this many labelled rows in the phase
QUALITY_THRESHOLDS = {"max_accuracy_drop": 0.05}
QUALITY_MIN_LABELS = 500
# share of answered requests whose true labels the simulated users send back (POST /feedback)
QUALITY_FEEDBACK_SHARE = 0.5


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fault_env: dict[str, str] = field(default_factory=dict)
    degraded: bool = False  # v2 is the deliberately degraded model (ensure_degraded_artifacts)
    feedback_share: float = 0.0  # the locustfile's --feedback-share
    plan_fields: dict[str, Any] = field(default_factory=dict)  # added to every rollout plan


DEGRADED = ("v2 is v1's pipeline trained with half the malignant rows labelled benign: as fast "
            "and as reliable, right about 22 points less often")
SCENARIOS = {s.name: s for s in (
    Scenario("good", "v2 as trained"),
    Scenario("bad-errors", "v2 answers 20 % of requests with 500 (FAULT_ERROR_RATE=0.2)",
             {"FAULT_ERROR_RATE": "0.2"}),
    Scenario("bad-latency", "v2 adds 300 ms to every answer (FAULT_LATENCY_MS=300)",
             {"FAULT_LATENCY_MS": "300"}),
    Scenario("bad-quality", f"{DEGRADED}; users send the true labels of "
             f"{QUALITY_FEEDBACK_SHARE:.0%} of their answers, and the plans check service "
             "metrics only",
             degraded=True, feedback_share=QUALITY_FEEDBACK_SHARE),
    Scenario("bad-quality-checked", f"{DEGRADED}; users send the true labels of "
             f"{QUALITY_FEEDBACK_SHARE:.0%} of their answers, and the plans add the quality check "
             f"`max_accuracy_drop` {QUALITY_THRESHOLDS['max_accuracy_drop']} with `min_labels` "
             f"{QUALITY_MIN_LABELS}",
             degraded=True, feedback_share=QUALITY_FEEDBACK_SHARE,
             plan_fields={"thresholds": QUALITY_THRESHOLDS, "min_labels": QUALITY_MIN_LABELS}),
)}
# the bad-quality pair runs when asked for (--scenarios): it shows the quality check, not a strategy
DEFAULT_SCENARIOS = ("good", "bad-errors", "bad-latency")


@dataclass(frozen=True)
class Release:
    """One way to release v2."""

    name: str
    title: str
    how: str
    in_place: bool = False
    restart: bool = False
    plan_fields: dict[str, Any] = field(default_factory=dict)

    def plan(self, interval_s: float, min_requests: int,
             scenario: Scenario | None = None) -> dict[str, Any] | None:
        """The rollout plan to POST, or None when the release is not a rollout."""
        if not self.plan_fields:
            return None
        extra = dict(scenario.plan_fields) if scenario is not None else {}
        thresholds = {**THRESHOLDS, **extra.pop("thresholds", {})}
        return {**self.plan_fields, "interval_s": interval_s, "min_requests": min_requests,
                "max_failed_analyses": 1, **extra, "thresholds": thresholds,
                "reason": f"comparison run: {self.name}"}

    def skip_reason(self, scenario: Scenario) -> str | None:
        """Why this release cannot be run in ``scenario``; None when it can."""
        if self.in_place and not self.restart and scenario.fault_env:
            return ("not run: faults are injected per process (FAULT_* variables at start) and a "
                    "hot reload keeps the process, so a faulty v2 cannot be reloaded in place")
        return None


RELEASES = {r.name: r for r in (
    Release("restart", "release-in-place (restart)",
            "SIGTERM to stable's model service, then `python -m model_service serve --version v2` "
            "on the same port, as a Heroku deploy does; nothing checks the new version",
            in_place=True, restart=True),
    Release("reload", "release-in-place (hot reload)",
            "rollout plan `release-in-place`: stable's service reloads v2 (POST /admin/reload), "
            "bakes for 2 analyses against the window before, reloads v1 on a failed analysis",
            in_place=True,
            plan_fields={"strategy": "release-in-place", "release_version": CANDIDATE,
                         "bake_analyses": 2}),
    Release("blue-green", "blue-green",
            "rollout plan `blue-green`: one analysis of the live colour, an atomic switch to v2, "
            "2 bake analyses against the window before, switch back on a failed analysis",
            plan_fields={"strategy": "blue-green", "candidate": CANDIDATE, "bake_analyses": 2}),
    Release("canary", "canary",
            "rollout plan `canary`: weights 10, 25, 50 % (sticky by X-User-ID), one analysis per "
            "step, promotion to 100 %, rollback on a failed analysis",
            plan_fields={"strategy": "canary", "candidate": CANDIDATE, "steps": [10, 25, 50, 100]}),
    Release("shadow", "shadow",
            "rollout plan `shadow-then-canary` with steps [100]: every request mirrored to v2 "
            "for 2 analyses (errors, latency, agreement), then promotion in one step, rollback on "
            "a failed analysis",
            plan_fields={"strategy": "shadow-then-canary", "candidate": CANDIDATE, "steps": [100],
                         "shadow_percent": 100, "shadow_analyses": 2}),
    Release("shadow-then-canary", "shadow, then canary",
            "rollout plan `shadow-then-canary`: 2 mirrored analyses, then the canary steps",
            plan_fields={"strategy": "shadow-then-canary", "candidate": CANDIDATE,
                         "steps": [10, 25, 50, 100], "shadow_percent": 100,
                         "shadow_analyses": 2}),
)}
DEFAULT_RELEASES = ("restart", "reload", "blue-green", "canary", "shadow")


class Admin:
    """The few admin calls a comparison run makes."""

    def __init__(self, url: str, token: str = ADMIN_TOKEN) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["X-Actor"] = "loadtest.compare"

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.session.request(method, self.url + path, timeout=10, **kwargs)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path} answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/admin/state")

    def rollout(self) -> dict[str, Any] | None:
        return self._call("GET", "/admin/rollout").get("rollout")

    def start(self, plan: dict[str, Any]) -> None:
        self._call("POST", "/admin/rollout", json=plan)

    def rollback(self, reason: str) -> None:
        self._call("POST", "/admin/rollback", json={"reason": reason})


class StatePoller:
    """Polls the routing state a few times a second and keeps each change with its time."""

    FIELDS = ("strategy", "stable", "candidate", "canary_weight", "shadow_percent")

    def __init__(self, admin: Admin, interval_s: float = 0.25) -> None:
        self.admin = admin
        self.interval_s = interval_s
        self.changes: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-poller", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last: dict[str, Any] | None = None
        while not self._stop.is_set():
            try:
                state = self.admin.state()
            except (requests.RequestException, RuntimeError, ValueError):
                state = None
            if state is not None:
                current = {k: state.get(k) for k in self.FIELDS}
                if current != last:
                    self.changes.append({"time": time.time(), **current})
                    last = current
            self._stop.wait(self.interval_s)

    def max_canary_weight(self) -> int | None:
        weights = [c["canary_weight"] for c in self.changes if c["strategy"] == "canary"]
        return max(weights) if weights else None


def _failed_checks(decision: dict[str, Any]) -> str:
    checks = [c for c in decision.get("checks", []) if c.get("decision") == "fail"]
    return ", ".join(f"{c['name']} {_short(c['value'])} > {c['threshold']}"
                     if c["name"] != "agreement"
                     else f"{c['name']} {_short(c['value'])} < {c['threshold']}" for c in checks)


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def read_outcome(rollout: dict[str, Any]) -> dict[str, Any]:
    """Timeline fields from the rollout document: when v2 took all traffic, rollback, decision."""
    decisions = rollout.get("decisions") or []
    fields: dict[str, Any] = {"decisions": decisions, "outcome": rollout.get("status", "")}
    for d in decisions:
        action = d.get("action")
        if action in ("switch", "reload", "promote") and fields.get("full_release") is None:
            fields["full_release"] = d["time"]
        if action == "reload":
            fields["exposure_from"] = d["time"]
        if action in ("rollback", "abort-not-ready", "abort-reload-failed"):
            fields["rollback"] = d["time"]
            why = _failed_checks(d) or d.get("error", "") or action
            fields["outcome"] = f"rolled back ({why})"
    if rollout.get("status") in FINAL and decisions:
        fields["decided"] = decisions[-1]["time"]
        if rollout["status"] == "promoted":
            fields["outcome"] = "promoted"
    return fields
