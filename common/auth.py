"""Bearer-token checks, compared in constant time: admin endpoints, and whole paths gated in WSGI.

Tokens in the query string are never accepted. An endpoint checks its own admin token
(``require_bearer``); a ``BearerGate`` in front of the app refuses a request whose path needs a
token (every model-service path under ``MODEL_ACCESS_TOKEN``, ``/metrics`` under
``METRICS_TOKEN``) before any route, fast path or metric sees it.

    >>> gate = BearerGate(app, lambda path: None if path == "/health" else guard)  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Request

from common.errors import ServiceUnavailable, Unauthorized, status_line


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (constant-time compare)."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def require_bearer(request: Request, token: str | None, variable: str) -> None:
    """Raise unless ``request`` carries ``Authorization: Bearer <token>``.

    No token configured means the admin API is off (503 naming ``variable``); a missing or wrong
    token is a 401.
    """
    if not token:
        raise ServiceUnavailable(
            f"the admin API is disabled: set {variable} to enable it", code="admin_disabled"
        )
    if not bearer_matches(request.headers.get("Authorization", ""), token):
        raise Unauthorized(
            "missing or wrong admin token: send the header 'Authorization: Bearer <token>'"
        )


@dataclass(frozen=True)
class Guard:
    """The token a path needs, and what a client without it is told."""

    token: str
    realm: str  # in WWW-Authenticate: which credential this is ("model", "metrics")
    message: str  # what to do, naming the setting that holds the token

    def refusal(self) -> tuple[list[tuple[str, str]], bytes]:
        """The JSON 401's headers and body."""
        body = orjson.dumps({"error": {"code": "unauthorized", "message": self.message}})
        return [("Content-Type", "application/json"),
                ("WWW-Authenticate", f'Bearer realm="{self.realm}"'),
                ("Content-Length", str(len(body)))], body


WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


class BearerGate:
    """WSGI middleware: a request without the token its path needs is answered 401 here.

    ``guard_for(path)`` gives the path's ``Guard``, or None for a path open to everyone. A refused
    request reaches nothing behind the gate: no route, no counter, no body read.
    """

    def __init__(self, app: WSGIApp, guard_for: Callable[[str], Guard | None]) -> None:
        self.app = app
        self.guard_for = guard_for

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        guard = self.guard_for(environ.get("PATH_INFO", ""))
        if guard is None or bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), guard.token):
            return self.app(environ, start_response)
        headers, body = guard.refusal()
        start_response(status_line(401), headers)
        return [body]


def metrics_guard(token: str) -> Guard:
    """``/metrics`` under ``METRICS_TOKEN``."""
    return Guard(token, "metrics",
                 "missing or wrong metrics token: send 'Authorization: Bearer <token>' with the "
                 "value of METRICS_TOKEN (Prometheus: an authorization block in the scrape job)")
