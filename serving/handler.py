"""Two shortcuts for gevent's WSGI handler on the hot path of both services.

Request headers without the ``email`` package: gevent's ``pywsgi`` reads request headers with ``http.client.parse_headers``, which runs the
``email`` package's feed parser: on a small request that is about a sixth of a worker's time.
:class:`RequestHeaders` reads the same lines into a dict and offers the few methods the handler
calls (``get``, ``getheader``, ``typeheader``, ``headers``, ``items``, ``del``, ``status``), with the same
limits as ``http.client`` (65,536 bytes per line, 100 headers); a line that is not
``name: value`` ends the request with 400 instead of being guessed at.

One send per small response: gevent writes the status line and headers, then the body, in two
system calls and two TCP segments, so the peer (the router's upstream client, or a client) often
wakes twice per response. :class:`OneWriteMixin` sends them together when the body is short.

No access-log record is built when the access log is off (gunicorn's handler builds one for
every response and then discards it), and the ``Date`` header is formatted once per second
rather than once per response.

Requests that are not valid HTTP (a malformed request line or header, a bad Content-Length, a
request line over 8 KiB) get the product's JSON error shape from :class:`JSONClientErrorsMixin`,
not gevent's empty-bodied 400 and 414.

All are installed by ``serving.gunicorn_conf`` on the gevent handler class.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Callable
from typing import Any

MAX_LINE = 65536
_format_date_time: Callable[[float], bytes]
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


ONE_WRITE_MAX = 64 * 1024


class OneWriteMixin:
    """For a gevent ``WSGIHandler`` subclass: head and a short first body chunk in one send."""

    def _write_with_headers(self, data: bytes) -> None:
        self.headers_sent = True
        self.finalize_headers()  # type: ignore[attr-defined]
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status  # type: ignore[attr-defined]
        towrite += b"\r\n"
        for header, value in self.response_headers:  # type: ignore[attr-defined]
            towrite += header
            towrite += b": "
            towrite += value
            towrite += b"\r\n"
        towrite += b"\r\n"
        if data and not self.response_use_chunked and len(data) <= ONE_WRITE_MAX:  # type: ignore[attr-defined]
            towrite += data
            self._sendall(towrite)  # type: ignore[attr-defined]
            return
        self._sendall(towrite)  # type: ignore[attr-defined]
        self._write(data)  # type: ignore[attr-defined]


class QuietMixin:
    """For gunicorn's gevent handler: skip building access-log records nobody will write."""

    def log_request(self) -> None:
        enabled = getattr(self.server.log, "access_log_enabled", True)  # type: ignore[attr-defined]
        if callable(enabled):  # a property in current gunicorn; allow a method too
            enabled = enabled()
        if enabled:
            super().log_request()  # type: ignore[misc]


_date_cache: tuple[int, bytes] = (0, b"")


def cached_date(timestamp: float) -> bytes:
    """gevent's ``format_date_time``, computed once per second."""
    global _date_cache
    second = int(timestamp)
    if _date_cache[0] != second:
        _date_cache = (second, _format_date_time(second))
    return _date_cache[1]


def install_cached_date() -> None:
    """Make gevent's handler format its Date header through :func:`cached_date`."""
    global _format_date_time
    from gevent import pywsgi

    if pywsgi.format_date_time is not cached_date:
        _format_date_time = pywsgi.format_date_time
        pywsgi.format_date_time = cached_date


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


class JSONClientErrorsMixin:
    """For a gevent ``WSGIHandler`` subclass: JSON errors for requests that are not valid HTTP."""

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        super()._handle_client_error(ex)  # type: ignore[misc]  # logs it
        reason = getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__
        message = f"the request is not valid HTTP: {reason[:200]}{_NOT_HTTP}"
        return "400", client_error_response(400, "bad_request", message)

    def handle_one_request(self) -> Any:
        result = super().handle_one_request()  # type: ignore[misc]
        if not isinstance(result, tuple):  # served (True) or the connection ends (None)
            return result
        from gevent import pywsgi

        if result[1] == pywsgi._REQUEST_TOO_LONG_RESPONSE:
            message = (
                f"the request line is over {pywsgi.MAX_REQUEST_LINE} bytes; "
                "send long inputs in the request body"
            )
            return "414", client_error_response(414, "uri_too_long", message)
        if result[1] == pywsgi._BAD_REQUEST_RESPONSE:
            return "400", client_error_response(400, "bad_request", "the request is not valid HTTP" + _NOT_HTTP)
        return result
