"""The last line of defence of both services: an exception no handler caught becomes the JSON 500.

Flask's error handlers answer errors raised inside Flask; the bare WSGI hot paths in front of
it (``POST /predict`` of the router and of the model service) answer their own. Whatever still
escapes would reach gevent's handler, which answers a plain-text 500. :class:`LastResort`, the
outermost WSGI layer, answers it as the contract's error shape instead, logs it with the
request's id and closes the connection: after an unexpected failure nobody knows how much of
the request body was read, so the next bytes on the connection cannot be trusted.

    >>> app.wsgi_app = LastResort(app.wsgi_app)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from common.errors import INTERNAL_ERROR, status_line

log = logging.getLogger(__name__)

#: environ key under which a hot path stores the request id it answers with
REQUEST_ID_KEY = "model_router.request_id"
_USABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
StartResponse = Callable[..., Any]


def request_id(environ: dict[str, Any]) -> str:
    """The id this request is known by: the hot path's, the client's if usable, else a new one."""
    known = environ.get(REQUEST_ID_KEY)
    if known:
        return str(known)
    given = environ.get("HTTP_X_REQUEST_ID", "")
    rid = given if _USABLE_ID.match(given) else uuid.uuid4().hex
    environ[REQUEST_ID_KEY] = rid
    return rid


def internal_error(environ: dict[str, Any], start_response: StartResponse,
                   exc_info: Any = None) -> list[bytes]:
    """Log the exception being handled with the request id; answer the JSON 500, closing."""
    rid = request_id(environ)
    log.error("unhandled error in %s %s (request id %s)", environ.get("REQUEST_METHOD"),
              environ.get("PATH_INFO"), rid, exc_info=exc_info or sys.exc_info())
    body = orjson.dumps(INTERNAL_ERROR.body())
    start_response(status_line(500), [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
        ("Connection", "close"), ("X-Request-ID", rid),
    ], exc_info or sys.exc_info())
    return [body]


class LastResort:
    """WSGI middleware: any exception from ``app`` is answered as the contract's JSON 500."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            result = self.app(environ, start_response)
        except Exception:
            return internal_error(environ, start_response)
        if isinstance(result, (list, tuple)):  # the hot paths: nothing left to fail
            return result
        return _Guarded(result, environ, start_response)


class _Guarded:
    """A response iterable whose failure before its first chunk still becomes the JSON 500."""

    def __init__(self, result: Iterable[bytes], environ: dict[str, Any],
                 start_response: StartResponse) -> None:
        self.result = result
        self.environ = environ
        self.start_response = start_response

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.result)
        try:
            first = next(chunks, None)
        except Exception:
            # nothing sent yet: the status can still change (after that the server cuts it off)
            yield from internal_error(self.environ, self.start_response)
            return
        if first is not None:
            yield first
            yield from chunks

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()
