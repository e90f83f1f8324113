"""The gevent WSGI handler both services run on, at gevent's ``handler_class`` seam.

:class:`ServingHandler` is gunicorn's gevent handler plus what the product needs of its server:
requests that are not valid HTTP get the contract's JSON error (gevent answers an empty 400 or
414), a chunked body is read by the strict ``serving.chunked.ChunkedInput``, and at shutdown a
connection idle between requests is ended (see ``serving.worker``).

The optimisations, each a mixin the worker puts in front of it unless switched off
(``SERVING_OPTIMISATIONS``, see ``serving.options``):

- ``header_reader``: request headers read by :class:`RequestHeaders` instead of
  ``http.client.parse_headers``, which runs the ``email`` package's feed parser (about a sixth of
  a worker's time on a small request). Same limits as ``http.client`` (65,536 bytes per line, 100
  headers); a line that is not ``name: value`` ends the request with 400 instead of being guessed at.
- ``one_write``: the status line, headers and a short body in one send, where gevent sends the
  head and the body in two system calls and two TCP segments (the peer wakes twice).

Every name of gevent or gunicorn used here that is not documented API is listed in
``serving.private``, with a test that fails when it changes.

    >>> from serving.handler import RequestHeaders, handler_class
    >>> handler_class(frozenset({"header_reader"})).MessageClass is RequestHeaders
    True
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import Any

from gunicorn.workers.ggevent import PyWSGIHandler

from serving.chunked import ChunkedInput

MAX_LINE = 65536
MAX_HEADERS = 100
_END = (b"\r\n", b"\n", b"")


# RFC 9110 5.1 and 5.5: a field name is a token; a field value is visible ASCII, SP, HTAB and
# obs-text (0x80-0xFF). Every other byte (NUL, a bare CR, the other controls, DEL) is refused.
_NOT_TCHAR = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_NOT_FIELD_VCHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_OWS = b" \t"
_MAX_CONTENT_LENGTH_DIGITS = 18
_NAME_HINT = "; a name is letters, digits and !#$%&'*+-.^_`|~ only"
_VALUE_HINT = "; send visible characters, spaces and tabs only"


def _field_line(raw: bytes) -> tuple[bytes | None, str]:
    """A header line without its line ending (CRLF, or a bare LF), or a status saying why not."""
    if raw.endswith(b"\r\n"):
        return raw[:-2], ""
    if raw.endswith(b"\n"):
        return raw[:-1], ""
    return None, "the header block ended before its blank line; end it with an empty line"


def _framing_status(items: list[list[str]]) -> str:
    """What is wrong with the request's Content-Length and Transfer-Encoding, or ""."""
    lengths = [value for name, value in items if name.lower() == "content-length"]
    codings = [value for name, value in items if name.lower() == "transfer-encoding"]
    if codings:
        if len(codings) > 1 or codings[0].lower() != "chunked":
            return (f"Transfer-Encoding {', '.join(codings)[:40]!r} is not served: send "
                    "'Transfer-Encoding: chunked' once, or a Content-Length")
        if lengths:
            return ("both Transfer-Encoding and Content-Length: which one frames the body? "
                    "send one of them")
    for value in lengths:
        if not (value.isascii() and value.isdigit()) or len(value) > _MAX_CONTENT_LENGTH_DIGITS:
            return (f"Content-Length {value[:20]!r} is not a number of bytes: send decimal "
                    "digits only")
    if len(set(lengths)) > 1:
        # which one frames the body? (the ambiguity request smuggling relies on)
        return "Conflicting Content-Length headers"
    return ""


class RequestHeaders:
    """The header block of one request, in arrival order, checked byte by byte (RFC 9110/9112).

    A name that is not a token, a value carrying control bytes, a Transfer-Encoding other than
    a single ``chunked``, both framings at once, or a Content-Length that is not one decimal
    number, each set ``status`` (the handler answers 400 and closes). A value's obs-text bytes
    (0x80-0xFF) are accepted and kept byte for byte: decoded as latin-1, so they encode back
    to the same bytes whenever the value is sent on. A bare LF ends a line as CRLF does, and
    obsolete line folding is replaced by one space (both as RFC 9112 allows).
    """

    __slots__ = ("_items", "_first", "status")

    def __init__(self, fp: Any, *_: Any) -> None:
        self.status = ""
        items: list[list[str]] = []
        while True:
            raw = fp.readline(MAX_LINE + 1)
            if len(raw) > MAX_LINE:
                self.status = "Line too long"
                break
            if raw in _END:
                if not raw:  # the connection ended inside the header block
                    self.status = _field_line(raw)[1]
                break
            if len(items) >= MAX_HEADERS:
                self.status = "Too many headers"
                break
            line, self.status = _field_line(raw)
            if line is None:
                break
            if line[:1] in (b" ", b"\t"):  # obsolete line folding: continues the previous value
                if not items:
                    self.status = "Continuation line without a header"
                    break
                more = line.strip(_OWS)
                if _NOT_FIELD_VCHAR.search(more):
                    self.status = f"control byte in the value of {items[-1][0][:24]!r}{_VALUE_HINT}"
                    break
                items[-1][1] = f"{items[-1][1]} {more.decode('iso-8859-1')}".strip(" \t")
                continue
            name, sep, value = line.partition(b":")
            if not sep or not name:
                self.status = "Invalid header line"
                break
            if _NOT_TCHAR.search(name):
                self.status = f"header name {name[:24].decode('iso-8859-1')!r} is not a token{_NAME_HINT}"
                break
            value = value.strip(_OWS)
            if _NOT_FIELD_VCHAR.search(value):
                self.status = f"control byte in the value of {name[:24].decode('ascii')!r}{_VALUE_HINT}"
                break
            items.append([name.decode("ascii"), value.decode("iso-8859-1")])
        if not self.status:
            self.status = _framing_status(items)
        self._items = items
        first: dict[str, str] = {}
        for name, value in items:
            first.setdefault(name.lower(), value)
        self._first = first

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)

    getheader = get

    def __getitem__(self, name: str) -> str | None:
        return self._first.get(name.lower())

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        if key not in self._first:
            raise KeyError(name)
        del self._first[key]
        self._items = [item for item in self._items if item[0].lower() != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for name, value in self._items]

    @property
    def typeheader(self) -> str | None:
        return self._first.get("content-type")

    @property
    def headers(self) -> Iterator[str]:
        """``"Name: value\\r\\n"`` for every header, as gevent's handler reads them."""
        for name, value in self._items:
            yield f"{name}: {value}\r\n"


class HeaderReader:
    """Optimisation ``header_reader``: request headers read by :class:`RequestHeaders`."""

    MessageClass = RequestHeaders


ONE_WRITE_MAX = 64 * 1024


class OneWrite:
    """Optimisation ``one_write``: the head and a first body chunk of up to 64 KiB in one send."""

    def write(self, data: bytes) -> None:
        if self.headers_sent or not self.status or not data or len(data) > ONE_WRITE_MAX:  # type: ignore[attr-defined]
            super().write(data)  # type: ignore[misc]
            return
        if self.code in (204, 304):  # type: ignore[attr-defined]
            super().write(data)  # type: ignore[misc]  # gevent refuses a body here
            return
        self.headers_sent = True
        self.finalize_headers()  # type: ignore[attr-defined]
        head = bytearray(b"HTTP/1.1 ")
        head += self.status  # type: ignore[attr-defined]
        head += b"\r\n"
        for name, value in self.response_headers:  # type: ignore[attr-defined]
            head += name
            head += b": "
            head += value
            head += b"\r\n"
        head += b"\r\n"
        if self.response_use_chunked:  # type: ignore[attr-defined]
            self._send_response_bytes(head)
            super().write(data)  # type: ignore[misc]  # the head is out: framed as a chunk
            return
        head += data
        self._send_response_bytes(head)

    def _send_response_bytes(self, data: bytearray) -> None:
        """Send and count as gevent does (a failed send is recorded for the access log)."""
        try:
            sent = self.socket.send(data)  # type: ignore[attr-defined]
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])  # type: ignore[attr-defined]
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:  # type: ignore[attr-defined]
                self.code = -self.code  # type: ignore[attr-defined]
            raise
        self.response_length += len(data)  # type: ignore[attr-defined]


# Measured by loadtest/bench_serving.py; one that does not pay beyond noise is removed, not kept.
OPTIMISATIONS: dict[str, type] = {
    "header_reader": HeaderReader,
    "one_write": OneWrite,
}


def client_error_response(status: int, code: str, message: str) -> bytes:
    """A whole HTTP response carrying the contract's JSON error, closing the connection."""
    import orjson

    from common.errors import APIError, status_line

    body = orjson.dumps(APIError(message, code=code).body())
    head = (
        f"HTTP/1.1 {status_line(status)}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


_NOT_HTTP = (
    "; send an HTTP/1.1 request line (METHOD /path HTTP/1.1), 'Name: value' header lines, "
    "and at most one Content-Length, a non-negative number"
)


def unread_bytes(sock: Any) -> int:
    """Bytes the client has sent on ``sock`` that nobody has read yet (0 if unknown)."""
    import fcntl
    import struct
    import termios

    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])
    except (AttributeError, OSError, ValueError):
        return 0


class IdleConnections:
    """The connections of one worker that wait for a next request, to end them at shutdown.

    A kept-alive idle connection (a client's pool always holds some) never ends by itself, so
    gunicorn's graceful shutdown would wait the whole ``graceful_timeout`` for it.
    """

    def __init__(self) -> None:
        self.waiting: dict[Any, Any] = {}  # handler -> its greenlet, blocked reading a request line
        self.closing = False

    def close(self) -> None:
        """From now on end every connection that waits with nothing received.

        A waiting greenlet is stopped, from the event loop, where it waits, before it has read a
        byte of a next request: one whose first bytes are already here is served, and a request
        sent after this point finds the connection closed, unanswered (safe to send again), as
        with any server that ends idle keep-alive connections.
        """
        import gevent

        self.closing = True
        loop = gevent.get_hub().loop
        for handler in list(self.waiting):
            loop.run_callback(self._end_if_idle, handler)

    def _end_if_idle(self, handler: Any) -> None:
        import gevent

        glet = self.waiting.get(handler)
        if glet is not None and not unread_bytes(handler.socket):
            glet.throw(gevent.GreenletExit)


class ServingHandler(PyWSGIHandler):  # type: ignore[misc]
    """gunicorn's gevent handler with JSON errors for invalid HTTP, a strict chunked-body reader
    and idle-connection closing."""

    idle_connections = IdleConnections()  # the worker gives each handler class its own
    served = False  # a connection is idle only between requests, never before its first
    client_error = ""

    def read_requestline(self) -> str:
        if not self.served:  # accepted, so its request is coming: serve it (as gunicorn does)
            self.served = True
            return super().read_requestline()  # type: ignore[no-any-return]
        idle = self.idle_connections
        if idle.closing and not unread_bytes(self.socket):
            return ""  # ends the connection: nothing of a next request has arrived
        import gevent

        idle.waiting[self] = gevent.getcurrent()
        try:
            return super().read_requestline()  # type: ignore[no-any-return]
        finally:
            idle.waiting.pop(self, None)

    def read_request(self, raw_requestline: str) -> bool:
        try:
            return super().read_request(raw_requestline)  # type: ignore[no-any-return]
        except Exception as ex:  # gevent answers every one with 400; say why in the JSON error
            self.client_error = str(ex) or type(ex).__name__
            raise

    def get_environ(self) -> dict[str, Any]:
        """gevent's environ, a chunked body read by the strict :class:`ChunkedInput`."""
        env: dict[str, Any] = super().get_environ()
        given = self.wsgi_input
        if given.chunked_input:
            self.wsgi_input = ChunkedInput(self.rfile, None, socket=given.socket, chunked_input=True)
            if env["wsgi.input"] is given:  # not an upgraded connection, which reads rfile itself
                env["wsgi.input"] = self.wsgi_input
        return env

    def handle_one_request(self) -> Any:
        result = super().handle_one_request()
        if not isinstance(result, tuple):  # served (True) or the connection ends (None)
            return result
        if result[0] == "414":
            from gevent.pywsgi import MAX_REQUEST_LINE

            message = f"the request line is over {MAX_REQUEST_LINE} bytes; send long inputs in the request body"
            return "414", client_error_response(414, "uri_too_long", message)
        reason = f": {self.client_error[:200]}" if self.client_error else ""
        message = f"the request is not valid HTTP{reason}{_NOT_HTTP}"
        return "400", client_error_response(400, "bad_request", message)


def handler_class(
    optimisations: Collection[str], idle_connections: IdleConnections | None = None
) -> type:
    """:class:`ServingHandler` with the named optimisations in front (an unknown name is an error)."""
    unknown = sorted(set(optimisations) - set(OPTIMISATIONS))
    if unknown:
        raise ValueError(f"unknown optimisations {unknown}; known: {', '.join(OPTIMISATIONS)}")
    mixins = tuple(cls for name, cls in OPTIMISATIONS.items() if name in optimisations)
    attrs = {"idle_connections": idle_connections or IdleConnections(), "__module__": __name__}
    return type("ServingHandler", (*mixins, ServingHandler), attrs)
