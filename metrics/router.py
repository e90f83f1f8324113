"""The router's Prometheus metrics (names from the product contract).

Label sets are bounded: versions come from ROUTER_UPSTREAMS, strategies from the registry,
codes and reasons from small fixed sets. Children are bound once and cached.

Client requests, the one thing counted on every request, are tallied in memory and written to
the shared (multiprocess) values in bulk: every ``FLUSH_INTERVAL_S``, before this process reads
or serves its metrics, and when the worker exits. With several workers, a scrape may miss the
last ``FLUSH_INTERVAL_S`` of another worker's requests; they appear in the next one. Writing each
request through prometheus_client's multiprocess values costs three locked file-backed writes,
several percent of a forwarded request's CPU; a tally costs one append.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter as Tally
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.buckets import LATENCY_BUCKETS

FLUSH_INTERVAL_S = 0.1
_LIVE: weakref.WeakSet[RouterMetrics] = weakref.WeakSet()


def _forked() -> None:
    """A forked child has none of its parent's threads: each tally starts its own flusher.

    Requests the parent counted stay the parent's to write.
    """
    for metrics in list(_LIVE):
        metrics._flushing = False
        metrics._flush_lock = threading.Lock()
        metrics._pending.clear()


os.register_at_fork(after_in_child=_forked)


def flush_all() -> None:
    """Write every pending request tally of this process (a worker's exit hook calls this)."""
    for metrics in list(_LIVE):
        metrics.flush()


PROBABILITY_DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# regressors' predictions are on the user's own scale: decades from a millionth to a million
VALUE_DIFF_BUCKETS = tuple(10.0 ** e for e in range(-6, 7))


class RouterMetrics:
    """Every router metric, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "router_requests_total", "Client requests by answering version, strategy and status.",
            ["version", "strategy", "code"], registry=registry,
        )
        self.duration = Histogram(
            "router_request_duration_seconds", "Client-facing latency by answering version.",
            ["version"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.upstream_errors = Counter(
            "router_upstream_errors_total", "Failed upstream calls by version and reason.",
            ["version", "reason"], registry=registry,
        )
        self.shadow_requests = Counter(
            "router_shadow_requests_total", "Mirrored requests by version and outcome.",
            ["version", "outcome"], registry=registry,
        )
        self.shadow_comparisons = Counter(
            "router_shadow_comparisons_total", "Rows whose shadow prediction agrees with stable's.",
            ["result", "stable", "candidate"], registry=registry,
        )
        self.shadow_probability_diff = Histogram(
            "router_shadow_probability_diff", "Largest absolute probability difference per request.",
            ["stable", "candidate"], buckets=PROBABILITY_DIFF_BUCKETS, registry=registry,
        )
        self.shadow_value_diff = Histogram(
            "router_shadow_value_diff", "Largest absolute difference of two regressors' "
            "predictions per request.", ["stable", "candidate"], buckets=VALUE_DIFF_BUCKETS,
            registry=registry,
        )
        self.shadow_duration = Histogram(
            "router_shadow_duration_seconds", "Latency of mirrored requests by candidate version.",
            ["version"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.traffic_weight = Gauge(
            "router_traffic_weight", "Percent of client traffic each version answers.",
            ["version"], registry=registry, multiprocess_mode="mostrecent",
        )
        self.config_version = Gauge(
            "router_config_version", "The routing state's config_version.",
            registry=registry, multiprocess_mode="max",
        )
        self.rollout_decisions = Counter(
            "router_rollout_decisions_total", "Automated rollout decisions.", ["decision"],
            registry=registry,
        )
        self.feedback_requests = Counter(
            "router_feedback_requests_total", "POST /feedback calls by outcome (recorded, "
            "duplicate, conflict, unknown, invalid).", ["outcome"], registry=registry,
        )
        self.feedback_rows = Counter(
            "router_feedback_rows_total", "Labelled rows joined to the version that predicted them.",
            ["version"], registry=registry,
        )
        self.feedback_correct = Counter(
            "router_feedback_correct_total", "Labelled rows a classifier predicted right.",
            ["version"], registry=registry,
        )
        self.feedback_log_loss = Counter(
            "router_feedback_log_loss_total", "Sum of labelled rows' log loss (probabilities "
            "clipped at 1e-15); divided by rows, the mean log loss.", ["version"],
            registry=registry,
        )
        self.feedback_abs_error = Counter(
            "router_feedback_abs_error_total", "Sum of a regressor's absolute errors on labelled "
            "rows; divided by rows, the MAE.", ["version"], registry=registry,
        )
        self.feedback_sq_error = Counter(
            "router_feedback_sq_error_total", "Sum of a regressor's squared errors on labelled "
            "rows; divided by rows, the MSE.", ["version"], registry=registry,
        )
        self.feedback_discordant = Counter(
            "router_feedback_discordant_total", "Paired (shadow) labelled rows exactly one version "
            "got right, by the version that was right.", ["stable", "candidate", "right"],
            registry=registry,
        )
        self.feedback_dropped = Counter(
            "router_feedback_dropped_total", "Answers not remembered for feedback because the "
            "queue to the state store was full.", ["part"], registry=registry,
        )
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._pending: deque[tuple[str, str, int, float]] = deque()
        self._flush_lock = threading.Lock()
        self._flushing = False  # a flusher thread runs in this process
        self._closed = False
        _LIVE.add(self)

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, bound on first use and cached (label sets are bounded)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def feedback(self, counts: dict[str, Any]) -> None:
        """Count one recorded feedback (``metrics.quality``'s counts shape)."""
        fields = (("rows", self.feedback_rows), ("correct", self.feedback_correct),
                  ("log_loss_sum", self.feedback_log_loss),
                  ("abs_error_sum", self.feedback_abs_error),
                  ("sq_error_sum", self.feedback_sq_error))
        for version, values in (counts.get("versions") or {}).items():
            for name, metric in fields:
                if name in values:
                    self.child(metric, version).inc(values[name])
        for pair, values in (counts.get("pairs") or {}).items():
            stable, _, candidate = pair.partition(" -> ")
            if values.get("stable_only"):
                self.child(self.feedback_discordant, stable, candidate, "stable").inc(
                    values["stable_only"])
            if values.get("candidate_only"):
                self.child(self.feedback_discordant, stable, candidate, "candidate").inc(
                    values["candidate_only"])

    def request(self, version: str, strategy: str, code: int, seconds: float) -> None:
        """Count one client request (written by :meth:`flush`, at most FLUSH_INTERVAL_S later)."""
        self._pending.append((version, strategy, code, seconds))
        if not self._flushing:
            self._start_flusher()

    def flush(self) -> None:
        """Write the pending request tallies to the metric values."""
        with self._flush_lock:
            batch = []
            try:
                while True:
                    batch.append(self._pending.popleft())
            except IndexError:
                pass
            if not batch:
                return
            for (version, strategy, code), n in Tally((v, s, c) for v, s, c, _ in batch).items():
                key = (version, strategy, code)
                child = self._request_children.get(key)
                if child is None:
                    child = self.requests.labels(version=version, strategy=strategy, code=str(code))
                    self._request_children[key] = child
                child.inc(n)
            per_version: dict[str, tuple[list[int], list[float]]] = {}
            for version, _, _, seconds in batch:
                hist = self._duration_child(version)
                counts, total = per_version.setdefault(
                    version, ([0] * len(hist._upper_bounds), [0.0])
                )
                counts[bisect_left(hist._upper_bounds, seconds)] += 1
                total[0] += seconds
            for version, (counts, total) in per_version.items():
                # What Histogram.observe does per value (the sum, and the one bucket whose
                # upper bound is the first >= the value), done once per bucket for the batch.
                hist = self._duration_child(version)
                hist._sum.inc(total[0])
                for i, n in enumerate(counts):
                    if n:
                        hist._buckets[i].inc(n)

    def _duration_child(self, version: str) -> Any:
        hist = self._duration_children.get(version)
        if hist is None:
            hist = self._duration_children[version] = self.duration.labels(version=version)
        return hist

    def close(self) -> None:
        """Write the pending tallies; the flusher thread ends after its next round."""
        self._closed = True
        self.flush()

    def _start_flusher(self) -> None:
        with self._flush_lock:
            if self._flushing:
                return
            self._flushing = True
        ref = weakref.ref(self)

        def run() -> None:
            while True:
                time.sleep(FLUSH_INTERVAL_S)
                metrics = ref()
                if metrics is None:
                    return
                metrics.flush()
                if metrics._closed:
                    return
                del metrics

        threading.Thread(target=run, name="metrics-flush", daemon=True).start()

    def routing(self, config_version: int, weights: dict[str, int]) -> None:
        self.config_version.set(config_version)
        for version, weight in weights.items():
            self.traffic_weight.labels(version=version).set(weight)
