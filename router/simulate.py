"""``rollout simulate``: the real controller and judge, synthetic traffic, a simulated clock.

Each run starts a rollout from the plan and, second by simulated second, sends requests as the
routing of that moment splits them (sticky users on a canary, mirrored copies under shadow,
everything on the stable slot otherwise), each failing and taking as long as its version's
settings say; the controller (``router.rollout.RolloutController``) ticks once a second and
reads the counts through a metric source, exactly as in a router. Nothing is copied: only the
state store, the metric source and the model services are stand-ins.

    >>> outcome = simulate(plan, Traffic(rps=20, stable_error_rate=0.01,
    ...                                  candidate_error_rate=0.01), runs=200, seed=1)  # doctest: +SKIP
    >>> outcome.share("rolled_back")
    0.0

``--replay LOG.csv`` takes the arrival times and users from a request log written by the
locustfile (``--request-log``) instead of drawing them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from metrics.buckets import LATENCY_BUCKETS
from metrics.window import Reading, VersionCounts
from router.live_state import Snapshot
from router.rollout import RolloutController, new_rollout
from router.rollout_plan import RolloutPlan
from router.rollout_step import analyse
from strategies.base import RoutingState

BOUNDS = np.asarray((*LATENCY_BUCKETS, math.inf))
STABLE, CANDIDATE = "v1", "v2"
DONE = ("promoted", "rolled_back", "aborted", "awaiting_promotion")


@dataclass(frozen=True)
class Traffic:
    """The synthetic load and how each version behaves."""

    rps: float = 20.0
    stable_error_rate: float = 0.01
    candidate_error_rate: float = 0.01
    candidate_latency_factor: float = 1.0
    stable_latency_ms: float = 100.0  # the median; latencies are log-normal
    latency_sigma: float = 0.5
    candidate_agreement: float = 0.99  # share of mirrored rows on which the versions agree
    users: int = 200
    max_seconds: float = 3600.0


@dataclass(frozen=True)
class Arrivals:
    """Request arrival times (seconds from the start) and their users, from a request log."""

    times: np.ndarray
    users: np.ndarray

    @classmethod
    def from_log(cls, path: Path) -> Arrivals:
        """Read a locustfile request log (``--request-log``): start time and user of each request."""
        times, users, ids = [], [], {}
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"start_time", "user"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path} is not a request log of the locustfile: no column "
                                 f"{', '.join(sorted(missing))} (write one with --request-log)")
            for row in reader:
                try:
                    times.append(float(row["start_time"]))
                except ValueError:
                    raise ValueError(f"{path}: start_time {row['start_time']!r} is not a number") from None
                users.append(ids.setdefault(row["user"], len(ids)))
        if not times:
            raise ValueError(f"{path} holds no requests")
        order = np.argsort(times)
        t = np.asarray(times)[order]
        return cls(t - t[0], np.asarray(users)[order])


# -- stand-ins for the state store, the model services and the metric source ----------------------


class _Store:
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        return True

    def release_lease(self, name: str, holder: str) -> None:
        return None


class _Live:
    """The routing state in memory, changed as LiveState changes it (compare-and-set)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self.store = _Store()

    def change(self, mutate: Callable[[Snapshot], Snapshot], **_: Any) -> Snapshot:
        after = mutate(self.current)
        self.current = Snapshot(self.current.config_version + 1, after.routing, after.rollout)
        return self.current


class _Slots:
    """Which version each slot serves; a reload changes it at once."""

    def __init__(self) -> None:
        self.served = {STABLE: STABLE, CANDIDATE: CANDIDATE}

    def get(self, slot: str) -> str | None:
        return self.served.get(slot)

    def ask(self, slot: str) -> str | None:
        return self.served.get(slot)

    def refresh(self, slot: str | None = None) -> dict[str, str | None]:
        return dict(self.served)


@dataclass
class _Response:
    status: int = 200
    body: bytes = b"{}"


class _Service:
    def __init__(self, slot: str, slots: _Slots) -> None:
        self.slot, self.slots = slot, slots

    def request(self, method: str, path: str, body: bytes, *_: Any) -> _Response:
        if path == "/admin/reload":
            import orjson

            self.slots.served[self.slot] = orjson.loads(body)["version"]
        return _Response()


class _Counter:
    def labels(self, **_: str) -> _Counter:
        return self

    def inc(self, amount: float = 1.0) -> None:
        return None


class _Metrics:
    rollout_decisions = _Counter()


class _Source:
    """Cumulative counts of the simulated traffic, read as a router's metric source reads."""

    def __init__(self) -> None:
        self.n = {v: np.zeros(6) for v in (STABLE, CANDIDATE)}  # req, err, sreq, serr, agree, dis
        self.lat = {v: np.zeros(len(BOUNDS)) for v in (STABLE, CANDIDATE)}
        self.shadow_lat = {v: np.zeros(len(BOUNDS)) for v in (STABLE, CANDIDATE)}

    def read(self) -> Reading:
        out = {}
        for v, n in self.n.items():
            out[v] = VersionCounts(
                requests=float(n[0]), errors=float(n[1]),
                latency_buckets=dict(zip(BOUNDS.tolist(), np.cumsum(self.lat[v]).tolist(), strict=True)),
                shadow_requests=float(n[2]), shadow_errors=float(n[3]),
                shadow_latency_buckets=dict(zip(BOUNDS.tolist(), np.cumsum(self.shadow_lat[v]).tolist(),
                                                strict=True)),
                agree=float(n[4]), disagree=float(n[5]))
        return out


# -- one run ----------------------------------------------------------------------------------------


@dataclass
class RunResult:
    outcome: str  # promoted, rolled_back, aborted, awaiting_promotion or undecided
    seconds: float  # to the final decision (or the end of the run)
    exposure: int  # requests the candidate answered before the decision
    users_exposed: int
    analyses: int
    max_weight: int  # the largest share of traffic (percent) the candidate had before the decision


class _Run:
    def __init__(self, plan: RolloutPlan, traffic: Traffic, rng: np.random.Generator,
                 analyse_fn: Callable[..., Any], arrivals: Arrivals | None) -> None:
        self.plan, self.traffic, self.rng, self.arrivals = plan, traffic, rng, arrivals
        self.slots = _Slots()
        self.source = _Source()
        routing = RoutingState("release-in-place", stable=STABLE, candidate=None)
        rollout, changes = new_rollout(plan, Snapshot(1, routing), 0.0, dict(self.slots.served),
                                       self.source.read())
        self.live = _Live(Snapshot(1, replace(routing, **changes), rollout))
        pools = {s: _Service(s, self.slots) for s in (STABLE, CANDIDATE)}
        self.controller = RolloutController(self.live, self.source, pools, _Metrics(), "sim",
                                            self.slots, analyse=analyse_fn)  # type: ignore[arg-type]
        n_users = int(arrivals.users.max()) + 1 if arrivals is not None else traffic.users
        self.user_draw = rng.random(n_users)
        self.exposed = np.zeros(n_users, dtype=bool)
        self.exposure = 0
        self.max_weight = 0
        self.behaviour = {STABLE: (traffic.stable_error_rate, 1.0),
                          CANDIDATE: (traffic.candidate_error_rate, traffic.candidate_latency_factor)}

    def _users(self, second: int) -> np.ndarray:
        if self.arrivals is None:
            n = self.rng.poisson(self.traffic.rps)
            return self.rng.integers(0, len(self.user_draw), size=n)
        times = self.arrivals.times
        if len(times) == 0:
            return np.zeros(0, dtype=int)
        period = math.floor(times[-1]) + 1  # a log shorter than the rollout repeats
        lo, hi = np.searchsorted(times, [second % period, second % period + 1])
        return self.arrivals.users[lo:hi]

    def _serve(self, version: str, users: np.ndarray, shadow: bool = False) -> None:
        n = len(users)
        if not n:
            return
        error_rate, factor = self.behaviour[version]
        errors = self.rng.binomial(n, error_rate)
        t = self.traffic
        latency = t.stable_latency_ms / 1e3 * factor * np.exp(t.latency_sigma * self.rng.standard_normal(n))
        hist = np.bincount(np.searchsorted(BOUNDS, latency), minlength=len(BOUNDS))
        counts = self.source.n[version]
        if shadow:
            counts[2] += n
            counts[3] += errors
            agree = self.rng.binomial(n - errors, t.candidate_agreement)
            counts[4] += agree
            counts[5] += n - errors - agree
            self.source.shadow_lat[version] += hist
        else:
            counts[0] += n
            counts[1] += errors
            self.source.lat[version] += hist
        if version == CANDIDATE and not shadow:
            self.exposure += n
            self.exposed[users] = True

    def second(self, s: int) -> None:
        users = self._users(s)
        routing = self.live.current.routing
        served = self.slots.served
        if routing.strategy == "canary" and routing.candidate:
            self.max_weight = max(self.max_weight, routing.canary_weight)
            on = self.user_draw[users] < routing.canary_weight / 100.0
            self._serve(served[routing.candidate], users[on])
            self._serve(served[routing.stable], users[~on])
            return
        if served[routing.stable] == CANDIDATE:
            self.max_weight = 100
        self._serve(served[routing.stable], users)
        if routing.strategy == "shadow" and routing.candidate and routing.shadow_percent:
            mirrored = users[self.rng.random(len(users)) < routing.shadow_percent / 100.0]
            self._serve(served[routing.candidate], mirrored, shadow=True)

    def run(self) -> RunResult:
        s = 0
        while s < self.traffic.max_seconds:
            self.second(s)
            s += 1
            self.controller.tick(float(s))
            rollout = self.live.current.rollout or {}
            if rollout.get("status") in DONE:
                break
        rollout = self.live.current.rollout or {}
        status = rollout.get("status", "running")
        analyses = sum(1 for d in rollout.get("decisions") or [] if "checks" in d)
        return RunResult(status if status in DONE else "undecided", float(s), self.exposure,
                         int(self.exposed.sum()), analyses, self.max_weight)


# -- many runs ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    runs: list[RunResult] = field(default_factory=list)

    def share(self, outcome: str) -> float:
        return sum(r.outcome == outcome for r in self.runs) / len(self.runs) if self.runs else 0.0

    def percentile(self, name: str, q: float) -> float:
        values = [getattr(r, name) for r in self.runs]
        return float(np.percentile(values, q)) if values else math.nan

    def rolled_back_by(self, weight: int) -> float:
        """Share of runs rolled back before the candidate's traffic share passed ``weight``."""
        hits = sum(r.outcome in ("rolled_back", "aborted") and r.max_weight <= weight
                   for r in self.runs)
        return hits / len(self.runs) if self.runs else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "runs": len(self.runs),
            "rolled_back_by_50": self.rolled_back_by(50),
            "promoted": self.share("promoted") + self.share("awaiting_promotion"),
            "rolled_back": self.share("rolled_back") + self.share("aborted"),
            "undecided": self.share("undecided"),
            "seconds_p50": self.percentile("seconds", 50), "seconds_p95": self.percentile("seconds", 95),
            "exposure_p50": self.percentile("exposure", 50), "exposure_p95": self.percentile("exposure", 95),
            "users_exposed_p50": self.percentile("users_exposed", 50),
            "analyses_p50": self.percentile("analyses", 50),
        }


def simulate(plan: RolloutPlan, traffic: Traffic, runs: int, seed: int = 0,
             analyse_fn: Callable[..., Any] = analyse, arrivals: Arrivals | None = None,
             progress: Callable[[int], None] | None = None) -> Outcome:
    """Run ``runs`` rollouts of ``plan`` under ``traffic``; seeded, so repeatable."""
    if plan.version is not None:
        plan = replace(plan, version=None)  # the simulated slots serve their versions already
    rng = np.random.default_rng(seed)
    outcome = Outcome()
    for i in range(runs):
        outcome.runs.append(_Run(plan, traffic, rng, analyse_fn, arrivals).run())
        if progress is not None:
            progress(i + 1)
    return outcome


def plan_for(doc: dict[str, Any]) -> RolloutPlan:
    """A plan document (as ``rollout start --plan`` reads it) validated as the router would."""
    from router.rollout_plan import parse_plan

    strategy = doc.get("strategy", "canary")
    return parse_plan({**doc, "strategy": strategy, "candidate": doc.get("candidate", CANDIDATE)},
                      candidate=CANDIDATE, versions=[STABLE, CANDIDATE], can_reload=True,
                      stable=STABLE) if strategy != "release-in-place" else parse_plan(
        {**doc, "version": CANDIDATE}, candidate=None, versions=[STABLE, CANDIDATE],
        can_reload=True, stable=STABLE)


def format_summary(summary: dict[str, Any], rps: float) -> Sequence[str]:
    def minutes(seconds: float) -> str:
        return f"{seconds / 60:.1f} min"

    return (
        f"runs:                 {summary['runs']}",
        f"promoted:             {summary['promoted']:.1%}",
        f"rolled back:          {summary['rolled_back']:.1%} ({summary['rolled_back_by_50']:.1%} "
        "before the candidate had more than 50 % of the traffic)",
        f"undecided:            {summary['undecided']:.1%}",
        f"to the decision:      p50 {minutes(summary['seconds_p50'])}, p95 {minutes(summary['seconds_p95'])}",
        f"exposure (requests):  p50 {summary['exposure_p50']:.0f}, p95 {summary['exposure_p95']:.0f} "
        f"(of about {rps:g} a second)",
        f"users exposed:        p50 {summary['users_exposed_p50']:.0f}",
        f"analyses:             p50 {summary['analyses_p50']:.0f}",
    )
