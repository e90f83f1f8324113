"""Raw HTTP/1.1 over sockets for the serving tests: exchanges, a response reader, a recording
upstream, and the reference parsers (h11, and llhttp through httptools)."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import h11
import httptools

SENTINEL = b"GET /health HTTP/1.1\r\nHost: sentinel\r\n\r\n"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"

    def is_json_error(self) -> bool:
        """The contract's error shape: ``{"error": {"code": ..., "message": ...}}``."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return False
        try:
            error = self.json()["error"]
        except (ValueError, KeyError, TypeError):
            return False
        return isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


@dataclass
class Exchange:
    """What one connection brought back: the responses in order, and how it ended."""

    responses: list[Response] = field(default_factory=list)
    timed_out: bool = False
    garbage: bytes = b""  # bytes after the last response that are not a response


def _read_responses(data: bytes) -> tuple[list[Response], bytes]:
    out = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0 or not data.startswith(b"HTTP/1."):
            break
        lines = data[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        rest = data[end + 4:]
        if "content-length" in headers:
            length = int(headers["content-length"])
            if len(rest) < length:
                break
            body, data = rest[:length], rest[length:]
        else:  # read to the end of the connection
            body, data = rest, b""
        out.append(Response(int(lines[0].split()[1]), headers, body))
    return out, data


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> Exchange:
    """Send ``raw`` on a new connection, end our side, read everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before taking everything; read what it said
        data, timed_out = b"", False
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            timed_out = True
        except OSError:
            pass
    responses, garbage = _read_responses(data)
    return Exchange(responses, timed_out, garbage)


# -- the reference parsers ----------------------------------------------------------------------

@dataclass(frozen=True)
class Parsed:
    """A reference parser's reading of a request followed by SENTINEL: the first message's body,
    and whether the bytes after it are exactly the sentinel request (None: refused)."""

    body: bytes | None
    then_sentinel: bool = False


def parse_h11(raw: bytes) -> Parsed:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw + SENTINEL)
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return Parsed(None)
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Parsed(body, conn.trailing_data[0] == SENTINEL)
    except h11.RemoteProtocolError:
        return Parsed(None)


class _Messages:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.url = self.body = b""

    def on_message_begin(self) -> None:
        self.url = self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.messages.append((self.url, self.body))


def parse_llhttp(raw: bytes) -> Parsed:
    seen = _Messages()
    try:
        httptools.HttpRequestParser(seen).feed_data(raw + SENTINEL)
    except httptools.HttpParserError:
        if not seen.messages:
            return Parsed(None)
    if not seen.messages:
        return Parsed(None)
    return Parsed(seen.messages[0][1], seen.messages[1:2] == [(b"/health", b"")])


# -- a recording upstream -----------------------------------------------------------------------

class EchoUpstream:
    """A model-service stand-in on a raw socket: answers ``POST /predict`` with the request's
    head and body as it received them (``{"head": ..., "body": hex}``), ``GET`` with 200."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buf) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    body, buf = buf[:length], buf[length:]
                    if head.startswith(b"GET "):
                        doc: dict[str, Any] = {"status": "ready", "version": "echo"}
                    else:
                        doc = {"head": head.decode("latin-1"), "body": body.hex()}
                    payload = json.dumps(doc).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"X-Model-Version: echo\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(payload), payload))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
