"""``GET /admin/disagreements``: how stable's and the candidate's predictions differ on live traffic.

Pairs come from shadow traffic, where both versions answer the same request. Under canary each
request is answered by one version only, so canary traffic adds no pairs; the answer says so.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Response, request

from common.errors import BadRequest, json_response
from metrics.disagreement import summarize
from router.admin import _ctx, _query_int, admin

QUERY = ("limit", "stable", "candidate")
_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$"
_VERSION = re.compile(_VERSION_PATTERN)
PAIRS_FROM = "shadow traffic"
CANARY_NOTE = ("under canary each request is answered by one version only, so there is no pair "
               "to compare: pairs come from shadow traffic (the shadow phase of a "
               "shadow-then-canary plan, or strategy shadow)")


_NUMBER = {"type": "number"}
_COUNT = {"type": "integer", "minimum": 0}
_CLASS: dict[str, Any] = {"description": "a class as the models name it (string or number)"}
_NULLABLE_STRING = {"type": "string", "nullable": True}
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stable", "candidate", "strategy", "pairs_from", "task", "rows", "agreeing_rows",
                 "disagreeing_rows", "agreement", "confusion_matrix", "differences", "samples",
                 "sample_capacity", "pairs"],
    "properties": {
        "stable": _NULLABLE_STRING, "candidate": _NULLABLE_STRING,
        "strategy": {"type": "string"}, "pairs_from": {"type": "string"},
        "note": {"type": "string"},
        "task": {"type": "string", "enum": ["classification", "regression"], "nullable": True},
        "rows": _COUNT, "agreeing_rows": _COUNT, "disagreeing_rows": _COUNT,
        "agreement": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
        "confusion_matrix": {
            "type": "object", "nullable": True,
            "description": "counts[i][j]: rows stable called classes[i] and the candidate "
                           "classes[j]; null for regressors",
            "properties": {"rows": {"type": "string"}, "columns": {"type": "string"},
                           "classes": {"type": "array", "items": _CLASS},
                           "counts": {"type": "array",
                                      "items": {"type": "array", "items": _COUNT}}}},
        "confusion_matrix_note": {"type": "string"},
        "differences": {
            "type": "object", "required": ["kind", "per", "buckets"],
            "description": "per row: the largest probability difference (classifiers) or the "
                           "absolute value difference (regressors), counted per bucket",
            "properties": {
                "kind": {"type": "string", "enum": ["probability", "value"]},
                "per": {"type": "string"},
                "buckets": {"type": "array", "items": {
                    "type": "object", "required": ["le", "count"],
                    "properties": {"le": {"type": "number", "nullable": True}, "count": _COUNT}}}}},
        "samples": {"type": "array", "description": "newest first", "items": {
            "type": "object",
            "properties": {"request_id": _NULLABLE_STRING, "time": {"type": "string"},
                           "stable": {"type": "string"}, "candidate": {"type": "string"},
                           "row": _COUNT, "input": {"nullable": True},
                           "stable_prediction": _CLASS, "candidate_prediction": _CLASS,
                           "difference": _NUMBER, "input_too_large": {"type": "boolean"},
                           "stable_probabilities": {"type": "array", "items": _NUMBER},
                           "candidate_probabilities": {"type": "array", "items": _NUMBER}}}},
        "sample_capacity": _COUNT,
        "pairs": {"type": "array", "items": {
            "type": "object", "required": ["stable", "candidate", "updated_at"],
            "properties": {"stable": {"type": "string"}, "candidate": {"type": "string"},
                           "updated_at": _NUMBER}}},
    },
}
QUERY_PARAMETERS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "required": False, "description": "Newest disagreeing rows.",
     "schema": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 20}},
    *({"name": role, "in": "query", "required": False,
       "description": f"The pair's {role} version; give both or neither (default: the "
                      "versions the roles serve now).",
       "schema": {"type": "string", "pattern": _VERSION_PATTERN}}
      for role in ("stable", "candidate")),
]


def _version(name: str) -> str | None:
    raw = request.args.get(name)
    if raw is not None and not _VERSION.match(raw):
        raise BadRequest(f"{name} must be a version such as v2 (letters, digits, ._:+-), got "
                         f"{raw[:40]!r}", code="bad_query")
    return raw


@admin.get("/disagreements")
def disagreements() -> Response:
    """The confusion matrix, the difference distribution and the latest disagreeing rows of one
    pair of versions: ``?stable=v1&candidate=v2`` (default: the versions the roles serve now)."""
    ctx = _ctx()
    unknown = sorted(set(request.args) - set(QUERY))
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {unknown}; accepted: {', '.join(QUERY)}",
                         code="bad_query")
    limit = _query_int("limit", 20, 0, 1000)
    stable, candidate = _version("stable"), _version("candidate")
    if (stable is None) != (candidate is None):
        raise BadRequest("give both stable and candidate versions, or neither (the versions "
                         "the roles serve now)", code="bad_query")
    routing = ctx.live.current.routing
    pairs = ctx.store.disagreement_pairs()
    if stable is None and routing.candidate is not None:
        stable, candidate = ctx.slots.label(routing.stable), ctx.slots.label(routing.candidate)
    if stable is None and pairs:
        stable, candidate = pairs[0]["stable"], pairs[0]["candidate"]
    body: dict[str, Any] = {"stable": stable, "candidate": candidate,
                            "strategy": routing.strategy, "pairs_from": PAIRS_FROM}
    if routing.strategy == "canary":
        body["note"] = CANARY_NOTE
    if stable is not None and candidate is not None:
        record = ctx.store.disagreements(stable, candidate, limit)
        counts, samples = record.counts, record.samples
    else:
        counts, samples = {}, []
    body.update(summarize(counts))
    body["samples"] = samples
    body["sample_capacity"] = ctx.config.disagreement_samples
    body["pairs"] = pairs
    return json_response(body)
