"""The router's Prometheus metrics (names from the product contract).

Label sets are bounded: versions come from ROUTER_UPSTREAMS, strategies from the registry,
codes and reasons from small fixed sets. Children are bound once and cached.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.buckets import LATENCY_BUCKETS

PROBABILITY_DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


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
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, bound on first use and cached (label sets are bounded)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def request(self, version: str, strategy: str, code: int, seconds: float) -> None:
        key = (version, strategy, code)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(version=version, strategy=strategy, code=str(code))
            self._request_children[key] = child
        child.inc()
        hist = self._duration_children.get(version)
        if hist is None:
            hist = self._duration_children[version] = self.duration.labels(version=version)
        hist.observe(seconds)

    def routing(self, config_version: int, weights: dict[str, int]) -> None:
        self.config_version.set(config_version)
        for version, weight in weights.items():
            self.traffic_weight.labels(version=version).set(weight)
