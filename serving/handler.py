"""The gevent WSGI handler both services run on, at gevent's ``handler_class`` seam.

:class:`ServingHandler` is gunicorn's gevent handler plus what the product needs of its server:
requests that are not valid HTTP get the contract's JSON error (gevent answers an empty 400 or
414), and at shutdown a connection idle between requests is ended (see ``serving.worker``).

The optimisation, a mixin the worker puts in front of it unless switched off
(``SERVING_OPTIMISATIONS``, see ``serving.options``):

- ``header_reader``: request headers read by :class:`RequestHeaders` instead of
  ``http.client.parse_headers``, which runs the ``email`` package's feed parser (about a sixth of
  a worker's time on a small request). Same limits as ``http.client`` (65,536 bytes per line, 100
  headers); a line that is not ``name: value`` ends the request with 400 instead of being guessed at.

Every name of gevent or gunicorn used here that is not documented API is listed in
``serving.private``, with a test that fails when it changes.

    >>> from serving.handler import RequestHeaders, handler_class
    >>> handler_class(frozenset({"header_reader"})).MessageClass is RequestHeaders
    True
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from gunicorn.workers.ggevent import PyWSGIHandler

MAX_LINE = 65536
MAX_HEADERS = 100
_END = (b"\r\n", b"\n", b"")


class RequestHeaders:
    """The header block of one request, in arrival order."""

    __slots__ = ("_items", "_first", "status")

    def __init__(self, fp: Any, *_: Any) -> None:
        self.status = ""
        items: list[list[str]] = []
        while True:
            line = fp.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.status = "Line too long"
                break
            if line in _END:
                break
            if len(items) >= MAX_HEADERS:
                self.status = "Too many headers"
                break
            text = line.decode("iso-8859-1")
            if text[:1] in " \t":  # obsolete line folding: continues the previous value
                if not items:
                    self.status = "Continuation line without a header"
                    break
                items[-1][1] += " " + text.strip()
                continue
            name, sep, value = text.partition(":")
            if not sep or not name or name != name.strip():
                self.status = "Invalid header line"
                break
            items.append([name, value.strip()])
        self._items = items
        first: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            if key not in first:
                first[key] = value
            elif key == "content-length" and first[key] != value and not self.status:
                # which one frames the body? (the ambiguity request smuggling relies on)
                self.status = "Conflicting Content-Length headers"
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


# Measured by loadtest/bench_serving.py; one that does not pay beyond noise is removed, not kept.
OPTIMISATIONS: dict[str, type] = {
    "header_reader": HeaderReader,
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
    """gunicorn's gevent handler with JSON errors for invalid HTTP and idle-connection closing."""

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
