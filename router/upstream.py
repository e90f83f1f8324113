"""Forwarding to one model service over pooled keep-alive connections (``http.client``).

A pool per upstream keeps idle connections (LIFO, so warm ones are reused). Failures are sorted
by whether the request could have reached the upstream:

    UpstreamError
    ├── Unreachable   refused, reset before a response, or connect timeout: safe to retry elsewhere
    └── Timeout       no response within the request's budget
"""

from __future__ import annotations

import http.client
import socket
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


class UpstreamPool:
    """Keep-alive connections to one model service, shared by the router's threads."""

    def __init__(self, label: str, base_url: str, connect_timeout_s: float, max_idle: int = 32) -> None:
        parts = urlsplit(base_url)
        self.label = label
        self.base_url = base_url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=min(self.connect_timeout_s, timeout))
        try:
            conn.connect()
        except ConnectionRefusedError as exc:
            raise Unreachable("refused", f"{self.label} refused the connection: {exc}") from None
        except (TimeoutError, socket.timeout):
            raise Unreachable("connect_timeout", f"{self.label} did not accept within "
                              f"{min(self.connect_timeout_s, timeout):.2f} s") from None
        except OSError as exc:
            raise Unreachable("connect_error", f"cannot connect to {self.label}: {exc}") from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _checkout(self) -> http.client.HTTPConnection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def request(
        self, method: str, path: str, body: bytes, headers: list[tuple[str, str]], deadline: float
    ) -> UpstreamResponse:
        """Send one request, reusing a pooled connection; a stale pooled one is retried fresh."""
        conn = self._checkout()
        if conn is not None:
            try:
                return self._exchange(conn, method, path, body, headers, deadline)
            except Unreachable:
                pass  # the pooled connection had been closed by the upstream; use a fresh one
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"no time left in the budget to reach {self.label}")
        return self._exchange(self._new(remaining), method, path, body, headers, deadline)

    def _exchange(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: bytes,
        headers: list[tuple[str, str]], deadline: float,
    ) -> UpstreamResponse:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            conn.close()
            raise Timeout(f"no time left in the budget to reach {self.label}")
        try:
            conn.sock.settimeout(remaining)
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            payload = resp.read()
        except (TimeoutError, socket.timeout):
            conn.close()
            raise Timeout(f"{self.label} did not answer within the budget") from None
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine) as exc:
            conn.close()
            raise Unreachable("reset", f"{self.label} dropped the connection: {exc!r}") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Unreachable("error", f"{self.label} failed: {exc!r}") from None
        if resp.will_close:
            conn.close()
        else:
            self._checkin(conn)
        return UpstreamResponse(resp.status, resp.getheaders(), payload)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
