"""Forwarding to one model service over pooled keep-alive HTTP/1.1 connections.

A pool per upstream keeps idle connections (LIFO, so warm ones are reused). Failures are sorted
by whether the request could have reached the upstream:

    UpstreamError
    ├── Unreachable   refused, reset before a response, or connect timeout: safe to retry elsewhere
    └── Timeout       no response within the request's budget
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

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
    headers = list(headers)
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    drop = _NOT_FORWARDED | named
    return [(n, v) for n, v in headers if n.lower() not in drop and not n.lower().startswith("proxy-")]


class ProtocolError(Exception):
    """The upstream's response is not HTTP/1.1 we can read."""


class Connection:
    """One keep-alive HTTP/1.1 connection to a model service.

    A small client for a known peer: the hot path of the router spends most of its CPU in
    ``http.client``'s generic header parsing, which this avoids.
    """

    def __init__(self, sock: socket.socket, host_header: bytes) -> None:
        self.sock = sock
        self.host_header = host_header
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("budget spent")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("connection closed by the upstream")
        return chunk

    def exchange(self, head: bytes, body: bytes, deadline: float) -> tuple[UpstreamResponse, bool]:
        """Send one request; returns the response and whether the connection can be reused."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("budget spent")
        self.sock.settimeout(remaining)
        self.sock.sendall(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.sock.sendall(body)
        buf = self.buffer
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEADER_BYTES:
                    raise ProtocolError("response headers too large")
                buf += self._recv(deadline)
                continue
            lines = buf[:end].decode("latin-1").split("\r\n")
            buf = buf[end + 4:]
            version, _, rest = lines[0].partition(" ")
            try:
                status = int(rest[:3])
            except ValueError:
                raise ProtocolError(f"bad status line {lines[0]!r}") from None
            if status == 101:
                raise ProtocolError("the upstream switched protocols; only HTTP/1.1 is spoken here")
            if not 100 <= status < 200:
                break
            # An interim response (100 Continue to a forwarded Expect, 103 Early Hints): the
            # final one follows on the same connection; returning this one would hand the next
            # request on the connection the previous request's answer.
        headers: list[tuple[str, str]] = []
        length = -1
        chunked = False
        close = version != "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            headers.append((name, value))
            lname = name.lower()
            if lname == "content-length":
                length = int(value)
            elif lname == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif lname == "connection":
                tokens = value.lower()
                close = "close" in tokens or (close and "keep-alive" not in tokens)
        if status in (204, 304):
            length = 0
        if chunked:
            payload, buf = self._read_chunked(buf, deadline)
        elif length >= 0:
            while len(buf) < length:
                buf += self._recv(deadline)
            payload, buf = buf[:length], buf[length:]
        else:
            close = True
            while True:
                try:
                    buf += self._recv(deadline)
                except ConnectionResetError:
                    break
            payload, buf = buf, b""
        self.buffer = buf
        return UpstreamResponse(status, headers, payload), not close

    def _read_chunked(self, buf: bytes, deadline: float) -> tuple[bytes, bytes]:
        parts = []
        while True:
            while b"\r\n" not in buf:
                buf += self._recv(deadline)
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                while b"\r\n\r\n" not in b"\r\n" + buf:
                    buf += self._recv(deadline)
                trailer_end = (b"\r\n" + buf).index(b"\r\n\r\n")
                return b"".join(parts), buf[trailer_end + 2:]
            while len(buf) < size + 2:
                buf += self._recv(deadline)
            parts.append(buf[:size])
            buf = buf[size + 2:]


_MAX_HEADER_BYTES = 64 * 1024


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
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise Unreachable("tls_error", f"TLS with {self.label} failed: {exc}") from None
        return Connection(sock, self.host_header)

    def _checkout(self) -> Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _checkin(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def request(
        self, method: str, path: str, body: bytes, headers: list[tuple[str, str]], deadline: float
    ) -> UpstreamResponse:
        """Send one request, reusing a pooled connection; a stale pooled one is retried fresh."""
        head = "".join(
            [f"{method} {path} HTTP/1.1\r\nHost: {self.host_header.decode()}\r\n"]
            + [f"{name}: {value}\r\n" for name, value in headers]
            + [f"Content-Length: {len(body)}\r\n\r\n"]
        ).encode("latin-1")
        conn = self._checkout()
        if conn is not None:
            try:
                return self._exchange(conn, head, body, deadline)
            except Unreachable:
                pass  # the pooled connection had been closed by the upstream; use a fresh one
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"no time left in the budget to reach {self.label}")
        return self._exchange(self._new(remaining), head, body, deadline)

    def _exchange(self, conn: Connection, head: bytes, body: bytes, deadline: float) -> UpstreamResponse:
        try:
            resp, reusable = conn.exchange(head, body, deadline)
        except (TimeoutError, socket.timeout):
            conn.close()
            raise Timeout(f"{self.label} did not answer within the budget") from None
        except ConnectionError as exc:
            conn.close()
            raise Unreachable("reset", f"{self.label} dropped the connection: {exc!r}") from None
        except (OSError, ProtocolError, ValueError) as exc:
            conn.close()
            raise Unreachable("error", f"{self.label} failed: {exc!r}") from None
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
