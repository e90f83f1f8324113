"""The model service's Prometheus metrics (names from the product contract).

Input drift (see ``model_service.drift``) is exported with an aggregation chosen per metric for
several gunicorn workers in prometheus_client's multiprocess mode:

- ``model_input_drift_rows_total{version,column,bin}``: rows binned per reference bin, a counter,
  so the workers' counts add up to the service's (a worker bins at most 64 requests a second, a
  uniform sample of them: the shares, not the totals, are what the counter is for);
- ``model_input_drift_psi{version,column}``: the PSI of one worker's window, a gauge with
  ``multiprocess_mode="liveall"`` (one series per live worker, ``pid`` label; NaN while the window
  has too few rows); a query takes ``max by (version, column)``, as the alert does;
- ``model_input_drift_window_rows{version}``: the rows in each worker's window (``liveall``);
- ``model_input_drift_reference_share{version,column,bin}``: the evaluation data's share per bin,
  the same in every worker (``livemax``), so PSI over the whole fleet can be computed in PromQL
  from the counters' increase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.buckets import LATENCY_BUCKETS

if TYPE_CHECKING:
    from model_service.reference import Reference


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
        self.drift_rows = Counter(
            "model_input_drift_rows_total",
            "Input rows binned per reference bin of each column (bins as stored in the artifact; "
            "above 64 requests a second per worker, a uniform sample of the requests).",
            ["version", "column", "bin"], registry=registry,
        )
        self.drift_psi = Gauge(
            "model_input_drift_psi",
            "Population stability index of each input column over this worker's window "
            "(< 0.1 stable, 0.1-0.25 moderate, > 0.25 major; NaN: too few rows).",
            ["version", "column"], registry=registry, multiprocess_mode="liveall",
        )
        self.drift_window_rows = Gauge(
            "model_input_drift_window_rows", "Rows in this worker's drift window.",
            ["version"], registry=registry, multiprocess_mode="liveall",
        )
        self.drift_reference_share = Gauge(
            "model_input_drift_reference_share",
            "Share of the evaluation rows in each reference bin of each input column.",
            ["version", "column", "bin"], registry=registry, multiprocess_mode="livemax",
        )
        self._drift_children: dict[tuple[str, int], Counter] = {}
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

    def drift_reference(self, version: str, reference: Reference) -> None:
        """The reference shares of the model now served (set once when its window starts)."""
        for column in reference.columns:
            for label, share in zip(column.labels, column.shares, strict=True):
                self.drift_reference_share.labels(version, column.name, label).set(share)

    def drift(self, version: str, reference: Reference, pending: np.ndarray, psi: np.ndarray,
              window_rows: int) -> None:
        """Rows binned since the last call (``pending``), and the window's PSI per column."""
        for i in np.flatnonzero(pending):
            key = (version, int(i))
            child = self._drift_children.get(key)
            if child is None:
                k = int(np.searchsorted(reference.starts, i, side="right")) - 1
                column = reference.columns[k]
                label = column.labels[int(i) - int(reference.starts[k])]
                child = self._drift_children[key] = self.drift_rows.labels(
                    version, column.name, label)
            child.inc(int(pending[i]))
        for column, value in zip(reference.columns, psi, strict=True):
            self.drift_psi.labels(version, column.name).set(float(value))
        self.drift_window_rows.labels(version).set(window_rows)

    def drift_ended(self, version: str, reference: Reference, pending: np.ndarray) -> None:
        """``version`` is no longer served here: its last counts, and no PSI any more."""
        self.drift(version, reference, pending, np.full(len(reference.columns), np.nan), 0)
