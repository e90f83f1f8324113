"""Errors that reach HTTP clients, and the handlers that render them as JSON.

Every error a client can cause is an ``APIError`` carrying a status, a stable machine code and a
message that says what to do. Flask handlers below render all of them, and every werkzeug HTTP
error and unexpected exception, in the one shape of the product contract::

    {"error": {"code": "invalid_input", "message": "..."}}

Hierarchy::

    APIError
    ├── BadRequest            400  malformed body (not JSON, not an object)
    │   └── IncompleteBody    400  body cut short or bad chunked encoding (connection closed)
    ├── Unauthorized          401  missing or wrong bearer token
    ├── NotFound              404  unknown route or unknown version
    ├── Conflict              409  the request conflicts with the current state
    ├── PreconditionFailed    412  If-Match names a stale config_version
    ├── PayloadTooLarge       413  body over the size limit, or too many rows
    ├── UnsupportedMediaType  415  Content-Type is not application/json
    ├── Unprocessable         422  well-formed JSON with invalid values
    ├── NotImplementedYet     501  an endpoint of the contract not available in this build
    ├── BadGateway            502  the upstream failed
    ├── ServiceUnavailable    503  not ready, or a feature disabled by configuration
    └── GatewayTimeout        504  the upstream did not answer within the budget
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error with an HTTP status, a stable code and a message for the client."""

    status = 500
    code = "internal_error"
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class BadRequest(APIError):
    status, code = 400, "bad_request"


class IncompleteBody(BadRequest):
    """The body ended before its declared length, or its chunked framing is broken.

    The connection's byte stream can no longer be trusted, so the response closes it.
    """

    code = "incomplete_body"
    headers = (("Connection", "close"),)


class Unauthorized(APIError):
    status, code = 401, "unauthorized"
    headers = (("WWW-Authenticate", 'Bearer realm="admin"'),)


class NotFound(APIError):
    status, code = 404, "not_found"


class Conflict(APIError):
    status, code = 409, "conflict"


class PreconditionFailed(APIError):
    status, code = 412, "precondition_failed"


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(APIError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(APIError):
    status, code = 422, "invalid_input"


class NotImplementedYet(APIError):
    status, code = 501, "not_implemented"


class BadGateway(APIError):
    status, code = 502, "bad_gateway"


class ServiceUnavailable(APIError):
    status, code = 503, "service_unavailable"


class GatewayTimeout(APIError):
    status, code = 504, "gateway_timeout"


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


# The answer to anything unexpected: the contract's JSON 500, never a traceback page.
INTERNAL_ERROR = APIError("internal error; see the server log")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson (numpy arrays included)."""
    payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(payload, status=status, headers=headers, mimetype="application/json")


def error_response(err: APIError) -> Response:
    return json_response(err.body(), err.status, dict(err.headers) or None)


def register_error_handlers(app: Flask) -> None:
    """Render every error raised in ``app`` as the contract's JSON error shape."""

    @app.errorhandler(APIError)
    def _api_error(err: APIError) -> Response:
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = err.description or err.name
        if status == 404:
            message = "no such endpoint; see the README for the API"
        elif status == 405:
            message = f"method not allowed; allowed: {', '.join(err.valid_methods or [])}"  # type: ignore[attr-defined]
        resp = json_response({"error": {"code": code, "message": message}}, status)
        if status == 405 and getattr(err, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(err.valid_methods)  # type: ignore[attr-defined]
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(INTERNAL_ERROR)


# -- bare WSGI hot paths (the router's and the model service's POST /predict) ------------------
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_POST_ONLY = orjson.dumps(
    {"error": {"code": "method_not_allowed", "message": "method not allowed; allowed: POST"}}
)


def status_line(status: int) -> str:
    """The WSGI status string for ``status`` ("404 Not Found")."""
    return _STATUS_LINES.get(status, f"{status} Unknown")


def post_only(start_response: Any) -> list[bytes]:
    """The JSON 405 of a bare WSGI endpoint that accepts only POST."""
    start_response("405 Method Not Allowed", [
        ("Content-Type", "application/json"), ("Allow", "POST"),
        ("Content-Length", str(len(_POST_ONLY))),
    ])
    return [_POST_ONLY]
