"""Shadow traffic: copies of requests sent to the candidate off the request path, then compared.

A bounded queue feeds a few worker threads. When the queue is full the copy is dropped and
counted; the client's response never waits for the candidate, and never sees its answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from metrics.analysis import Thresholds
from metrics.router import RouterMetrics
from router.slots import SlotVersions
from router.upstream import Timeout, UpstreamError, UpstreamPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """When two regressors' predictions agree: ``|candidate - stable| <= abs_tol + rel_tol * |stable|``."""

    abs_tol: float = Thresholds.agreement_abs_tol
    rel_tol: float = Thresholds.agreement_rel_tol

    @classmethod
    def of_rollout(cls, rollout: dict[str, Any] | None) -> Tolerance:
        """The running rollout plan's tolerance, else the defaults."""
        given = ((rollout or {}).get("plan") or {}).get("thresholds") or {}
        if "agreement_abs_tol" not in given and "agreement_rel_tol" not in given:
            return DEFAULT_TOLERANCE
        return cls(float(given.get("agreement_abs_tol", cls.abs_tol)),
                   float(given.get("agreement_rel_tol", cls.rel_tol)))

    def agrees(self, stable: float, candidate: float) -> bool:
        return abs(candidate - stable) <= self.abs_tol + self.rel_tol * abs(stable)


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class MirrorJob:
    """A copy of one request for the candidate's slot; ``stable`` is the version that answered."""

    stable: str
    candidate: str  # the candidate's slot
    body: bytes
    headers: list[tuple[str, str]]
    stable_body: bytes
    tolerance: Tolerance = DEFAULT_TOLERANCE
    request_id: str = ""


@dataclass(frozen=True)
class Comparison:
    """How a candidate's answer compares with stable's for one request, row by row.

    Classifiers agree on a row when they predict the same class, and ``max_diff`` is the largest
    probability difference; regressors agree within a :class:`Tolerance`, and ``max_diff`` is the
    largest absolute difference of the predicted values (``regression`` is then true).
    """

    agree: bool  # every row agrees
    max_diff: float
    rows: int
    agreeing_rows: int
    regression: bool = False


def compare(stable_body: bytes, candidate_body: bytes,
            tolerance: Tolerance = DEFAULT_TOLERANCE) -> Comparison | None:
    """Row-by-row agreement of two answers to the same request; None if either is unusable."""
    try:
        ours, theirs = orjson.loads(stable_body), orjson.loads(candidate_body)
        p1, p2 = ours["predictions"], theirs["predictions"]
        if "probabilities" not in ours and "probabilities" not in theirs:
            return _compare_values(p1, p2, tolerance)
        q1, q2 = ours["probabilities"], theirs["probabilities"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if len(p1) != len(p2) or len(q1) != len(q2):
        return Comparison(False, 1.0, len(p1), 0)
    diff = max(
        (abs(a - b) for r1, r2 in zip(q1, q2, strict=True) for a, b in zip(r1, r2, strict=False)),
        default=0.0,
    )
    agreeing = sum(1 for a, b in zip(p1, p2, strict=True) if a == b)
    return Comparison(p1 == p2, float(diff), len(p1), agreeing)


def _compare_values(p1: list[float], p2: list[float], tolerance: Tolerance) -> Comparison | None:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (*p1, *p2)):
        return None
    if len(p1) != len(p2):
        return Comparison(False, float("inf"), len(p1), 0, regression=True)
    agreeing = sum(1 for a, b in zip(p1, p2, strict=True) if tolerance.agrees(a, b))
    diff = max((abs(b - a) for a, b in zip(p1, p2, strict=True)), default=0.0)
    return Comparison(agreeing == len(p1), float(diff), len(p1), agreeing, regression=True)


class Mirror:
    """The bounded shadow queue and its workers for one router process."""

    def __init__(self, pools: dict[str, UpstreamPool], metrics: RouterMetrics,
                 workers: int, capacity: int, timeout_s: float, slots: SlotVersions) -> None:
        self.pools = pools
        self.slots = slots
        self.metrics = metrics
        self.workers = workers
        self.timeout_s = timeout_s
        self.jobs: queue.Queue[MirrorJob | None] = queue.Queue(maxsize=capacity)
        self._started = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # called with (job, candidate version, answer) for each 200 answer: feedback joins it
        self.on_answer: Callable[[MirrorJob, str, bytes], None] | None = None
        # (job, candidate version, candidate's body) of every compared copy: disagreement analytics
        self.record_disagreements: Callable[[MirrorJob, str, bytes], None] | None = None

    def submit(self, job: MirrorJob) -> bool:
        """Queue a copy; False (and counted as dropped) when the queue is full or closed."""
        if not self._started:
            self._start()
        if self._closed:
            self.metrics.child(self.metrics.shadow_requests, self.slots.label(job.candidate),
                               "dropped").inc()
            return False
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            self.metrics.child(self.metrics.shadow_requests, self.slots.label(job.candidate),
                               "dropped").inc()
            return False
        return True

    def _start(self) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            for i in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"shadow-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self._started = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Take no more copies; the workers finish the copies queued so far, then stop.

        A copy still queued after ``timeout_s`` is given up (the client has its answer already).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            try:
                self.jobs.put(None, timeout=timeout_s)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self._mirror(job)
            except Exception:
                log.exception("shadow request failed unexpectedly")

    def _mirror(self, job: MirrorJob) -> None:
        metrics = self.metrics
        outcome = "ok"
        started = time.perf_counter()
        candidate = self.slots.label(job.candidate)
        try:
            resp = self.pools[job.candidate].request(
                "POST", "/predict", job.body, job.headers, time.monotonic() + self.timeout_s
            )
        except Timeout:
            outcome = "timeout"
        except UpstreamError as exc:
            outcome = exc.reason if exc.reason in ("refused", "reset") else "unreachable"
        else:
            answered = next((v for n, v in resp.headers if n.lower() == "x-model-version"), None)
            self.slots.observed(job.candidate, answered)
            candidate = answered or candidate
            metrics.child(metrics.shadow_duration, candidate).observe(
                time.perf_counter() - started
            )
            if resp.status != 200:
                outcome = "error"
            else:
                if self.on_answer is not None:
                    self.on_answer(job, candidate, resp.body)
                result = compare(job.stable_body, resp.body, job.tolerance)
                if result is None:
                    outcome = "invalid"
                else:
                    pair = (job.stable, candidate)
                    # counted per row: a batch request compares as many predictions as it has rows
                    if result.agreeing_rows:
                        metrics.child(metrics.shadow_comparisons, "agree", *pair).inc(
                            result.agreeing_rows
                        )
                    if result.rows - result.agreeing_rows:
                        metrics.child(metrics.shadow_comparisons, "disagree", *pair).inc(
                            result.rows - result.agreeing_rows
                        )
                    diffs = (metrics.shadow_value_diff if result.regression
                             else metrics.shadow_probability_diff)
                    metrics.child(diffs, *pair).observe(result.max_diff)
                    self._disagreements(job, candidate, resp.body)
        metrics.child(metrics.shadow_requests, candidate, outcome).inc()

    def _disagreements(self, job: MirrorJob, candidate: str, body: bytes) -> None:
        """Hand a compared copy to the disagreement recorder; its failure never stops the count."""
        if self.record_disagreements is None:
            return
        try:
            self.record_disagreements(job, candidate, body)
        except Exception:
            log.exception("recording the disagreements of a shadow copy failed")
