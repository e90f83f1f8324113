"""Building blocks of both services' OpenAPI documents, and the view that serves one.

Each service builds its document as plain dicts (``model_service/openapi.py``,
``router/openapi.py``) from its live configuration, so the document says what this very process
accepts: the loaded model's feature names, the configured row limit, the configured versions.

    >>> doc = document("API", "1", "", {"/health": {"get": operation("Liveness", {
    ...     "200": json_body("alive", {"type": "object"})})}})
    >>> doc["openapi"]
    '3.0.3'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flask import Blueprint, Response

from common.errors import json_response

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"
ERROR_REF = "#/components/schemas/Error"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error, whatever the status: a stable machine code and a message that "
                   "says what to do.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "minLength": 1, "example": "invalid_input"},
                "message": {"type": "string", "minLength": 1},
                "details": {"description": "Machine-readable context, when there is any."},
            },
        }
    },
}

ERROR_MEANINGS = {
    400: "Malformed request: the body is not JSON or not an object, or a header or query value "
         "has the wrong form.",
    401: "Missing or wrong bearer token.",
    404: "Unknown version.",
    409: "The request conflicts with the current state.",
    412: "If-Match names a config_version that is no longer current.",
    413: "Body over the size limit, or too many rows.",
    415: "Content-Type is not application/json.",
    422: "Well-formed JSON with invalid values.",
    500: "Injected fault (FAULT_ERROR_RATE is set).",
    502: "No model service answered.",
    503: "Not ready, or disabled by configuration.",
    504: "The model service did not answer within the time budget.",
}

BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "The admin token, sent as `Authorization: Bearer <token>`. Tokens in the "
                   "query string are never accepted.",
}

ACCESS_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "MODEL_ACCESS_TOKEN, sent as `Authorization: Bearer <token>`: the router's "
                   "credential (its ROUTER_MODEL_ACCESS_TOKEN). Required on every path but "
                   "/health and /admin/reload while the service has one.",
}

METRICS_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "METRICS_TOKEN, sent as `Authorization: Bearer <token>` (Prometheus: an "
                   "authorization block in the scrape job).",
}

STRING = {"type": "string"}
NULLABLE_STRING = {"type": "string", "nullable": True}


def json_body(description: str, schema: Mapping[str, Any],
              headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A response (or request body) with a JSON ``schema``."""
    response: dict[str, Any] = {"description": description,
                                "content": {JSON: {"schema": dict(schema)}}}
    if headers:
        response["headers"] = dict(headers)
    return response


def header(description: str, schema: Mapping[str, Any] | None = None,
           required: bool = True) -> dict[str, Any]:
    """A response header object."""
    return {"description": description, "required": required, "schema": dict(schema or STRING)}


def errors(*statuses: int, meanings: Mapping[int, str] | None = None,
           headers: Mapping[int, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Error responses in the contract's JSON shape, one per status."""
    meanings = {**ERROR_MEANINGS, **(meanings or {})}
    headers = headers or {}
    return {str(status): json_body(meanings[status], {"$ref": ERROR_REF}, headers.get(status))
            for status in statuses}


def guarded(item: Mapping[str, Any], scheme: str) -> dict[str, Any]:
    """A path item whose every operation needs the bearer token of security scheme ``scheme``:
    the requirement, and the JSON 401 with its ``WWW-Authenticate`` challenge."""
    refused = errors(401, meanings={401: f"Missing or wrong bearer token ({scheme})."},
                     headers={401: {"WWW-Authenticate": header("Bearer challenge")}})
    return {method: {**op, "security": [{scheme: []}], "responses": {**op["responses"], **refused}}
            for method, op in item.items()}


def operation(summary: str, responses: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """One operation object; ``fields`` adds parameters, requestBody, security, description."""
    return {"summary": summary, **fields, "responses": dict(responses)}


def header_parameter(name: str, description: str, schema: Mapping[str, Any] | None = None,
                     required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": dict(schema or STRING)}


def document(title: str, version: str, description: str, paths: Mapping[str, Any],
             schemas: Mapping[str, Any] | None = None,
             security_schemes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete OpenAPI document; the Error schema is always among its components."""
    components: dict[str, Any] = {"schemas": {"Error": ERROR_SCHEMA, **(schemas or {})}}
    if security_schemes:
        components["securitySchemes"] = dict(security_schemes)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": dict(paths),
        "components": components,
    }


def openapi_operation() -> dict[str, Any]:
    """``GET /openapi.json`` describing itself."""
    return operation("This document",
                     {"200": json_body("The OpenAPI document", {"type": "object"})})


def plain_text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": STRING}}}


_CELL = {"number": {"type": "number"}, "integer": {"type": "integer"},
         "boolean": {"type": "boolean"}, "category": {"type": "string"}}


def _cell(column: Mapping[str, Any]) -> dict[str, Any]:
    """One column's values: its type, and ``null`` where the model accepts missing values."""
    schema = dict(_CELL[column["type"]])
    if column.get("nullable"):
        schema["nullable"] = True
    if column.get("categories"):
        schema["description"] = "Seen when packaged: " + ", ".join(column["categories"][:20])
    return schema


def prediction_rows_schema(columns: Sequence[Mapping[str, Any]] | None,
                           max_rows: int | None) -> dict[str, Any]:
    """``{"instances": [...]}``: rows as arrays in column order, or as objects keyed by name.

    ``columns`` is the model's input schema (name, type, nullable per column). Without it (no
    model loaded, or the router, which forwards rows whatever they hold) any non-empty row is
    described, and the model service is the one that checks it.
    """
    if columns:
        width = len(columns)
        kinds = [_cell(c) for c in columns]
        distinct = [k for i, k in enumerate(kinds) if k not in kinds[:i]]
        as_array: dict[str, Any] = {"type": "array", "minItems": width, "maxItems": width,
                                    "items": distinct[0] if len(distinct) == 1
                                    else {"oneOf": distinct}}
        as_object: dict[str, Any] = {"type": "object", "required": [c["name"] for c in columns],
                                     "properties": {c["name"]: k for c, k in zip(columns, kinds,
                                                                                  strict=True)},
                                     "additionalProperties": False}
    else:
        as_array = {"type": "array", "minItems": 1, "items": {}}
        as_object = {"type": "object", "minProperties": 1, "additionalProperties": {}}

    def rows(row: dict[str, Any], description: str) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": row,
                                  "description": description}
        if max_rows is not None:
            schema["maxItems"] = max_rows
        return schema

    return {
        "type": "object",
        "required": ["instances"],
        "additionalProperties": False,
        "properties": {
            "instances": {"oneOf": [
                rows(as_array, "Rows as arrays of the column values, in column order "
                               "(GET /version lists the columns and their types)."),
                rows(as_object, "Rows as objects: column name to value, every column once."),
            ]},
        },
    }


def prediction_schema(classes: Sequence[Any] | None, task: str | None = None) -> dict[str, Any]:
    """The 200 body of ``POST /predict``: one prediction (and for classifiers one probability
    row) per instance. ``task`` None: either kind of answer."""
    model_version = {"type": "string", "minLength": 1}
    value = {"type": "number"}
    if task == "regression":
        return {
            "type": "object", "required": ["predictions", "model_version"],
            "additionalProperties": False,
            "properties": {"predictions": {"type": "array", "minItems": 1, "items": value},
                           "model_version": model_version},
        }
    label: dict[str, Any] = (
        {"enum": list(classes)} if classes
        else {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "boolean"}, value]}
    )
    probability_row: dict[str, Any] = {"type": "array", "minItems": 1,
                                       "items": {"type": "number", "minimum": 0, "maximum": 1}}
    if classes:
        probability_row["minItems"] = probability_row["maxItems"] = len(classes)
    return {
        "type": "object",
        "required": ["predictions", "model_version"] if task is None
        else ["predictions", "probabilities", "model_version"],
        "additionalProperties": False,
        "properties": {
            "predictions": {"type": "array", "minItems": 1, "items": label},
            "probabilities": {"type": "array", "minItems": 1, "items": probability_row,
                              "description": "Per row, the probability of each class, in the "
                                             "model's class order (classifiers only)."},
            "model_version": model_version,
        },
    }


def spec_blueprint(build: Callable[[], dict[str, Any]]) -> Blueprint:
    """A blueprint serving ``GET /openapi.json``, built by ``build`` on each request."""
    blueprint = Blueprint("openapi", __name__)

    @blueprint.get("/openapi.json")
    def openapi_document() -> Response:
        return json_response(build(), headers={"Cache-Control": "no-cache"})

    return blueprint
