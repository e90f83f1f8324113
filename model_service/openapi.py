"""The model service's OpenAPI document (``GET /openapi.json``), built from what it serves now.

The ``/predict`` body names the loaded model's features and the configured row limit, so the
document changes with ``POST /admin/reload`` when the new model differs.

    >>> app.register_blueprint(openapi)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from common.openapi import (
    ACCESS_SCHEME,
    BEARER_SCHEME,
    METRICS_SCHEME,
    NULLABLE_STRING,
    STRING,
    document,
    errors,
    header,
    json_body,
    openapi_operation,
    operation,
    plain_text,
    prediction_rows_schema,
    prediction_schema,
    guarded,
    spec_blueprint,
)
from model_service.config import VERSION_LABEL

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The artifact's metadata.json: what was trained, when, with which libraries, "
                   "and how well it did on held-out data.",
    "required": ["version", "sha256", "feature_names", "task", "input_schema"],
    "properties": {
        "version": STRING,
        "created_at": {"type": "string", "format": "date-time"},
        "task": {"type": "string", "enum": ["classification", "regression"]},
        "input_schema": {"type": "object", "required": ["frame", "columns"], "properties": {
            "frame": {"type": "boolean"},
            "columns": {"type": "array", "items": {
                "type": "object", "required": ["name", "type", "nullable"], "properties": {
                    "name": STRING,
                    "type": {"type": "string", "enum": ["number", "integer", "boolean",
                                                        "category"]},
                    "nullable": {"type": "boolean"},
                    "categories": {"type": "array", "items": STRING}}}}}},
        "classes": {"type": "array"},
        "library_versions": {"type": "object", "additionalProperties": STRING},
        "model_format": {"type": "string", "enum": ["skops", "joblib"]},
        "trusted_types": {"type": "array", "items": STRING},
        "evaluation": {"type": "object"},
        "exports": {"type": "object"},
        "python_version": STRING,
        "sklearn_version": STRING,
        "joblib_version": STRING,
        "numpy_version": STRING,
        "model_file": STRING,
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "description": STRING,
        "feature_names": {"type": "array", "items": STRING},
        "class_labels": {"type": "array", "items": STRING},
        "heldout_metrics": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}


DRIFT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["model_version", "available", "window", "columns"],
    "properties": {
        "model_version": {"type": "string"},
        "available": {"type": "boolean"},
        "reason": {"type": "string"},
        "window": {"type": "object"},
        "columns": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "psi": {"type": "number", "nullable": True},
            "reading": {"type": "string", "enum": ["stable", "moderate", "major", "unknown"]},
            "rows": {"type": "integer"}, "bins": {"type": "array"}}}},
    },
}


def _status(value: str, **more: Any) -> dict[str, Any]:
    return {"type": "object", "required": ["status", *more], "additionalProperties": False,
            "properties": {"status": {"type": "string", "enum": [value]}, **more}}


def model_service_spec() -> dict[str, Any]:
    """The document for the app handling the current request."""
    state = current_app.extensions["model_service"]
    config = state.config
    model = state.holder.current
    columns = model.schema.to_json()["columns"] if model is not None else None
    classes = model.classes.tolist() if model is not None and model.classes is not None else None
    task = model.task if model is not None else None
    served = {"X-Model-Version": header("The version that answered")}
    predict_errors = [400, 413, 415, 422, 503]
    if config.fault_error_rate:
        predict_errors.append(500)
    paths = {
        "/predict": {"post": operation(
            "Predict for a batch of rows: classes and class probabilities, or values",
            {"200": json_body("One prediction per row", prediction_schema(classes, task), served),
             **errors(*sorted(predict_errors),
                      meanings={413: f"Body over {config.max_body_bytes} bytes, or more than "
                                     f"{config.max_rows} rows.",
                                422: "Rows of the wrong width, unknown or missing columns, "
                                     "values of the wrong type, nulls where the model takes "
                                     "none, rows the model refuses or overflows on.",
                                503: "No model is loaded."})},
            requestBody={"required": True, "content": {"application/json": {
                "schema": prediction_rows_schema(columns, config.max_rows)}}},
        )},
        "/health": {"get": operation("Liveness", {"200": json_body("The process answers",
                                                                   _status("ok"))})},
        "/ready": {"get": operation("Readiness: a model is loaded", {
            "200": json_body("Ready to predict", _status("ready", model_version=STRING)),
            **errors(503, meanings={503: "No model is loaded yet."}),
        })},
        "/version": {"get": operation("The served artifact's metadata", {
            "200": json_body("Metadata of the served model", METADATA_SCHEMA),
            **errors(503, meanings={503: "No model is loaded yet."}),
        })},
        "/drift": {"get": operation(
            "Input drift: per column the PSI of this worker's window against the reference",
            {"200": json_body("Columns sorted by PSI, with reference and live shares per bin",
                              DRIFT_SCHEMA),
             **errors(503, meanings={503: "No model is loaded yet."})})},
        "/metrics": {"get": operation("Prometheus metrics", {
            "200": plain_text("Text exposition format")})},
        "/admin/reload": {"post": operation(
            "Swap the served model in place, atomically",
            {"200": json_body("The model now served", {
                "type": "object", "required": ["model_version", "previous_version", "sha256"],
                "additionalProperties": False,
                "properties": {"model_version": STRING, "previous_version": NULLABLE_STRING,
                               "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}}),
             **errors(400, 401, 404, 413, 415, 422, 503,
                      meanings={404: "No artifact for that version.",
                                413: "Body over 64 KiB.",
                                422: "Not a version label, or an artifact that fails verification.",
                                503: "Reload is disabled: MODEL_ADMIN_TOKEN is not set."},
                      headers={401: {"WWW-Authenticate": header("Bearer challenge")}})},
            requestBody={"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["version"], "additionalProperties": False,
                "properties": {"version": {"type": "string", "pattern": VERSION_LABEL.pattern,
                                           "example": "v2"}}}}}},
            security=[{"bearer": []}],
        )},
        "/openapi.json": {"get": openapi_operation()},
    }
    schemes = {"bearer": BEARER_SCHEME}
    if config.metrics_token is not None:
        schemes["metrics"] = METRICS_SCHEME
        paths["/metrics"] = guarded(paths["/metrics"], "metrics")
    if config.access_token is not None:
        schemes["access"] = ACCESS_SCHEME
        for path in set(paths) - {"/health", "/admin/reload", "/metrics"}:
            paths[path] = guarded(paths[path], "access")
        if config.metrics_token is None:
            paths["/metrics"] = guarded(paths["/metrics"], "access")
    return document(
        "Model service", "1",
        f"Serves model version {model.version if model else config.version} of the artifacts. "
        "Errors are JSON: {\"error\": {\"code\", \"message\"}}.",
        paths, security_schemes=schemes,
    )


openapi = spec_blueprint(model_service_spec)
