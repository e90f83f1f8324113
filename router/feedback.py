"""``POST /feedback``: the ground truth for an earlier request's rows, joined to its predictions.

    POST /feedback  Authorization: Bearer $ROUTER_FEEDBACK_TOKEN
    {"request_id": "4f1c...", "labels": ["malignant", "benign"]}     (a classifier's request)
    {"request_id": "4f1c...", "values": [151.0, 75.5]}               (a regressor's)

The request id is the ``X-Request-ID`` the router answered ``/predict`` with. The labels are scored
against what the version that answered predicted (and, under shadow, what the candidate
predicted for the same rows) and added to the per-version quality counts in the state store, once
per request id: the same feedback again is answered ``200`` with ``"duplicate": true`` and counts
nothing; a different feedback for a request already labelled is a ``409``. Without
ROUTER_FEEDBACK_TOKEN the endpoint answers ``404 feedback_disabled`` and the router remembers no
predictions.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from common.auth import bearer_matches
from common.body import read_json_object
from common.errors import (
    APIError, Conflict, NotFound, ServiceUnavailable, Unauthorized, Unprocessable, json_response,
)
from metrics.quality import LabelError, score
from router.context import RouterContext
from router.datapath import _REQUEST_ID
from router.state import StoreUnavailable

feedback = Blueprint("feedback", __name__)
MAX_FEEDBACK_BODY = 8 * 1024 * 1024


class FeedbackUnauthorized(Unauthorized):
    headers = (("WWW-Authenticate", 'Bearer realm="feedback"'),)


def _ctx() -> RouterContext:
    return current_app.extensions["router"]  # type: ignore[no-any-return]


def _authenticate(ctx: RouterContext) -> None:
    token = ctx.config.feedback_token
    if token is None:
        raise NotFound("feedback is disabled: set ROUTER_FEEDBACK_TOKEN to enable POST /feedback",
                       code="feedback_disabled")
    if not bearer_matches(request.headers.get("Authorization", ""), token):
        raise FeedbackUnauthorized("missing or wrong feedback token: send the header "
                           "'Authorization: Bearer <ROUTER_FEEDBACK_TOKEN>'")


def _truth(doc: dict[str, Any]) -> tuple[str, str, list[Any]]:
    """(request id, task, labels or values) from the body, or a 422 saying what to send."""
    request_id = doc.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise Unprocessable("request_id must be the X-Request-ID the router answered /predict "
                            "with (1 to 128 letters, digits and ._:-)", code="invalid_request_id")
    given = [name for name in ("labels", "values") if name in doc]
    if len(given) != 1:
        raise Unprocessable('send either "labels" (a classifier\'s classes) or "values" '
                            "(a regressor's numbers), one per row of the request",
                            code="invalid_feedback")
    truth = doc[given[0]]
    if not isinstance(truth, list) or not truth:
        raise Unprocessable(f'"{given[0]}" must be a non-empty list, one entry per row',
                            code="invalid_feedback")
    return request_id, "classification" if given[0] == "labels" else "regression", truth


def _recall(ctx: RouterContext, request_id: str) -> dict[str, Any]:
    found = ctx.store.recall_predictions(request_id)
    if found is None and ctx.predictions is not None:
        ctx.predictions.flush()  # answered moments ago by this process: written now
        found = ctx.store.recall_predictions(request_id)
    if found is None:
        raise NotFound(
            f"no prediction is known for request id {request_id!r}: it is unknown, or older than "
            f"ROUTER_FEEDBACK_RETENTION_S={ctx.config.feedback_retention_s:g} s (or dropped "
            f"beyond ROUTER_FEEDBACK_MAX_REQUESTS={ctx.config.feedback_max_requests})",
            code="unknown_request",
        )
    return found


@feedback.post("/feedback")
def post_feedback() -> Response:
    ctx = _ctx()
    try:
        return _feedback(ctx)
    except APIError as err:
        outcome = {"feedback_conflict": "conflict", "unknown_request": "unknown"}.get(
            err.code or "", "invalid")
        ctx.metrics.child(ctx.metrics.feedback_requests, outcome).inc()
        raise


def _feedback(ctx: RouterContext) -> Response:
    _authenticate(ctx)
    request_id, task, truth = _truth(read_json_object(request, MAX_FEEDBACK_BODY))
    try:
        found = _recall(ctx, request_id)
        served, shadow = found["served"], found.get("shadow")
        version = served["version"]
        served_task = "classification" if "probabilities" in served else "regression"
        if task != served_task:
            wanted = "labels" if served_task == "classification" else "values"
            raise Unprocessable(f"version {version} answered request {request_id} as a "
                                f"{'classifier' if wanted == 'labels' else 'regressor'}: "
                                f'send "{wanted}"', code="invalid_feedback")
        rows = len(served["predictions"])
        if len(truth) != rows:
            raise Unprocessable(f"request {request_id} had {rows} row(s); the feedback gives "
                                f"{len(truth)}: send one entry per row, in order",
                                code="wrong_row_count")
        try:
            counts = score(served, shadow, truth, task)
        except LabelError as exc:
            raise Unprocessable(str(exc), code="invalid_label") from None
        fingerprint = hashlib.sha256(orjson.dumps([task, truth])).hexdigest()
        outcome = ctx.store.record_feedback(request_id, fingerprint, counts, served["at"],
                                            2 * ctx.config.feedback_retention_s)
    except StoreUnavailable as exc:
        raise ServiceUnavailable(f"{exc}; send the feedback again later",
                                 code="state_store_unavailable") from None
    if outcome == "unknown":
        raise NotFound(f"request id {request_id!r} expired while its feedback was recorded",
                       code="unknown_request")
    if outcome == "conflict":
        raise Conflict(f"request {request_id} already has different feedback; the first one "
                       "counts", code="feedback_conflict")
    ctx.metrics.child(ctx.metrics.feedback_requests, outcome).inc()
    if outcome == "recorded":
        ctx.metrics.feedback(counts)
    return json_response({
        "request_id": request_id, "recorded": outcome == "recorded",
        "duplicate": outcome == "duplicate", "rows": rows,
        "versions": sorted(counts["versions"]), "paired": bool(counts["pairs"]),
    })
