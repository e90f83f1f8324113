"""The prediction service: a Flask app factory serving one model version over HTTP.

Who may call what, when tokens are set (each path takes exactly one credential):

- ``GET /health``: everyone (the platform's liveness check);
- ``POST /admin/reload``: ``MODEL_ADMIN_TOKEN``, checked by the endpoint; the access token does
  not open it, nor is it needed besides (a request carries one ``Authorization`` header);
- ``GET /metrics``: ``METRICS_TOKEN`` when set, else ``MODEL_ACCESS_TOKEN`` when set;
- everything else, ``POST /predict`` included: ``MODEL_ACCESS_TOKEN`` when set.

    >>> app = create_app(ModelServiceConfig(version="v1", artifacts="artifacts"))  # doctest: +SKIP
    >>> app.test_client().post("/predict", json={"instances": [[...]]})          # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable

from flask import Flask, Response, current_app, request
from prometheus_client import CollectorRegistry

from common.auth import BearerGate, Guard, metrics_guard, require_bearer
from common.body import read_json_object
from common.errors import (
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    json_response,
    register_error_handlers,
)
from common.last_resort import LastResort
from metrics.exposition import metrics_response
from metrics.model import ModelMetrics
from model_service.artifacts import ArtifactError
from model_service.config import VERSION_LABEL, ModelServiceConfig
from model_service.drift import DriftMonitor
from model_service.holder import ModelHolder
from model_service.openapi import openapi
from model_service.predict_path import PredictPath

EXTENSION = "model_service"
# Answered without the access token: liveness, and the admin endpoint (it checks its own token).
_OPEN_TO_OWN_CHECKS = frozenset({"/health", "/admin/reload"})


class ServiceState:
    """Everything one app instance owns; hangs off ``app.extensions``."""

    def __init__(self, config: ModelServiceConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self.metrics = ModelMetrics(registry)
        self.holder = ModelHolder(config.artifacts, self.metrics, config.control_file)
        self.rng = random.Random()
        self.drift = DriftMonitor(config.drift, self.metrics)


def access_rules(config: ModelServiceConfig) -> Callable[[str], Guard | None] | None:
    """The token each path needs under ``config`` (None: no path needs one)."""
    if config.access_token is None and config.metrics_token is None:
        return None
    access = None if config.access_token is None else Guard(
        config.access_token, "model",
        "missing or wrong access token: this model service answers only its router; send "
        "'Authorization: Bearer <token>' with the value of MODEL_ACCESS_TOKEN (the router sends "
        "it when its ROUTER_MODEL_ACCESS_TOKEN matches)")
    scrape = access if config.metrics_token is None else metrics_guard(config.metrics_token)

    def guard_for(path: str) -> Guard | None:
        if path in _OPEN_TO_OWN_CHECKS:
            return None
        return scrape if path == "/metrics" else access

    return guard_for


def _state() -> ServiceState:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def create_app(
    config: ModelServiceConfig | None = None, registry: CollectorRegistry | None = None
) -> Flask:
    """Build the prediction app for ``config`` (default: from the environment)."""
    config = config or ModelServiceConfig.from_env()
    app = Flask(__name__)
    state = ServiceState(config, registry or CollectorRegistry())
    app.extensions[EXTENSION] = state
    register_error_handlers(app)
    app.register_blueprint(openapi)
    state.holder.start(config.version)

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        state = _state()
        model = state.holder.current
        if model is None:
            raise ServiceUnavailable(
                f"model not loaded: {state.holder.load_error}", code="not_ready"
            )
        return json_response({"status": "ready", "model_version": model.version})

    @app.get("/version")
    def version() -> Response:
        model = _state().holder.current
        if model is None:
            raise ServiceUnavailable("model not loaded yet", code="not_ready")
        return json_response(model.metadata)

    @app.get("/metrics")
    def metrics() -> Response:
        state = _state()
        state.drift.flush()  # this worker's latest; the others flush every second on their own
        return metrics_response(state.registry)

    @app.get("/drift")
    def drift() -> Response:
        state = _state()
        model = state.holder.current
        if model is None:
            raise ServiceUnavailable("model not loaded yet", code="not_ready")
        return json_response(state.drift.report(model))

    @app.post("/admin/reload")
    def reload() -> Response:
        state = _state()
        require_bearer(request, state.config.admin_token, "MODEL_ADMIN_TOKEN")
        doc = read_json_object(request, 64 * 1024)
        target = doc.get("version")
        unknown = sorted(set(doc) - {"version"})
        if unknown or not isinstance(target, str) or not target:
            raise Unprocessable('send {"version": "<label>"} and nothing else')
        if not VERSION_LABEL.fullmatch(target):
            raise Unprocessable(
                f"{target[:80]!r} is not a version label: 1 to 64 of A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit"
            )
        try:
            model, previous = state.holder.reload(target)
        except ArtifactError as exc:
            if "no artifact" in str(exc):
                raise NotFound(str(exc), code="unknown_version") from None
            raise Unprocessable(str(exc), code="artifact_refused") from None
        return json_response(
            {
                "model_version": model.version,
                "previous_version": previous.version if previous else None,
                "sha256": model.sha256,
            }
        )

    app.wsgi_app = PredictPath(app.wsgi_app, state)  # type: ignore[method-assign]
    rules = access_rules(config)
    if rules is not None:  # the fast predict path is behind it too
        app.wsgi_app = BearerGate(app.wsgi_app, rules)  # type: ignore[method-assign]
    app.wsgi_app = LastResort(app.wsgi_app)  # type: ignore[method-assign]  # outermost
    return app
