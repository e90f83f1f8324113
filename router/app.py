"""The router: a Flask app factory wiring state, upstream pools, metrics and the data path.

    >>> app = create_app(RouterConfig(upstreams={"v1": "http://127.0.0.1:8001"}, stable="v1"))  # doctest: +SKIP
"""

from __future__ import annotations

import time

from flask import Flask, Response, current_app
from prometheus_client import CollectorRegistry

from common.auth import BearerGate, metrics_guard
from common.config import ConfigError
from common.errors import ServiceUnavailable, json_response, register_error_handlers
from common.last_resort import LastResort
from metrics.exposition import metrics_response
from metrics.router import RouterMetrics
from metrics.published import CountsPublisher
from metrics.sources import LocalSource, MetricSource, PrometheusSource, StoreSource
from router import admin_disagreements, admin_drift, admin_rollout  # noqa: F401  (register their endpoints)
from router.admin import admin
from router.rollout import RolloutController
from router.config import RouterConfig
from router.context import RouterContext
from router.dashboard import dashboard
from router.datapath import DataPath
from router.feedback import feedback
from router.disagreements import DisagreementRecorder
from router.live_state import LiveState, Snapshot
from router.openapi import openapi
from router.prediction_log import PredictionLog
from router.releases import keep_audit_lines
from router.shadow import Mirror
from router.slots import SlotVersions, access_refused
from router.state import StateStore, open_store
from router.upstream import UpstreamError, UpstreamPool

EXTENSION = "router"


def _ctx() -> RouterContext:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def create_app(
    config: RouterConfig | None = None,
    registry: CollectorRegistry | None = None,
    store: StateStore | None = None,
) -> Flask:
    """Build the router for ``config`` (default: from the environment)."""
    config = config or RouterConfig.from_env()
    if store is None:
        try:
            store = open_store(config.state_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    registry = registry or CollectorRegistry()
    metrics = RouterMetrics(registry)
    pools = {
        label: UpstreamPool(label, url, config.connect_timeout_s)
        for label, url in config.upstreams.items()
    }
    slots = SlotVersions(pools, headers=lambda: list(config.model_headers))
    slots.refresh()
    mirror = Mirror(pools, metrics, config.shadow_workers, config.shadow_queue, config.timeout_s,
                    slots)
    mirror.record_disagreements = DisagreementRecorder(
        store, config.disagreement_samples, config.disagreement_retention_s).record
    ctx_holder: list[RouterContext] = []

    def on_change(snapshot: Snapshot) -> None:
        if ctx_holder:
            metrics.routing(snapshot.config_version, ctx_holder[0].weights(snapshot.routing))

    keep_audit_lines()
    live = LiveState(config, store, on_change=on_change)
    publisher: CountsPublisher | None = None
    source: MetricSource
    if config.prometheus_url:
        source = PrometheusSource(config.prometheus_url)
    else:
        publisher = CountsPublisher(store, LocalSource(registry, before_read=metrics.flush),
                                    config.instance_id, retention_s=config.counts_retention_s)
        source = StoreSource(store, publisher, before_read=metrics.flush)
    controller = RolloutController(live, source, pools, metrics, config.model_admin_token, slots,
                                   model_headers=config.model_headers)
    predictions = None
    if config.feedback_token is not None:
        predictions = PredictionLog(store, slots, metrics, retention_s=config.feedback_retention_s,
                                    max_requests=config.feedback_max_requests)
        mirror.on_answer = lambda job, version, body: predictions.remember(
            job.request_id, "shadow", version, job.candidate, body)
    ctx = RouterContext(config, store, live, pools, metrics, mirror, registry, source, controller,
                        slots, publisher, predictions)
    ctx_holder.append(ctx)
    on_change(live.current)

    app = Flask(__name__)
    app.extensions[EXTENSION] = ctx
    register_error_handlers(app)
    app.register_blueprint(admin)
    app.register_blueprint(dashboard)
    app.register_blueprint(openapi)
    app.register_blueprint(feedback)

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        ctx = _ctx()
        if not ctx.live.loaded:
            raise ServiceUnavailable(
                f"routing state not loaded yet: {ctx.live.last_error or 'reading the store'}",
                code="not_ready",
            )
        stable = ctx.live.current.routing.stable
        try:
            resp = ctx.pools[stable].request(
                "GET", "/ready", b"", list(ctx.config.model_headers),
                time.monotonic() + min(1.0, ctx.config.timeout_s),
            )
        except UpstreamError as exc:
            raise ServiceUnavailable(f"stable version {stable} is not reachable: {exc}",
                                     code="not_ready") from None
        if resp.status == 401:
            raise ServiceUnavailable(f"stable slot {stable} {access_refused(ctx.config.model_access_token is not None)}",
                                     code="upstream_unauthorized")
        if resp.status != 200:
            raise ServiceUnavailable(f"stable version {stable} is not ready ({resp.status})",
                                     code="not_ready")
        return json_response({"status": "ready", "stable": stable,
                              "config_version": ctx.live.current.config_version})

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        ctx = _ctx()
        ctx.metrics.flush()  # this worker's latest requests; others flush on their own schedule
        return metrics_response(ctx.registry)

    app.wsgi_app = DataPath(  # type: ignore[method-assign]
        app.wsgi_app, config, live, pools, metrics, mirror, slots, predictions)
    if config.metrics_token is not None:
        scrape = metrics_guard(config.metrics_token)
        app.wsgi_app = BearerGate(  # type: ignore[method-assign]
            app.wsgi_app, lambda path: scrape if path == "/metrics" else None)
    app.wsgi_app = LastResort(app.wsgi_app)  # type: ignore[method-assign]  # outermost
    live.start()
    slots.start()
    controller.start()
    if publisher is not None:
        publisher.start()
    return app
