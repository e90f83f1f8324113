"""The router's OpenAPI document (``GET /openapi.json``), built from its configuration.

Versions, strategies and limits come from this process's settings. The ``/predict`` body is the
one the stable model service describes in its own ``/openapi.json`` (feature names, row limit);
while it does not answer, a generic body of numeric rows stands in.

    >>> app.register_blueprint(openapi)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import current_app

from common.openapi import (
    BEARER_SCHEME,
    METRICS_SCHEME,
    NULLABLE_STRING,
    STRING,
    document,
    errors,
    guarded,
    header,
    header_parameter,
    json_body,
    openapi_operation,
    operation,
    plain_text,
    prediction_rows_schema,
    prediction_schema,
    spec_blueprint,
)
from router.admin import PATCHABLE
from router.admin_disagreements import QUERY_PARAMETERS as DISAGREEMENT_QUERY
from router.admin_disagreements import RESPONSE_SCHEMA as DISAGREEMENTS
from router.context import RouterContext
from router.dashboard import ASSETS
from router.rollout_plan import _THRESHOLD_LIMITS, PLAN_STRATEGIES, VERSION_LABEL
from router.upstream import UpstreamError
from strategies import names

UPSTREAM_SPEC_BUDGET_S = 1.0
PERCENT = {"type": "integer", "minimum": 0, "maximum": 100}
COUNT = {"type": "number", "minimum": 0}
NULLABLE_NUMBER = {"type": "number", "nullable": True}
SCHEMAS = "#/components/schemas/"
PLAN_EXAMPLE = {
    "strategy": "canary", "steps": [5, 25, 50, 100], "interval_s": 30, "min_requests": 50,
    "max_failed_analyses": 1, "manual_promotion": False,
    "thresholds": {"max_error_rate_increase": 0.02, "max_p99_ratio": 1.5},
    "reason": "roll out the candidate",
}
ROLLOUT_STATUSES = ["running", "paused", "awaiting_promotion", "promoted", "rolled_back", "aborted"]


def _ctx() -> RouterContext:
    return current_app.extensions["router"]  # type: ignore[no-any-return]


def _object(required: list[str], properties: dict[str, Any], *, closed: bool = True,
            nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:  # OpenAPI 3.0 refuses an empty list
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    if nullable:
        schema["nullable"] = True
    return schema


def _upstream_predict_body(ctx: RouterContext) -> dict[str, Any] | None:
    """The stable model service's ``/predict`` request body, or None when it cannot say."""
    pool = ctx.pools[ctx.live.current.routing.stable]
    try:
        resp = pool.request("GET", "/openapi.json", b"", list(ctx.config.model_headers),
                            time.monotonic() + min(UPSTREAM_SPEC_BUDGET_S, ctx.config.timeout_s))
        if resp.status != 200:
            return None
        body = orjson.loads(resp.body)["paths"]["/predict"]["post"]["requestBody"]
    except (UpstreamError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    # Only a self-contained schema can be copied into another document.
    return body if isinstance(body, dict) and b'"$ref"' not in orjson.dumps(body) else None


def _schemas(ctx: RouterContext) -> dict[str, Any]:
    versions = list(ctx.config.upstreams)
    rollout = _object(["id", "status", "phase", "plan"], {
        "id": STRING,
        "status": {"type": "string", "enum": ROLLOUT_STATUSES},
        "phase": STRING,
        "step": {"type": "integer", "minimum": 0},
        "plan": {"type": "object"},
        "candidate": STRING,
        "failed_analyses": {"type": "integer", "minimum": 0},
        "decisions": {"type": "array", "items": {"type": "object"},
                      "description": "Every analysis: decision, evidence, thresholds, samples."},
    }, closed=False, nullable=True)
    summary = _object(["requests", "errors", "error_rate", "latency_ms", "shadow"], {
        "requests": COUNT, "errors": COUNT, "error_rate": {"type": "number", "minimum": 0},
        "latency_ms": _object(["p50", "p95", "p99"],
                              {q: NULLABLE_NUMBER for q in ("p50", "p95", "p99")}),
        "shadow": _object(["requests", "errors", "agree", "disagree", "agreement"], {
            "requests": COUNT, "errors": COUNT, "agree": COUNT, "disagree": COUNT,
            "agreement": NULLABLE_NUMBER}),
    })
    return {
        "State": _object(
            ["config_version", "strategy", "stable", "candidate", "canary_weight", "shadow_percent",
             "previous_stable", "weights", "upstreams", "rollout", "store"], {
                "config_version": {"type": "integer", "minimum": 0},
                "strategy": {"type": "string", "enum": list(names())},
                "stable": {"type": "string", "enum": versions,
                           "description": "The stable role's slot."},
                "stable_version": {**NULLABLE_STRING,
                                   "description": "The version stable's slot serves (null: unknown)."},
                "candidate": {"type": "string", "enum": [*versions, None], "nullable": True,
                              "description": "The candidate role's slot."},
                "candidate_version": NULLABLE_STRING,
                "canary_weight": PERCENT,
                "shadow_percent": PERCENT,
                "previous_stable": NULLABLE_STRING,
                "weights": {"type": "object", "additionalProperties": PERCENT,
                            "description": "Percent of client traffic each version answers."},
                "upstreams": {"type": "object", "additionalProperties": STRING},
                "slots": {"type": "object", "additionalProperties": _object(
                    ["url", "version", "role", "weight", "idle", "problem"], {
                        "url": STRING, "version": NULLABLE_STRING,
                        "role": {"type": "string", "enum": ["stable", "candidate", None],
                                 "nullable": True},
                        "weight": PERCENT, "idle": {"type": "boolean"},
                        "problem": {"type": "string", "nullable": True,
                                    "description": "Why the router could not learn the slot's "
                                                   "version (unreachable, refused the router's "
                                                   "access token), else null."}})},
                "rollout": {"$ref": f"{SCHEMAS}Rollout"},
                "store": _object(["reachable", "error"], {"reachable": {"type": "boolean"},
                                                          "error": NULLABLE_STRING}),
            }),
        "Rollout": rollout,
        "RolloutView": _object(["rollout", "config_version"], {
            "rollout": {"$ref": f"{SCHEMAS}Rollout"},
            "config_version": {"type": "integer", "minimum": 0},
        }),
        "Analysis": _object(["window", "stable", "candidate", "strategy", "versions", "verdict"], {
            "window": STRING, "stable": STRING, "candidate": NULLABLE_STRING, "strategy": STRING,
            "stable_version": NULLABLE_STRING, "candidate_version": NULLABLE_STRING,
            "versions": {"type": "object", "additionalProperties": summary},
            "verdict": {"type": "object", "nullable": True,
                        "required": ["decision", "samples", "checks"],
                        "properties": {"decision": STRING, "checks": {"type": "array"}}},
            "quality": {"type": "object", "nullable": True, "description": (
                "With feedback on (ROUTER_FEEDBACK_TOKEN): per version accuracy with a 95 % "
                "Wilson interval and log loss (classifiers) or MAE and RMSE (regressors) from the "
                "labels received; under shadow, paired comparisons with McNemar's test.")},
        }),
        "Events": _object(["events"], {"events": {"type": "array", "items": _object(
            ["id", "config_version", "time", "actor", "action"], {
                "id": {"type": "integer", "minimum": 1},
                "config_version": {"type": "integer", "minimum": 0},
                "time": STRING, "actor": STRING, "action": STRING, "reason": NULLABLE_STRING,
                "old": {"type": "object"}, "new": {"type": "object"},
                "evidence": {"type": "object"},
            }, closed=False)}}),
        "Releases": _object(["releases"], {"releases": {"type": "array", "items": _object(
            ["id", "version", "slot", "strategy", "started_at", "outcome"], {
                "id": STRING, "version": NULLABLE_STRING, "slot": NULLABLE_STRING,
                "strategy": STRING, "started_at": {"type": "number"},
                "ended_at": NULLABLE_NUMBER, "outcome": STRING, "why": NULLABLE_STRING,
                "analyses": COUNT, "config_versions": {"type": "array",
                                                       "items": {"type": "integer"}},
                "stable_before": {"type": "object"},
            }, closed=False)}}),
    }


def _reason() -> dict[str, Any]:
    return {"type": "string", "maxLength": 500, "nullable": True,
            "description": "Why, for the audit log."}


def _plan_schema() -> dict[str, Any]:
    def number(lo: float, hi: float, integer: bool = False) -> dict[str, Any]:
        return {"type": "integer" if integer else "number", "minimum": lo, "maximum": hi}

    thresholds = {name: number(lo, hi) for name, (lo, hi) in _THRESHOLD_LIMITS.items()}
    return _object(["strategy"], {
        "strategy": {"type": "string", "enum": list(PLAN_STRATEGIES)},
        "candidate": {"type": "string", "description": "Default: the current candidate."},
        "release_version": {"type": "string",
                            "description": "release-in-place: the model version to load (older "
                                           "name of \"version\")."},
        "version": {"type": "string", "pattern": VERSION_LABEL.pattern,
                    "description": "The version to release: loaded into the candidate's slot "
                                   "(release-in-place: stable's) before the plan runs."},
        "steps": {"type": "array", "minItems": 1, "uniqueItems": True,
                  "items": number(1, 100, integer=True),
                  "description": "Increasing canary weights in percent, ending at 100."},
        "interval_s": number(0.1, 86_400),
        "min_requests": number(1, 10**7, integer=True),
        "max_failed_analyses": number(1, 1000, integer=True),
        "shadow_percent": number(1, 100, integer=True),
        "shadow_analyses": number(1, 1000, integer=True),
        "bake_analyses": number(1, 1000, integer=True),
        "manual_promotion": {"type": "boolean"},
        "preview_analysis": {"type": "boolean"},
        "thresholds": _object([], thresholds),
        "reason": _reason(),
    })


def _data_path(ctx: RouterContext) -> dict[str, Any]:
    """``POST /predict``: the stable's body; the router's own headers on every answer."""
    config = ctx.config
    answered = {"X-Model-Version": header("The version that answered (or would have)"),
                "X-Request-ID": header("The request's id: the client's X-Request-ID when it is "
                                       "1 to 128 of A-Z a-z 0-9 . _ : -, else a generated one")}
    statuses = [400, 413, 415, 422, 502, 503, 504]
    parameters = [
        header_parameter("X-User-ID", "Sticky key: under canary, the same key gets the same "
                                      "version while the weight only grows."),
        header_parameter("X-Request-ID", "Propagated to the model service; generated when absent."),
    ]
    if config.allow_route_to:
        statuses.append(404)
        parameters.append(header_parameter("X-Route-To", "Force a version (preview, testing).",
                                           {"type": "string", "enum": list(config.upstreams)}))
    failures = errors(*sorted(statuses), meanings={
        404: "X-Route-To names a version that is not configured.",
        413: f"Body over {config.max_body_bytes} bytes, or more rows than the model service takes.",
        502: "No model service answered, or one refused the router's access token "
             "(code upstream_unauthorized: ROUTER_MODEL_ACCESS_TOKEN is wrong or missing).",
        503: "The model service that was picked has no model loaded.",
    })
    for response in failures.values():
        response["headers"] = answered
    generic = {"required": True, "content": {"application/json": {
        "schema": prediction_rows_schema(None, None)}}}
    return {"post": operation(
        "Predict, answered by the version the strategy picks",
        {"200": json_body("The model service's answer", prediction_schema(None), answered),
         **failures},
        parameters=parameters, requestBody=_upstream_predict_body(ctx) or generic,
        description="The body and status come from the model service that answers; "
                    "502, 504 and the 404 of X-Route-To come from the router itself.",
    )}


def _service_paths(versions: list[str]) -> dict[str, Any]:
    """Health, readiness, metrics and the dashboard: no token needed."""
    if_none_match = header_parameter("If-None-Match", "ETag of a cached copy")
    not_modified = {"description": "Not modified (If-None-Match)"}
    return {
        "/health": {"get": operation("Liveness", {"200": json_body("The process answers", _object(
            ["status"], {"status": {"type": "string", "enum": ["ok"]}}))})},
        "/ready": {"get": operation("Readiness: routing state loaded and stable ready", {
            "200": json_body("Ready", _object(["status", "stable", "config_version"], {
                "status": {"type": "string", "enum": ["ready"]},
                "stable": {"type": "string", "enum": versions},
                "config_version": {"type": "integer", "minimum": 1}})),
            **errors(503, meanings={503: "State not loaded, or the stable version not ready "
                                         "(code upstream_unauthorized: it refused the router's "
                                         "access token)."}),
        })},
        "/metrics": {"get": operation("Prometheus metrics",
                                      {"200": plain_text("Text exposition format")})},
        "/dashboard": {"get": operation("The dashboard page, for people", {
            "200": {"description": "The page", "content": {"text/html": {"schema": STRING}}},
            "304": not_modified,
        }, parameters=[if_none_match])},
        "/dashboard/static/{name}": {"get": operation("The dashboard's script, style and icon", {
            "200": {"description": "The file", "content": {
                media.split(";")[0]: {"schema": STRING} for media in ASSETS.values()}},
            "304": not_modified,
            **errors(404, meanings={404: "No such file."}),
        }, parameters=[
            {"name": "name", "in": "path", "required": True,
             "schema": {"type": "string", "enum": list(ASSETS)}},
            {"name": "v", "in": "query", "required": False, "schema": STRING,
             "description": "Content hash; a matching one makes the file cacheable for good."},
            if_none_match,
        ])},
        "/openapi.json": {"get": openapi_operation()},
    }


def _admin_paths(versions: list[str]) -> dict[str, Any]:
    """The admin API: bearer token; 503 while ROUTER_ADMIN_TOKEN is unset."""
    meanings = {503: "The admin API is disabled (ROUTER_ADMIN_TOKEN is not set), or the state "
                     "store does not answer (changes are refused, routing goes on)."}
    challenge = {401: {"WWW-Authenticate": header("Bearer challenge")}}
    etag = {"ETag": header('config_version as an entity tag, e.g. "7"')}
    state = json_body("The routing state after the call", {"$ref": f"{SCHEMAS}State"}, etag)
    rollout = json_body("The rollout", {"$ref": f"{SCHEMAS}RolloutView"}, etag)
    if_match = header_parameter(
        "If-Match", 'Apply only if config_version is still this one: "7", W/"7" or 7; else 412.',
        {"type": "string", "pattern": '^(W/)?"?[0-9]+"?$'})
    actor = header_parameter("X-Actor", "Who acts, for the audit log (1 to 64 of A-Z a-z 0-9 "
                                        "@ . _ : -; anything else is logged as admin-api).")
    change = (400, 412, 413, 415, 422)

    def admin_op(summary: str, ok: dict[str, Any], *statuses: int, **fields: Any) -> dict[str, Any]:
        failures = errors(*sorted({401, 503, *statuses}), meanings=meanings, headers=challenge)
        return operation(summary, {"200": ok, **failures}, security=[{"bearer": []}],
                         tags=["admin"], **fields)

    def transition(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
        reason_only = _object([], {"reason": _reason()})
        return {"post": admin_op(summary, ok, *change, 409, parameters=[if_match, actor],
                                 requestBody={"required": False, "content": {
                                     "application/json": {"schema": reason_only}}})}

    patch = _object([], {
        "strategy": {"type": "string", "enum": list(names())},
        "stable": {"type": "string", "enum": versions},
        "candidate": {"type": "string", "enum": [*versions, None], "nullable": True},
        "canary_weight": PERCENT,
        "shadow_percent": PERCENT,
        "reason": _reason(),
    }) | {"minProperties": 1}
    return {
        "/admin/state": {
            "get": admin_op("The routing state", state),
            "patch": admin_op(
                "Change strategy, roles, canary weight or shadow percent", state, *change,
                parameters=[if_match, actor],
                requestBody={"required": True, "content": {"application/json": {
                    "schema": patch,
                    "example": {"strategy": "canary", "canary_weight": 10, "reason": "canary"}}}},
                description=f"Fields: {', '.join(PATCHABLE)} (at least one), and reason. "
                            "Upstream URLs are fixed at start and cannot be changed."),
        },
        "/admin/promote": transition("The candidate becomes stable and takes all traffic", state),
        "/admin/rollback": transition("All traffic back to stable; a running rollout is aborted",
                                      state),
        "/admin/rollout": {
            "get": admin_op("The rollout: step, and every decision with its evidence", rollout),
            "post": admin_op(
                "Start an automated rollout from a plan", state, *change, 409,
                parameters=[if_match, actor],
                requestBody={"required": True, "content": {"application/json": {
                    "schema": _plan_schema(), "example": PLAN_EXAMPLE}}},
                description="409: a rollout is already active, or the candidate is not ready."),
        },
        "/admin/rollout/pause": transition("Hold the running rollout", rollout),
        "/admin/rollout/resume": transition(
            "Continue a paused rollout, or promote one awaiting promotion", rollout),
        "/admin/analysis": {"get": admin_op(
            "Live per-version comparison",
            json_body("Requests, errors, latency, agreement", {"$ref": f"{SCHEMAS}Analysis"}))},
        "/admin/drift": {"get": admin_op(
            "The input columns drifting most in each slot (PSI from each slot's GET /drift)",
            json_body("Per slot: version, role and the top columns by PSI", {"type": "object"}),
            400, parameters=[
                {"name": "top", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5}},
            ])},
        "/admin/disagreements": {"get": admin_op(
            "Where stable's and the candidate's predictions differ, from shadow traffic",
            json_body("Confusion matrix, difference distribution, latest disagreeing rows",
                      DISAGREEMENTS), 400, parameters=DISAGREEMENT_QUERY)},
        "/admin/releases": {"get": admin_op(
            "The release history, oldest first: version, slot, strategy, start, end, outcome",
            json_body("Releases", {"$ref": f"{SCHEMAS}Releases"}), 400, parameters=[
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
            ])},
        "/admin/events": {"get": admin_op(
            "The audit log, oldest first",
            json_body("Events", {"$ref": f"{SCHEMAS}Events"}), 400, parameters=[
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "after", "in": "query", "required": False,
                 "description": "Only events with a larger id.",
                 "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0}},
            ])},
    }


def _feedback_path() -> dict[str, Any]:
    """POST /feedback: bearer ROUTER_FEEDBACK_TOKEN; 404 while it is unset."""
    truth = {"type": "array", "minItems": 1}
    body = {"oneOf": [
        _object(["request_id", "labels"], {"request_id": STRING, "labels": truth}),
        _object(["request_id", "values"], {"request_id": STRING,
                                           "values": truth | {"items": {"type": "number"}}}),
    ]}
    ok = json_body("Recorded, or a repeat of feedback already recorded (counted once)", _object(
        ["request_id", "recorded", "duplicate", "rows", "versions", "paired"], {
            "request_id": STRING, "recorded": {"type": "boolean"},
            "duplicate": {"type": "boolean"}, "rows": {"type": "integer", "minimum": 1},
            "versions": {"type": "array", "items": STRING}, "paired": {"type": "boolean"}}))
    return {"post": operation(
        "The ground truth for an earlier request's rows", {
            "200": ok,
            **errors(400, 401, 404, 409, 413, 415, 422, 503, meanings={
                404: "The request id is unknown or expired (code unknown_request), or feedback "
                     "is disabled: set ROUTER_FEEDBACK_TOKEN (code feedback_disabled).",
                409: "The request already has different feedback; the first one counts.",
                422: "Not one entry per row, a label not among the version's classes, a value "
                     "that is not a finite number, or labels for a regressor (values for a "
                     "classifier).",
                503: "The state store does not answer; send the feedback again later."}),
        }, security=[{"feedback": []}], tags=["feedback"],
        requestBody={"required": True, "content": {"application/json": {
            "schema": body, "example": {"request_id": "4f1c2b", "labels": ["benign"]}}}},
        description="request_id is the X-Request-ID the router answered POST /predict with; one "
                    "label (classifier) or value (regressor) per row of that request, in order.")}


def router_spec() -> dict[str, Any]:
    """The document for the router handling the current request."""
    ctx = _ctx()
    versions = list(ctx.config.upstreams)
    paths = {"/predict": _data_path(ctx), "/feedback": _feedback_path(),
             **_service_paths(versions), **_admin_paths(versions)}
    schemes = {"bearer": BEARER_SCHEME, "feedback": BEARER_SCHEME}
    if ctx.config.metrics_token is not None:
        schemes["metrics"] = METRICS_SCHEME
        paths["/metrics"] = guarded(paths["/metrics"], "metrics")
    return document(
        "Model traffic router", "1",
        f"Routes POST /predict to one of {', '.join(versions)} by the current strategy; the "
        "admin API changes the routing. Errors are JSON: {\"error\": {\"code\", \"message\"}}.",
        paths, _schemas(ctx), security_schemes=schemes,
    )


openapi = spec_blueprint(router_spec)
