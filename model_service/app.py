"""The prediction service: a Flask app factory serving one model version over HTTP.

    >>> app = create_app(ModelServiceConfig(version="v1", artifacts="artifacts"))  # doctest: +SKIP
    >>> app.test_client().post("/predict", json={"instances": [[...]]})          # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import sklearn
from flask import Flask, Response, current_app, request
from prometheus_client import CollectorRegistry

from common.auth import require_bearer
from common.body import read_json_object
from common.errors import (
    APIError,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    json_response,
    register_error_handlers,
)
from metrics.exposition import metrics_response
from metrics.model import ModelMetrics
from model_service.artifacts import ArtifactError
from model_service.config import VERSION_LABEL, ModelServiceConfig
from model_service.holder import ModelHolder
from model_service.inputs import to_matrix
from model_service.openapi import openapi

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


def predict_matrix(model: Any, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes and class probabilities for each row; input already validated as finite."""
    with sklearn.config_context(assume_finite=True):
        proba = model.pipeline.predict_proba(matrix)
    return model.classes[proba.argmax(axis=1)], proba


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

    @app.post("/predict")
    def predict() -> Response:
        state = _state()
        model = state.holder.current
        if model is None:
            raise ServiceUnavailable(f"model not loaded: {state.holder.load_error}", code="not_ready")
        doc = read_json_object(request, state.config.max_body_bytes)
        matrix = to_matrix(doc, model.feature_names, state.config.max_rows)
        cfg = state.config
        if cfg.fault_latency_ms:
            time.sleep(cfg.fault_latency_ms / 1000.0)
        if cfg.fault_error_rate and state.rng.random() < cfg.fault_error_rate:
            raise APIError("injected fault (FAULT_ERROR_RATE)", code="injected_fault")
        started = time.perf_counter()
        predictions, proba = predict_matrix(model, matrix)
        state.metrics.inference.labels(version=model.version).observe(
            time.perf_counter() - started
        )
        overflowed = np.flatnonzero(~np.isfinite(proba).all(axis=1))
        if overflowed.size:
            raise Unprocessable(
                f"instances[{overflowed[0]}]: values this far out of range overflow the model; "
                "send values on the scale of the training data",
                code="out_of_range",
            )
        state.metrics.predictions.labels(version=model.version).inc(len(matrix))
        body = {"predictions": predictions, "probabilities": proba, "model_version": model.version}
        return json_response(body, headers={"X-Model-Version": model.version})

    @app.after_request
    def count_predictions(response: Response) -> Response:
        if request.endpoint == "predict":
            state = _state()
            model = state.holder.current
            version = model.version if model else state.config.version
            state.metrics.request(version, response.status_code)
        return response

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

    return app
