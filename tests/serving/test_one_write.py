"""Optimisation ``one_write``: the same bytes as gevent's own handler, in one send when short."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from gevent import pywsgi

from serving.handler import ONE_WRITE_MAX, handler_class
from tests.serving.test_private_names import AccessLog, exchange

_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def app_of(status: str, headers: list[tuple[str, str]], body: Any) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(status, list(headers))
        return body() if callable(body) else list(body)
    return app


CASES = {
    "short sized body": ("200 OK", [("Content-Type", "application/json")], [b'{"a":1}']),
    "two parts, length unknown": ("200 OK", [], lambda: iter([b"abc", b"def"])),
    "declared length": ("200 OK", [("Content-Length", "5")], [b"hello"]),
    "empty body": ("200 OK", [], [b""]),
    "no body parts": ("200 OK", [], []),
    "over the one-write size": ("200 OK", [], [b"x" * (ONE_WRITE_MAX + 1)]),
    "at the one-write size": ("200 OK", [], [b"y" * ONE_WRITE_MAX]),
    "204": ("204 No Content", [], [b""]),
    "304": ("304 Not Modified", [], []),
    "error status": ("404 Not Found", [("Content-Type", "text/plain")], [b"no such thing"]),
}
REQUESTS = {
    "GET, close": b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "HEAD, close": b"HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "two on one connection": b"GET /x HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n"
                             b"Connection: close\r\n\r\n",
    "HTTP/1.0": b"GET /x HTTP/1.0\r\n\r\n",
}


@pytest.mark.parametrize("request_", REQUESTS.values(), ids=REQUESTS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_answer_is_byte_for_byte_gevents(case: tuple[str, list[tuple[str, str]], Any],
                                             request_: bytes) -> None:
    app = app_of(*case)
    theirs = exchange(app, request_, handler_class(frozenset()), AccessLog())
    ours = exchange(app, request_, handler_class(frozenset({"one_write"})), AccessLog())
    assert theirs.startswith(b"HTTP/1.1 ")
    assert _DATE.sub(b"\r\nDate: -\r\n", ours) == _DATE.sub(b"\r\nDate: -\r\n", theirs)


def with_socket_sends(base: type, send: Callable[[Any, Any, bool], Any]) -> type:
    """``base`` whose connection socket's send() and sendall() go through
    ``send(real_socket, data, whole)`` (``whole``: it was sendall())."""

    class Wrapped(base):  # type: ignore[valid-type,misc]
        def handle(self) -> Any:
            real = self.socket

            class Socket:
                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

                def send(self, data: Any, *args: Any) -> int:
                    return int(send(real, data, False))

                def sendall(self, data: Any, *args: Any) -> None:
                    send(real, data, True)

            self.socket = Socket()
            return super().handle()

    return Wrapped


class Sends:
    """Counts the sends on each connection of a handler class."""

    def __init__(self, base: type) -> None:
        self.calls: list[int] = []

        def counted(real: Any, data: Any, whole: bool) -> Any:
            self.calls.append(len(data))
            return real.sendall(data) if whole else real.send(data)

        self.handler = with_socket_sends(base, counted)


def test_a_short_answer_goes_out_in_one_send_where_gevent_makes_two() -> None:
    app = app_of(*CASES["short sized body"])
    request_ = REQUESTS["GET, close"]
    plain, ours = Sends(handler_class(frozenset())), Sends(handler_class(frozenset({"one_write"})))
    answer = exchange(app, request_, ours.handler, AccessLog())
    exchange(app, request_, plain.handler, AccessLog())
    assert answer.endswith(b'\r\n\r\n{"a":1}')
    assert len(plain.calls) == 2
    assert ours.calls == [len(answer)]


def test_a_long_answer_is_sent_as_gevent_sends_it() -> None:
    app = app_of(*CASES["over the one-write size"])
    request_ = REQUESTS["GET, close"]
    plain, ours = Sends(handler_class(frozenset())), Sends(handler_class(frozenset({"one_write"})))
    exchange(app, request_, ours.handler, AccessLog())
    exchange(app, request_, plain.handler, AccessLog())
    assert ours.calls == plain.calls


def test_the_access_log_gets_the_bytes_sent_and_the_status() -> None:
    app = app_of(*CASES["short sized body"])
    logs = []
    for optimisations in (frozenset(), frozenset({"one_write"})):
        records: list[tuple[int, Any]] = []

        class Logged(handler_class(optimisations)):  # type: ignore[misc]
            def log_request(self) -> None:
                records.append((self.response_length, self.code))

        exchange(app, REQUESTS["GET, close"], Logged, AccessLog())
        logs.append(records)
    assert logs[0] == logs[1] and logs[0][0][1] == 200 and logs[0][0][0] > 7


def test_a_failed_send_is_recorded_as_gevent_records_it() -> None:
    """The client gone before the answer: the status made negative, as gevent does."""
    codes = []
    for optimisations in (frozenset(), frozenset({"one_write"})):

        def broken(real: Any, data: Any, whole: bool) -> Any:
            raise BrokenPipeError(32, "Broken pipe")

        class Broken(with_socket_sends(handler_class(optimisations), broken)):  # type: ignore[misc]
            def log_request(self) -> None:
                codes.append(self.code)

        exchange(app_of(*CASES["short sized body"]), REQUESTS["GET, close"], Broken, AccessLog())
    assert codes == [-200, -200]


def test_gevent_still_sends_head_and_body_apart() -> None:
    """What one_write is for: if gevent ever sends a short answer whole, drop the optimisation."""
    sends = Sends(pywsgi.WSGIHandler)
    exchange(app_of(*CASES["short sized body"]), REQUESTS["GET, close"], sends.handler)
    assert len(sends.calls) == 2
