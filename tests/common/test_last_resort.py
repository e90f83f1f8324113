"""The last-resort handler: whatever escapes a WSGI app is the contract's JSON 500, closing."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.last_resort import LastResort
from tests.router.conftest import in_process_router
from tests.serving.wire import EchoUpstream, _read_responses
from tests.servers import InProcessServer


def _failing_call(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise RuntimeError("broken on purpose")


def _failing_iteration(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise RuntimeError("broken on purpose")
    yield b"never"


def _raw(port: int, request: bytes) -> list[Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return _read_responses(data)[0]


@pytest.mark.parametrize("app", [_failing_call, _failing_iteration], ids=["call", "iteration"])
def test_an_escaping_exception_is_a_json_500_that_closes_and_is_logged_with_the_request_id(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="common.last_resort"), \
            InProcessServer(LastResort(app)) as server:
        [resp] = _raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: req-42\r\n\r\n")
    assert resp.status == 500
    assert resp.is_json_error() and resp.json()["error"]["code"] == "internal_error"
    assert resp.headers["connection"] == "close"
    assert resp.headers["x-request-id"] == "req-42"
    assert "broken on purpose" not in resp.body.decode()
    assert any("req-42" in r.getMessage() and r.exc_info for r in caplog.records)


def test_the_data_path_refuses_a_header_it_cannot_forward_under_any_wsgi_server(
    tmp_path: Path,
) -> None:
    """A WSGI server upper-cases header names into environ keys: 0xB5 becomes U+039C, which no
    request head can carry. A JSON 400 naming the header, not an encoding error."""
    upstream = EchoUpstream()
    try:
        with in_process_router({"v1": upstream.url}, f"sqlite:///{tmp_path / 's.db'}") as app:
            resp = app.test_client().post("/predict", data=b"{}", headers={
                "Content-Type": "application/json", "X-A\xb5": "v"})
    finally:
        upstream.close()
    assert resp.status_code == 400, resp.data
    assert resp.get_json()["error"]["code"] == "invalid_header"
