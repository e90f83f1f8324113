"""Tools for the reliability scenarios: paced client load, processes' memory, the shared router.

    >>> with Load(router.url, threads=4, rate=25) as load:      # doctest: +SKIP
    ...     time.sleep(20)
    >>> [c for c in load.calls if c.status != 200]               # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.router.helpers import PREDICT_BODY, Answer, Client, admin
from tests.servers import ServerProcess


@dataclass(frozen=True)
class Call:
    """One client request as the client saw it; status 0: no response at all."""

    started: float  # time.monotonic() before sending
    ended: float
    status: int
    version: str | None = None  # X-Model-Version: the label that answered
    model_version: str | None = None  # the model that predicted, from the body
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Load:
    """Client threads, each on its own keep-alive connection, sending POST /predict until stopped.

    ``rate`` paces each thread to that many requests per second (None: as fast as answered).
    After a failed request a thread reconnects, pausing briefly so a refusing server is not
    hammered.
    """

    def __init__(self, url: str, threads: int = 4, rate: float | None = None,
                 headers: Mapping[str, str] | None = None, body: bytes = PREDICT_BODY,
                 timeout: float = 30.0) -> None:
        self.url = url
        self.rate = rate
        self.headers = dict(headers or {})
        self.body = body
        self.timeout = timeout
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def count(self, version: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if version is None or c.version == version)

    def _run(self) -> None:
        client = Client(self.url, timeout=self.timeout)
        period = 1 / self.rate if self.rate else 0.0
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                if period:
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        break
                    due = max(due + period, time.monotonic())  # late: no burst to catch up
                started = time.monotonic()
                answer = client.predict(self.headers, self.body)
                model_version = None
                if answer.status == 200:
                    model_version = json.loads(answer.body).get("model_version")
                call = Call(started, time.monotonic(), answer.status, answer.version, model_version,
                            answer.error)
                with self._lock:
                    self.calls.append(call)
                if answer.status == 0:
                    self._stop.wait(0.05)
        finally:
            client.close()


def post_raw(url: str, body: bytes, headers: Sequence[tuple[str, str]], chunked: bool = False,
             path: str = "/predict") -> Answer:
    """POST with exactly these headers, the body framed by Content-Length or chunked (64 KiB)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(body), 65536):
                piece = body[i:i + 65536]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        resp = conn.getresponse()
        return Answer(resp.status, {n.lower(): v for n, v in resp.getheaders()}, resp.read())
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, error=repr(exc))
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (a gunicorn master's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def workers_rss(server: ServerProcess) -> int:
    """Resident memory of a gunicorn server's worker processes together."""
    workers = children(server.proc.pid)
    assert workers, "the server has no worker processes"
    return sum(rss_bytes(pid) for pid in workers)


@dataclass
class Router:
    """A router subprocess with the admin calls the scenarios use."""

    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, method: str, path: str, expect: int | None = 200, **kwargs: Any) -> Any:
        resp = admin(method, self.url, path, **kwargs)
        if expect is not None:
            assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def state(self) -> dict[str, Any]:
        return self.call("GET", "/admin/state")  # type: ignore[no-any-return]

    def change(self, **fields: Any) -> dict[str, Any]:
        return self.call("PATCH", "/admin/state", json=fields)  # type: ignore[no-any-return]

    def events(self) -> list[dict[str, Any]]:
        events = self.call("GET", "/admin/events", params={"limit": 1000})["events"]
        return events  # type: ignore[no-any-return]

    def rollout(self) -> dict[str, Any] | None:
        return self.call("GET", "/admin/rollout")["rollout"]  # type: ignore[no-any-return]
