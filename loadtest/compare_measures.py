"""What users experienced in one comparison run, computed from its CSV files and its timeline.

A run leaves, in its folder: Locust's CSVs (``locust_stats.csv``, ``locust_stats_history.csv``,
...), the locustfile's request log (``requests.csv``: one row per request) and ``timeline.json``
(when the release was triggered, when the candidate took all traffic, when it was rolled back or
promoted). Everything here is a pure function of those files.

Phases of a run, by request start time:

- before: from the first request to the release;
- during: from the release to the final decision (promotion or rollback), or, where nothing
  decides (a restart in place), until the new process answers;
- after: from then to the end of the run.

Exposure is the number of requests the candidate answered (successfully or not) between the
release and the final decision (to the end of the run when nothing decides); see ``exposed``.

    >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.95)
    5.0
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("before", "during", "after")
QUANTILES = (0.5, 0.95, 0.99)
LOCUST_PREFIX = "locust"
REQUEST_LOG = "requests.csv"
TIMELINE = "timeline.json"


@dataclass(frozen=True)
class Request:
    """One row of the request log."""

    start: float
    user: str
    version: str
    model_version: str
    status: int
    ms: float
    failed: bool
    rows: int = 1
    correct: int | None = None  # rows predicted as the data set labels them; None when failed


@dataclass
class Timeline:
    """The moments of one run (seconds since the epoch) and what the release ended as."""

    scenario: str
    strategy: str
    stable: str
    candidate: str
    in_place: bool
    started: float
    release: float
    ended: float
    full_release: float | None = None  # the candidate answers all traffic from here on
    rollback: float | None = None  # all traffic back on the previous version
    decided: float | None = None  # the rollout's final decision (promoted or rolled back)
    outcome: str = ""
    exposure_from: float | None = None  # in place: stable's service starts serving the candidate
    max_weight: int | None = None  # highest canary weight reached
    plan: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def settled(self) -> float:
        """End of the "during" phase."""
        if self.decided is not None:
            return self.decided
        return self.full_release if self.full_release is not None else self.ended

    @property
    def exposure_until(self) -> float:
        return self.decided if self.decided is not None else self.ended

    def save(self, folder: Path) -> None:
        (folder / TIMELINE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: Path) -> Timeline:
        return cls(**json.loads((folder / TIMELINE).read_text()))


@dataclass(frozen=True)
class Measures:
    """The numbers one row of the report shows."""

    requests: int
    failed: int
    failed_by_phase: dict[str, int]
    requests_by_phase: dict[str, int]
    latency_ms: dict[str, tuple[float, float, float] | None]  # phase -> p50, p95, p99
    by_version: dict[str, tuple[int, int]]  # X-Model-Version -> requests, failed
    exposure: int  # requests the candidate answered before the final decision
    sent_before_decision: int  # all requests from the release to the final decision
    users_exposed: int
    users: int
    time_to_full_release: float | None
    time_to_rollback: float | None
    time_to_decision: float | None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def read_requests(folder: Path) -> list[Request]:
    with (folder / REQUEST_LOG).open(newline="") as handle:
        return [Request(float(r["start_time"]), r["user"], r["version"], r["model_version"],
                        int(r["status"]), float(r["response_time_ms"]), r["failed"] == "1",
                        int(r.get("rows") or 1),
                        int(r["correct"]) if r.get("correct") else None)
                for r in csv.DictReader(handle)]


def read_locust_totals(folder: Path) -> dict[str, tuple[int, int]]:
    """Locust's final ``Request Count`` and ``Failure Count`` per name (and ``Aggregated``)."""
    with (folder / f"{LOCUST_PREFIX}_stats.csv").open(newline="") as handle:
        return {row["Name"]: (int(row["Request Count"]), int(row["Failure Count"]))
                for row in csv.DictReader(handle)}


def phase_of(start: float, timeline: Timeline) -> str:
    if start < timeline.release:
        return "before"
    return "during" if start < timeline.settled else "after"


def exposed(request: Request, timeline: Timeline) -> bool:
    """Whether the candidate answered ``request`` before the final decision.

    A valid answer names its model (``model_version``). A failed one is the candidate's when
    the candidate's service gave it: with routing strategies the version the router names in
    ``X-Model-Version`` (the version served); in place, stable's slot while it held the candidate
    (the router names the candidate once the slot says so, the stable version before), unless the
    router could not reach it at all (502).
    """
    if not timeline.release <= request.start < timeline.exposure_until:
        return False
    if not request.failed:
        return request.model_version == timeline.candidate
    if not timeline.in_place:
        return request.version == timeline.candidate
    if timeline.exposure_from is None or request.start < timeline.exposure_from:
        return False
    until = timeline.rollback if timeline.rollback is not None else timeline.exposure_until
    return (request.version in (timeline.stable, timeline.candidate) and request.start < until
            and request.status != 502)


def measure(requests: list[Request], timeline: Timeline) -> Measures:
    """The report's numbers for one run."""
    by_phase: dict[str, list[Request]] = {p: [] for p in PHASES}
    for r in requests:
        by_phase[phase_of(r.start, timeline)].append(r)
    latency: dict[str, tuple[float, float, float] | None] = {}
    for phase, rows in by_phase.items():
        times = [r.ms for r in rows]
        latency[phase] = tuple(percentile(times, q) for q in QUANTILES) if times else None  # type: ignore[assignment]
    versions: Counter[str] = Counter(r.version for r in requests)
    failures: Counter[str] = Counter(r.version for r in requests if r.failed)
    window = [r for r in requests if timeline.release <= r.start < timeline.exposure_until]
    hits = [r for r in window if exposed(r, timeline)]

    def since_release(moment: float | None) -> float | None:
        return None if moment is None else moment - timeline.release

    return Measures(
        requests=len(requests),
        failed=sum(r.failed for r in requests),
        failed_by_phase={p: sum(r.failed for r in rows) for p, rows in by_phase.items()},
        requests_by_phase={p: len(rows) for p, rows in by_phase.items()},
        latency_ms=latency,
        by_version={v: (n, failures[v]) for v, n in sorted(versions.items())},
        exposure=len(hits),
        sent_before_decision=len(window),
        users_exposed=len({r.user for r in hits}),
        users=len({r.user for r in requests}),
        time_to_full_release=since_release(timeline.full_release),
        time_to_rollback=since_release(timeline.rollback),
        time_to_decision=since_release(timeline.decided),
    )


@dataclass(frozen=True)
class Quality:
    """How often the answers users got were right (the request log's ``correct`` column)."""

    by_version: dict[str, tuple[int, int]]  # the body's model_version -> rows answered, rows right
    rows_by_phase: dict[str, int]
    wrong_by_phase: dict[str, int]


def quality(requests: list[Request], timeline: Timeline) -> Quality | None:
    """Per version and phase, rows answered and rows right; None when the log has no labels."""
    scored = [r for r in requests if r.correct is not None]
    if not scored:
        return None
    by_version: dict[str, tuple[int, int]] = {}
    rows = dict.fromkeys(PHASES, 0)
    wrong = dict.fromkeys(PHASES, 0)
    for r in scored:
        n, right = by_version.get(r.model_version, (0, 0))
        by_version[r.model_version] = (n + r.rows, right + (r.correct or 0))
        phase = phase_of(r.start, timeline)
        rows[phase] += r.rows
        wrong[phase] += r.rows - (r.correct or 0)
    return Quality(dict(sorted(by_version.items())), rows, wrong)


def disagreements(requests: list[Request], locust: dict[str, tuple[int, int]]) -> list[str]:
    """Where the request log and Locust's own totals of predictions differ (empty when they agree).

    The log holds predictions only; Locust's ``feedback`` requests are left out of its totals.
    """
    ours: dict[str, tuple[int, int]] = {}
    for r in requests:
        name = f"predict [{r.version}]"
        n, f = ours.get(name, (0, 0))
        ours[name] = (n + 1, f + int(r.failed))
    ours["Aggregated"] = (len(requests), sum(r.failed for r in requests))
    locust = {name: totals for name, totals in locust.items() if name.startswith("predict")}
    locust["Aggregated"] = (sum(n for n, _ in locust.values()), sum(f for _, f in locust.values()))
    problems = []
    for name in sorted(set(ours) | set(locust)):
        if ours.get(name, (0, 0)) != locust.get(name, (0, 0)):
            problems.append(f"{name}: request log {ours.get(name, (0, 0))}, "
                            f"Locust {locust.get(name, (0, 0))} (requests, failures)")
    return problems


@dataclass(frozen=True)
class Series:
    """Per-second series of a run, for the plots (x: seconds since the release).

    Only whole seconds under load are in it: the run starts and ends mid-second, and a bin the
    load covered in part would show too few requests and a skewed failure share.
    """

    seconds: list[float]  # the start of each bin
    bin_s: float
    latency_ms: dict[str, tuple[list[float | None], ...]]  # answering version -> p50, p95, p99
    error_rate: list[float | None]  # percent
    answers: dict[str, list[int]]  # per second: "v1"/"v2" (the model that answered) and "failed"


def series(requests: list[Request], timeline: Timeline, bin_s: float = 1.0) -> Series:
    """Bins of ``bin_s`` seconds aligned on the release, those the load covered from end to end.

    >>> rows = [Request(10.0 + i / 10, "u", "v1", "v1", 200, 5.0, False) for i in range(25)]
    >>> s = series(rows, Timeline("good", "canary", "v1", "v2", False, 0.0, 10.0, 13.0))
    >>> s.seconds, s.answers
    ([0.0, 1.0], {'v1': [10, 10]})
    """
    if not requests:
        return Series([], bin_s, {}, [], {})
    first = min(r.start for r in requests) - timeline.release
    last = max(r.start for r in requests) - timeline.release
    offset = math.ceil(first / bin_s)
    count = max(0, math.floor(last / bin_s) - offset)
    bins: list[list[Request]] = [[] for _ in range(count)]
    for r in requests:
        i = math.floor((r.start - timeline.release) / bin_s) - offset
        if 0 <= i < count:
            bins[i].append(r)
    kinds = sorted({_answer(r) for b in bins for r in b}, key=lambda k: (k == "failed", k))
    versions = sorted({_served_by(r) for b in bins for r in b})

    def pct(rows: list[Request], q: float) -> float | None:
        return percentile([r.ms for r in rows], q) if rows else None

    def latency(version: str) -> tuple[list[float | None], ...]:
        mine = [[r for r in b if _served_by(r) == version] for b in bins]
        return tuple([pct(rows, q) for rows in mine] for q in QUANTILES)

    return Series(
        seconds=[(offset + i) * bin_s for i in range(count)],
        bin_s=bin_s,
        latency_ms={v: latency(v) for v in versions},
        error_rate=[100.0 * sum(r.failed for r in b) / len(b) if b else None for b in bins],
        answers={k: [sum(_answer(r) == k for r in b) for b in bins] for k in kinds},
    )


def _served_by(request: Request) -> str:
    """The version whose service gave the answer: the model's own name, else the router's."""
    return request.model_version or request.version


def _answer(request: Request) -> str:
    return "failed" if request.failed else _served_by(request)
