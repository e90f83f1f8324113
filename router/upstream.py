"""Forwarding to one model service over pooled keep-alive HTTP/1.1 connections.

A pool per upstream keeps idle connections (LIFO, so warm ones are reused). Failures are sorted
by whether the request could have reached the upstream:

    UpstreamError
    ├── Unreachable   refused, reset before a response, connect timeout, TLS failure: safe to
    │                 retry elsewhere
    ├── Timeout       no response within the request's budget
    └── BadResponse   an answer that is not HTTP/1.1 this client can delimit: not retried

An ``https://`` upstream's certificate is verified against the system's CAs, or those of the
bundle ``SSL_CERT_FILE`` names; a failure says which certificate and why.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding",
        "upgrade", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    }
)
# Never sent upstream: credentials for the router are not credentials for the model service.
_NOT_FORWARDED = HOP_BY_HOP | {"authorization", "cookie", "host", "content-length"}


class UpstreamError(Exception):
    """Forwarding failed; ``reason`` is a bounded label for metrics."""

    reason = "error"


class Unreachable(UpstreamError):
    """The request did not get a response and was not processed: retrying elsewhere is safe."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Timeout(UpstreamError):
    reason = "timeout"


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def end_to_end(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, every header that Connection names, and credentials."""
    kept = []
    named: set[str] = set()
    for name, value in headers:
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower.startswith("proxy-"):
            if lower == "connection":
                named.update(token.strip().lower() for token in value.split(","))
            continue
        kept.append((name, value))
    if named:
        return [(n, v) for n, v in kept if n.lower() not in named]
    return kept


class BadResponse(UpstreamError):
    """The upstream answered with bytes that are not an HTTP/1.1 response this client can trust.

    The request reached the upstream and may have been processed: not retried.
    """

    reason = "bad_response"


class ProtocolError(Exception):
    """The upstream's response is not HTTP/1.1 we can read."""


class _Stale(Unreachable):
    """A pooled connection the upstream had closed: nothing of a response came back."""


_BLANK_LINE = re.compile(rb"\n\r?\n")
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # not allowed in a field value (HTAB is)
_DIGITS = re.compile(r"[0-9]{1,18}")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\n]*)?[ \t]*")
_MAX_HEADER_BYTES = 64 * 1024


def _split_head(block: bytes) -> list[str]:
    """The lines of a header block (without its blank line); CRLF or a bare LF ends a line."""
    text = block.decode("latin-1")
    if text.endswith("\r"):  # the blank line's search starts at the last line's LF
        text = text[:-1]
    if text.count("\n") == text.count("\r\n"):
        return text.split("\r\n")
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


# A header block of CRLF-ended ``token:value`` lines, without folding or control bytes: what
# every well-behaved server sends, checked whole by one pass of the regex engine.
_PLAIN_FIELDS = re.compile(r"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")


def _parse_head(block: bytes) -> tuple[str, list[tuple[str, str]]]:
    """A response head (without its blank line): the status line and the header fields."""
    text = block.decode("latin-1")
    if text.endswith("\r"):  # the blank line's search starts at the last line's LF
        text = text[:-1]
    status_line, crlf, fields = text.partition("\r\n")
    if crlf and "\n" not in status_line and _PLAIN_FIELDS.fullmatch(fields + "\r\n"):
        headers = []
        for line in fields.split("\r\n"):
            name, _, value = line.partition(":")
            headers.append((name, value.strip(" \t")))
        return status_line, headers
    lines = _split_head(block)  # bare LFs, folded or malformed lines: read line by line
    return lines[0], _header_lines(lines[1:])


def _header_lines(lines: list[str]) -> list[tuple[str, str]]:
    """``name: value`` lines, obs-folded continuations joined with a space (RFC 9112 5.2)."""
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not headers:
                raise ProtocolError(f"continuation line before any header: {line!r}")
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + line.lstrip(" \t")).strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise ProtocolError(f"bad header line {line!r}")
        headers.append((name, value.strip(" \t")))
    for name, value in headers:
        if _CONTROL.search(value):
            raise ProtocolError(f"a control character in the value of {name}: {value!r}")
    return headers


def _framing(headers: list[tuple[str, str]], http10: bool) -> tuple[int | None, bool, bool]:
    """Content-Length (if given), chunked, and Connection: close; refusing every ambiguity a
    request smuggler could use."""
    length: int | None = None
    chunked = False
    close = http10
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            values = {v.strip() for v in value.split(",")}
            given = values.pop()
            if values or not _DIGITS.fullmatch(given):
                raise ProtocolError(f"bad Content-Length {value!r}")
            if length is not None and length != int(given):
                raise ProtocolError("conflicting Content-Length headers")
            length = int(given)
        elif lname == "transfer-encoding":
            if chunked or value.lower() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {value!r}; only chunked is read")
            chunked = True
        elif lname == "connection":
            if "close" in (token.strip().lower() for token in value.split(",")):
                close = True
    if chunked and length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding: the body's end is ambiguous")
    return length, chunked, close


class Connection:
    """One keep-alive HTTP/1.1 connection to a model service.

    A small client for a known peer: the hot path of the router spends most of its CPU in
    ``http.client``'s generic header parsing, which this avoids. It reads responses as strictly
    as h11 does (``tests/router/test_upstream_framing.py`` holds it to that): anything it cannot
    delimit without guessing is refused, and a connection is reused only when the response
    ended exactly where the upstream said it would.
    """

    def __init__(self, sock: socket.socket, host_header: bytes) -> None:
        self.sock = sock
        self.host_header = host_header
        self.received = False  # a byte of the response to the current request has arrived

    def close(self) -> None:
        self.sock.close()

    def idle_ok(self) -> bool:
        """False when the upstream closed this idle connection, or sent bytes nobody asked for."""
        try:
            self.sock.settimeout(0.0)
            self.sock.recv(1)
        except (BlockingIOError, ssl.SSLWantReadError, InterruptedError):
            return True
        except OSError:
            return False
        return False  # end of stream, or stray bytes: either way the connection is done

    def _recv(self, deadline: float) -> bytes:
        """The next bytes; b"" at the end of the stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("budget spent")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if chunk:
            self.received = True
        return chunk

    def _more(self, deadline: float) -> bytes:
        chunk = self._recv(deadline)
        if not chunk:
            raise ConnectionResetError("connection closed by the upstream before the response ended")
        return chunk

    def exchange(self, head: bytes, body: bytes, deadline: float,
                 bodiless: bool = False) -> tuple[UpstreamResponse, bool]:
        """Send one request; returns the response and whether the connection can be reused.

        ``bodiless``: the request was HEAD, so the response has no body whatever it says.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("budget spent")
        self.received = False
        self.sock.settimeout(remaining)
        if len(body) < 65536:
            message = head + body
            # one send() takes a small request whole; gevent's sendall() asks the socket for its
            # buffer size on every call first
            sent = self.sock.send(message)
            if sent < len(message):
                self.sock.sendall(message[sent:])
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)
        buf = b""
        while True:
            if buf[:1] == b"\n" or buf[:2] == b"\r\n":
                raise ProtocolError("a blank line where the status line belongs")
            match = _BLANK_LINE.search(buf)
            if match is None:
                if len(buf) > _MAX_HEADER_BYTES:
                    raise ProtocolError("response headers too large")
                buf += self._more(deadline)
                continue
            status_line, headers = _parse_head(buf[:match.start()])
            buf = buf[match.end():]
            status_match = _STATUS_LINE.fullmatch(status_line)
            if status_match is None:
                raise ProtocolError(f"bad status line {status_line!r}")
            status = int(status_match[2])
            length, chunked, close = _framing(headers, status_match[1] == "0")
            if status == 101:
                raise ProtocolError("the upstream switched protocols; only HTTP/1.1 is spoken here")
            if status < 100:
                raise ProtocolError(f"bad status code {status}")
            if status >= 200:
                break
            # An interim response (100 Continue to a forwarded Expect, 103 Early Hints): the
            # final one follows on the same connection; returning this one would hand the next
            # request on the connection the previous request's answer.
        if bodiless or status in (204, 304):
            payload = b""
        elif chunked:
            payload, buf = self._read_chunked(buf, deadline)
        elif length is not None:
            while len(buf) < length:
                buf += self._more(deadline)
            payload, buf = buf[:length], buf[length:]
        else:  # no length given: the body runs to the end of the stream
            close = True
            while chunk := self._recv(deadline):
                buf += chunk
            payload, buf = buf, b""
        # Bytes after the response answer no request of ours: reusing the connection would
        # hand them to the next request as its response.
        return UpstreamResponse(status, headers, payload), not close and not buf

    def _read_chunked(self, buf: bytes, deadline: float) -> tuple[bytes, bytes]:
        parts = []
        while True:
            while b"\r\n" not in buf:
                if len(buf) > _MAX_HEADER_BYTES:
                    raise ProtocolError("chunk header too long")
                buf += self._more(deadline)
            line, _, buf = buf.partition(b"\r\n")
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise ProtocolError(f"bad chunk header {line!r}")
            size = int(match[1], 16)
            if size == 0:
                break
            while len(buf) < size + 2:
                buf += self._more(deadline)
            if buf[size:size + 2] != b"\r\n":
                raise ProtocolError(f"chunk data not followed by CRLF: {buf[size:size + 2]!r}")
            parts.append(buf[:size])
            buf = buf[size + 2:]
        # The trailer section: header lines up to a blank line (or the blank line alone).
        while True:
            if buf[:1] == b"\n":
                return b"".join(parts), buf[1:]
            if buf[:2] == b"\r\n":
                return b"".join(parts), buf[2:]
            match = _BLANK_LINE.search(buf)
            if match is not None:
                break
            if len(buf) > _MAX_HEADER_BYTES:
                raise ProtocolError("trailers too large")
            buf += self._more(deadline)
        trailers = _header_lines(_split_head(buf[:match.start()]))
        for name, _ in trailers:
            if name.lower() in ("content-length", "transfer-encoding"):
                raise ProtocolError(f"{name} in the trailers")
        return b"".join(parts), buf[match.end():]


class UpstreamPool:
    """Keep-alive connections to one model service, shared by the router's workers."""

    def __init__(self, label: str, base_url: str, connect_timeout_s: float, max_idle: int = 64) -> None:
        parts = urlsplit(base_url)
        self.label = label
        self.base_url = base_url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.host_header = f"{parts.netloc}".encode("latin-1")
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # connections (and so TLS handshakes) this process made to the upstream
        self.last_error: str | None = None  # why the last new connection failed; None once one works

    def _new(self, timeout: float) -> Connection:
        limit = min(self.connect_timeout_s, timeout)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=limit)
        except ConnectionRefusedError as exc:
            raise Unreachable("refused", f"{self.label} refused the connection: {exc}") from None
        except (TimeoutError, socket.timeout):
            if limit < self.connect_timeout_s:  # the request's budget ran out first
                raise Timeout(f"{self.label} did not accept within the budget") from None
            raise Unreachable("connect_timeout", f"{self.label} did not accept within "
                              f"{limit:.2f} s") from None
        except OSError as exc:
            raise Unreachable("connect_error", f"cannot connect to {self.label}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise self._failed(Unreachable(
                    "tls_verify", f"TLS certificate verification failed for {self.base_url}: "
                    f"{str(exc.verify_message or exc.reason).rstrip('.')}; trust the server's CA with SSL_CERT_FILE "
                    "or fix the certificate")) from None
            except (TimeoutError, socket.timeout):
                sock.close()
                raise Unreachable("connect_timeout", f"{self.label} did not complete the TLS "
                                  f"handshake within {limit:.2f} s") from None
            except OSError as exc:
                sock.close()
                raise self._failed(Unreachable(
                    "tls_error", f"TLS with {self.label} ({self.base_url}) failed: {exc}")) from None
        self.opened += 1
        self.last_error = None
        return Connection(sock, self.host_header)

    def _failed(self, exc: Unreachable) -> Unreachable:
        """Remember why connecting failed, and log it when the reason is new."""
        message = str(exc)
        if message != self.last_error:
            log.warning("%s: %s", self.label, message)
        self.last_error = message
        return exc

    def _checkout(self) -> Connection | None:
        """The most recently used idle connection that is still open and quiet."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.idle_ok():
                return conn
            conn.close()

    def _checkin(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def request(
        self, method: str, path: str, body: bytes, headers: list[tuple[str, str]], deadline: float
    ) -> UpstreamResponse:
        """Send one request, reusing a pooled connection; a stale pooled one is retried fresh.

        A pooled connection is stale when the upstream closed it before any byte of the answer:
        the request was not processed, so it is sent again on a new connection.
        """
        head = "".join(
            [f"{method} {path} HTTP/1.1\r\nHost: {self.host_header.decode()}\r\n"]
            + [f"{name}: {value}\r\n" for name, value in headers]
            + [f"Content-Length: {len(body)}\r\n\r\n"]
        ).encode("latin-1")
        bodiless = method == "HEAD"
        conn = self._checkout()
        if conn is not None:
            try:
                return self._exchange(conn, head, body, deadline, bodiless)
            except _Stale:
                pass  # the upstream had closed the pooled connection; use a fresh one
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"no time left in the budget to reach {self.label}")
        try:
            return self._exchange(self._new(remaining), head, body, deadline, bodiless)
        except _Stale as exc:
            raise Unreachable(exc.reason, str(exc)) from None

    def _exchange(self, conn: Connection, head: bytes, body: bytes, deadline: float,
                  bodiless: bool) -> UpstreamResponse:
        try:
            resp, reusable = conn.exchange(head, body, deadline, bodiless)
        except (TimeoutError, socket.timeout):
            conn.close()
            raise Timeout(f"{self.label} did not answer within the budget") from None
        except ProtocolError as exc:
            conn.close()
            raise BadResponse(f"{self.label} sent a response that is not valid HTTP/1.1: "
                              f"{exc}") from None
        except OSError as exc:
            conn.close()
            if not conn.received:
                raise _Stale("reset", f"{self.label} closed the connection without answering: "
                             f"{exc!r}") from None
            raise Unreachable("reset", f"{self.label} dropped the connection in the middle of "
                              f"its answer: {exc!r}") from None
        if reusable:
            self._checkin(conn)
        else:
            conn.close()
        return resp

    def close(self) -> None:
        """Close the idle connections; one in use is closed when it comes back."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = True
        for conn in idle:
            conn.close()
