"""The model service's Prometheus metrics (names from the product contract)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.buckets import LATENCY_BUCKETS


class ModelMetrics:
    """Counters and histograms of one model service, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "model_requests_total", "Prediction requests by version and HTTP status.",
            ["version", "code"], registry=registry,
        )
        self.predictions = Counter(
            "model_predictions_total", "Rows predicted.", ["version"], registry=registry
        )
        self.inference = Histogram(
            "model_inference_duration_seconds", "Time spent in the pipeline's predict.",
            ["version"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.info = Gauge(
            "model_info", "The artifact being served (1 for the current one).",
            ["version", "sha256"], registry=registry, multiprocess_mode="liveall",
        )
        self._bound: dict[tuple[str, str], Counter] = {}
        self._by_version: dict[str, tuple[Counter, Histogram]] = {}

    def predicted(self, version: str, rows: int, seconds: float) -> None:
        """One call of the pipeline: ``rows`` predicted in ``seconds``."""
        children = self._by_version.get(version)
        if children is None:
            children = self._by_version[version] = (
                self.predictions.labels(version=version), self.inference.labels(version=version)
            )
        children[0].inc(rows)
        children[1].observe(seconds)

    def request(self, version: str, code: int) -> None:
        key = (version, str(code))
        child = self._bound.get(key)
        if child is None:
            child = self._bound[key] = self.requests.labels(version=version, code=key[1])
        child.inc()

    def serving(self, version: str, sha256: str, previous: tuple[str, str] | None) -> None:
        if previous is not None and previous != (version, sha256):
            self.info.labels(version=previous[0], sha256=previous[1]).set(0)
        self.info.labels(version=version, sha256=sha256).set(1)
