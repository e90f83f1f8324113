"""The prediction service: a Flask app factory serving one model version over HTTP.

    >>> app = create_app(ModelServiceConfig(version="v1", artifacts="artifacts"))  # doctest: +SKIP
    >>> app.test_client().post("/predict", json={"instances": [[...]]})          # doctest: +SKIP
"""

from __future__ import annotations

import random

from flask import Flask, Response, current_app, request
from prometheus_client import CollectorRegistry

from common.auth import require_bearer
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
from model_service.holder import ModelHolder
from model_service.openapi import openapi
from model_service.predict_path import PredictPath

EXTENSION = "model_service"


class ServiceState:
    """Everything one app instance owns; hangs off ``app.extensions``."""

    def __init__(self, config: ModelServiceConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self.metrics = ModelMetrics(registry)
        self.holder = ModelHolder(config.artifacts, self.metrics, config.control_file)
        self.rng = random.Random()


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
        return metrics_response(_state().registry)

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

    app.wsgi_app = LastResort(PredictPath(app.wsgi_app, state))  # type: ignore[method-assign]
    return app
