"""Where the rollout controller reads per-version statistics: one small interface, three sources.

``LocalSource`` reads the router's own metrics (every worker process's, in multiprocess mode);
``StoreSource`` adds up the counts every router instance publishes to the state store;
``PrometheusSource`` asks a Prometheus server, which scrapes every router instance.

    >>> source = LocalSource(registry)            # doctest: +SKIP
    >>> reading = source.read()                    # {"v1": VersionCounts(...), ...}
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import requests
from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric

from metrics.published import CountsPublisher, document_total
from metrics.window import UNREACHABLE_REASONS, Reading, VersionCounts, sum_readings
from router.state.base import StateStoreError


class SourceUnavailable(Exception):
    """The statistics could not be read (Prometheus or the state store down or answering errors)."""


class MetricSource(Protocol):
    """Cumulative per-version statistics, read on demand."""

    def read(self) -> Reading: ...


def _counts(reading: Reading, version: str) -> VersionCounts:
    if version not in reading:
        reading[version] = VersionCounts()
    return reading[version]


def _add_unreachable(reading: Reading, unreachable: dict[str, float],
                     gateway: dict[str, float]) -> None:
    """Count attempts that got no response as requests of the version tried.

    When no version answered at all, the router's own 502 is already counted under the version
    it tried first (``router_requests_total{code="502"}``): those attempts are not counted twice.
    """
    for version, attempts in unreachable.items():
        _counts(reading, version).requests += max(0.0, attempts - gateway.get(version, 0.0))


def reading_from_metrics(families: Iterable[Metric]) -> Reading:
    """Fold router metric families (as collected) into cumulative per-version counts."""
    reading: Reading = {}
    unreachable: dict[str, float] = {}
    gateway: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            name = sample.name
            if name == "router_requests_total":
                _counts(reading, labels["version"]).requests += value
                if labels["code"] == "502":
                    gateway[labels["version"]] = gateway.get(labels["version"], 0.0) + value
            elif name == "router_upstream_errors_total":
                counts = _counts(reading, labels["version"])
                counts.errors += value
                if labels["reason"] in UNREACHABLE_REASONS:
                    unreachable[labels["version"]] = unreachable.get(labels["version"], 0.0) + value
            elif name == "router_request_duration_seconds_bucket":
                buckets = _counts(reading, labels["version"]).latency_buckets
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
            elif name == "router_shadow_duration_seconds_bucket":
                buckets = _counts(reading, labels["version"]).shadow_latency_buckets
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
            elif name == "router_shadow_requests_total":
                counts = _counts(reading, labels["version"])
                if labels["outcome"] != "dropped":
                    counts.shadow_requests += value
                    if labels["outcome"] != "ok":
                        counts.shadow_errors += value
            elif name == "router_shadow_comparisons_total":
                counts = _counts(reading, labels["candidate"])
                if labels["result"] == "agree":
                    counts.agree += value
                else:
                    counts.disagree += value
    _add_unreachable(reading, unreachable, gateway)
    return reading


class LocalSource:
    """This router's own measurements, aggregated across its worker processes."""

    def __init__(
        self, registry: CollectorRegistry, before_read: Callable[[], None] | None = None
    ) -> None:
        self.registry = registry
        self.before_read = before_read  # e.g. write this process's pending request tallies

    def read(self) -> Reading:
        if self.before_read is not None:
            self.before_read()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return reading_from_metrics(registry.collect())
        return reading_from_metrics(self.registry.collect())


class PublishedCounts(Protocol):
    def published_counts(self) -> dict[str, dict[str, Any]]: ...


class StoreSource:
    """Statistics of every router instance, from the counts each publishes to the state store.

    Sums every instance's latest document. An instance that stopped publishing stays in the sum
    until its document expires, and, for a source that has seen it, at its last counts after that
    (as Prometheus's ``increase`` counts on a series that vanished), so the totals never fall.
    With this instance's ``publisher``, its own counts are this process's fresh ones, published
    first when this process is the one that publishes.

        >>> source = StoreSource(store, publisher, before_read=metrics.flush)  # doctest: +SKIP
    """

    def __init__(self, store: PublishedCounts, publisher: CountsPublisher | None = None,
                 before_read: Callable[[], None] | None = None) -> None:
        self.store = store
        self.publisher = publisher
        self.before_read = before_read  # e.g. write this process's pending request tallies
        self._lock = threading.Lock()
        self._seen: dict[str, Reading] = {}  # instance -> its counts when last seen

    def read(self) -> Reading:
        if self.before_read is not None:
            self.before_read()
        publisher = self.publisher
        try:
            own = publisher.publish() if publisher is not None else None
            documents = self.store.published_counts()
        except StateStoreError as exc:
            raise SourceUnavailable(
                f"the counts of the router instances cannot be read: {exc}"
            ) from None
        if publisher is not None:
            stored = documents.get(publisher.instance)
            documents[publisher.instance] = own or publisher.document(stored)
        with self._lock:
            for instance, document in documents.items():
                try:
                    self._seen[instance] = document_total(document)
                except (AttributeError, KeyError, TypeError, ValueError):
                    continue  # not a counts document this router can read: leave it out
            return sum_readings(self._seen.values())


class PrometheusSource:
    """Statistics of every router instance, through PromQL over Prometheus's HTTP API.

    Prometheus keeps one series per router instance. The source reads each instance's counters
    (summed over its other labels) and adds them up itself, counting each one on from where it
    was when its instance restarted (its counters fell) or vanished (no longer scraped), as
    Prometheus's ``increase`` does. Summed inside PromQL, one instance's restart would make the
    total fall and look like every instance restarting at once.
    """

    _BY = "job, instance"
    QUERIES = {
        "requests": f"sum by ({_BY}, version) (router_requests_total)",
        "errors": f"sum by ({_BY}, version) (router_upstream_errors_total)",
        "unreachable": f'sum by ({_BY}, version) (router_upstream_errors_total{{reason=~"%s"}})'
        % "|".join(sorted(UNREACHABLE_REASONS)),
        "gateway": f'sum by ({_BY}, version) (router_requests_total{{code="502"}})',
        "latency": f"sum by ({_BY}, version, le) (router_request_duration_seconds_bucket)",
        "shadow_latency": f"sum by ({_BY}, version, le) (router_shadow_duration_seconds_bucket)",
        "shadow": f"sum by ({_BY}, version, outcome) (router_shadow_requests_total)",
        "compare": f"sum by ({_BY}, candidate, result) (router_shadow_comparisons_total)",
    }

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        # (query, labels) -> [last value seen, total counted before its resets]
        self._series: dict[tuple[str, frozenset[tuple[str, str]]], list[float]] = {}

    def query(self, promql: str) -> list[dict]:  # type: ignore[type-arg]
        try:
            resp = requests.get(f"{self.url}/api/v1/query", params={"query": promql},
                                timeout=self.timeout_s)
            body = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise SourceUnavailable(f"Prometheus at {self.url} did not answer: {exc}") from None
        if resp.status_code != 200 or body.get("status") != "success":
            raise SourceUnavailable(f"Prometheus refused {promql!r}: {body.get('error', resp.status_code)}")
        return list(body["data"]["result"])

    def _counted(self, answers: dict[str, list[dict]]) -> list[tuple[str, dict[str, str], float]]:  # type: ignore[type-arg]
        """Every series ever seen, as (query, labels, count so far, resets included)."""
        with self._lock:
            for key, series_list in answers.items():
                for series in series_list:
                    value = float(series["value"][1])
                    if value != value:  # NaN: no sample yet
                        continue
                    labels = frozenset(series["metric"].items())
                    seen = self._series.setdefault((key, labels), [0.0, 0.0])
                    if value < seen[0]:  # the instance restarted: its counter began again at 0
                        seen[1] += seen[0]
                    seen[0] = value
            return [(key, dict(labels), last + before)
                    for (key, labels), (last, before) in self._series.items()]

    def read(self) -> Reading:
        answers = {key: self.query(promql) for key, promql in self.QUERIES.items()}
        reading: Reading = {}
        unreachable: dict[str, float] = {}
        gateway: dict[str, float] = {}
        for key, labels, value in self._counted(answers):
            version = labels.get("version") or labels.get("candidate")
            if version is None:
                continue
            counts = _counts(reading, version)
            if key == "requests":
                counts.requests += value
            elif key == "errors":
                counts.errors += value
            elif key == "unreachable":
                unreachable[version] = unreachable.get(version, 0.0) + value
            elif key == "gateway":
                gateway[version] = gateway.get(version, 0.0) + value
            elif key in ("latency", "shadow_latency"):
                target = counts.latency_buckets if key == "latency" else counts.shadow_latency_buckets
                le = float(labels["le"])
                target[le] = target.get(le, 0.0) + value
            elif key == "shadow":
                if labels["outcome"] != "dropped":
                    counts.shadow_requests += value
                    if labels["outcome"] != "ok":
                        counts.shadow_errors += value
            elif key == "compare":
                if labels["result"] == "agree":
                    counts.agree += value
                else:
                    counts.disagree += value
        _add_unreachable(reading, unreachable, gateway)
        return reading
