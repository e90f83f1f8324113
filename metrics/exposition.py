"""Serving ``/metrics``: the app's registry, or every worker's values in multiprocess mode."""

from __future__ import annotations

import os

from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def metrics_response(registry: CollectorRegistry) -> Response:
    """The Prometheus text exposition of ``registry`` (or of all workers when multiprocess)."""
    if not multiprocess_enabled():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    for attempt in range(3):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        try:
            return Response(generate_latest(merged), mimetype=CONTENT_TYPE_LATEST)
        except FileNotFoundError:
            # a dead worker's file was archived between listing the folder and reading it
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
