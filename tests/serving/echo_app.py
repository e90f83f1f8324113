"""A tiny WSGI app for the serving layer's tests: answers with the body it was given.

Served by gunicorn with the project's settings (``serving.gunicorn_conf``), so what it echoes is
what the serving layer parsed: where a request ends and what its body is.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from common.body import read_environ_body
from common.errors import APIError, NotFound, status_line
from common.last_resort import LastResort
from serving.lifecycle import at_worker_exit


def _echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    status, extra = 200, []
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO")
    try:
        if (method, path) not in (("POST", "/echo"), ("GET", "/health")):
            # as the services' routes do: anything else is an error, not an echo
            raise NotFound(f"{method!r} {path!r} is not served here", code="not_served")
        body = read_environ_body(environ, 1 << 20) if method == "POST" else b""
        doc: dict[str, Any] = {"path": path, "body": body.hex()}
    except APIError as err:
        status, doc, extra = err.status, err.body(), list(err.headers)
    payload = orjson.dumps(doc)
    start_response(status_line(status), [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(payload))), *extra])
    return [payload]


app = LastResort(_echo)


def _closed() -> None:
    """Registered below: each worker notes its exit, so a test can see the hook ran."""
    with open(os.environ["ECHO_CLOSED_FILE"], "a") as fh:
        fh.write(f"closed {os.getpid()}\n")


if os.environ.get("ECHO_CLOSED_FILE"):
    with open(os.environ["ECHO_CLOSED_FILE"], "a") as fh:
        fh.write(f"loaded {os.getpid()}\n")
    at_worker_exit(_closed)
