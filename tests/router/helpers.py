"""Tools for router tests: a cheap keep-alive client, fake upstreams, metrics and admin calls.

The router is always a real process; these helpers only talk to it over HTTP, or stand in for a
model service that misbehaves in one precise way (slow, failing, dropping the connection).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry
from sklearn.datasets import load_breast_cancer

from tests.servers import wait_until

ADMIN_TOKEN = "admin-secret"  # what tests.servers.router configures unless told otherwise
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Content-Type": "application/json"}

ROW = load_breast_cancer().data[0].tolist()
PREDICT_BODY = json.dumps({"instances": [ROW]}).encode()


@dataclass(frozen=True)
class Answer:
    """One response as the client saw it; status 0 means the client got no response at all."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""
    error: str = ""
    sent_at: float = 0.0  # time.monotonic() when the request was sent

    @property
    def version(self) -> str | None:
        return self.headers.get("x-model-version")

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP/1.1 connection: cheaper per call than requests, for many calls."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Answer:
        """Send one request; a failure is returned as an Answer with status 0, never retried."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        sent_at = time.monotonic()
        try:
            self.conn.request(method, path, body, dict(headers or {}))
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(0, error=repr(exc), sent_at=sent_at)
        if resp.will_close:
            self.close()
        headers_out = {name.lower(): value for name, value in resp.getheaders()}
        return Answer(resp.status, headers_out, payload, sent_at=sent_at)

    def predict(self, headers: Mapping[str, str] | None = None,
                body: bytes = PREDICT_BODY) -> Answer:
        return self.request("POST", "/predict", body, {**JSON, **(headers or {})})

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def post_many(url: str, headers: Sequence[Mapping[str, str]], threads: int = 4,
              body: bytes = PREDICT_BODY, timeout: float = 10.0) -> list[Answer]:
    """POST /predict once per entry of ``headers``, from ``threads`` keep-alive connections."""
    answers: list[Answer | None] = [None] * len(headers)

    def work(first: int) -> None:
        client = Client(url, timeout)
        try:
            for i in range(first, len(headers), threads):
                answers[i] = client.predict(headers[i], body)
        finally:
            client.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return [a for a in answers if a is not None]


def predict(url: str, headers: Mapping[str, str] | None = None, body: bytes = PREDICT_BODY,
            timeout: float = 10.0) -> Answer:
    """One POST /predict on a fresh connection."""
    client = Client(url, timeout)
    try:
        return client.predict(headers, body)
    finally:
        client.close()


def versions(answers: Iterable[Answer]) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for answer in answers:
        counts[answer.version] = counts.get(answer.version, 0) + 1
    return counts


def assert_answered_by(answers: Sequence[Answer], version: str) -> None:
    """Every answer is a 200 from ``version``, by header and by the model's own body."""
    assert answers
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} failed, e.g. {failed[0]}"
    assert versions(answers) == {version: len(answers)}
    assert {a.json()["model_version"] for a in answers} == {version}


def error_of(answer: Answer | requests.Response) -> dict[str, Any]:
    """The JSON error object of the contract, checked for shape."""
    if isinstance(answer, requests.Response):
        content_type, doc = answer.headers.get("Content-Type", ""), answer.json()
    else:
        content_type, doc = answer.headers.get("content-type", ""), answer.json()
    assert content_type.startswith("application/json")
    assert set(doc) == {"error"}
    assert isinstance(doc["error"]["code"], str) and doc["error"]["code"]
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]  # type: ignore[no-any-return]


# -- metrics -----------------------------------------------------------------------------------


def samples(url: str) -> list[Any]:
    """Every sample of the router's /metrics, parsed as Prometheus text (a parse error fails)."""
    resp = requests.get(url + "/metrics", timeout=5)
    assert resp.status_code == 200
    return [s for family in text_string_to_metric_families(resp.text) for s in family.samples]


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples(url)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# -- admin API ---------------------------------------------------------------------------------


def admin(method: str, url: str, path: str, token: str | None = ADMIN_TOKEN,
          **kwargs: Any) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, url + path, headers=headers, timeout=10, **kwargs)


def state(url: str) -> dict[str, Any]:
    resp = admin("GET", url, "/admin/state")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def events(url: str) -> list[dict[str, Any]]:
    resp = admin("GET", url, "/admin/events", params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    return resp.json()["events"]  # type: ignore[no-any-return]


def change(url: str, **fields: Any) -> dict[str, Any]:
    """PATCH /admin/state, expecting it to be accepted; returns the new state."""
    resp = admin("PATCH", url, "/admin/state", json=fields)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def put_state(url: str, strategy: str, **fields: Any) -> dict[str, Any]:
    """Set the whole routing state: ``strategy``, v1 stable, v2 candidate, nothing to the
    candidate, unless ``fields`` say otherwise."""
    return change(url, **{"strategy": strategy, "stable": "v1", "candidate": "v2",
                          "canary_weight": 0, "shadow_percent": 0, **fields})


def transition(url: str, action: str, **body: Any) -> dict[str, Any]:
    """POST /admin/promote or /admin/rollback, expecting it to be accepted."""
    resp = admin("POST", url, f"/admin/{action}", json=body or None)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


# -- fake upstreams ----------------------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # A handler waiting for the next request on a router's idle keep-alive connection must
    # not hold up stop().
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client (the router) giving up on a slow answer is expected here


class FakeUpstream:
    """A stand-in model service on an ephemeral port that misbehaves in one chosen way.

    ``POST /predict`` is answered after ``delay_s`` (cut short by ``stop``) with ``status`` and a
    model-shaped JSON body naming ``label``, plus ``response_headers``; with ``drop_connection``
    the socket is closed without any answer. ``framing`` says how the body's end is marked:
    ``"length"`` (Content-Length), ``"chunked"``, or ``"close"`` (the connection closes after
    it). ``GET /ready`` and ``/health`` answer 200. Every request's headers are recorded as
    received, in order, duplicates kept (``received``).
    Built on ``http.server`` rather than werkzeug for raw header access and cheap keep-alive.
    """

    def __init__(self, label: str, *, status: int = 200, delay_s: float = 0.0,
                 drop_connection: bool = False, framing: str = "length",
                 response_headers: Sequence[tuple[str, str]] = ()) -> None:
        self.label = label
        self.status = status
        self.delay_s = delay_s
        self.drop_connection = drop_connection
        self.framing = framing
        self.response_headers = list(response_headers)
        self.received: list[list[tuple[str, str]]] = []
        self.released = threading.Event()
        if status == 200:
            doc: dict[str, Any] = {"predictions": [0], "probabilities": [[0.9, 0.1]],
                                   "model_version": label}
        else:
            doc = {"error": {"code": "injected_fault", "message": f"{label} failed on purpose"}}
        self.body = json.dumps(doc).encode()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, extra: Sequence[tuple[str, str]] = (),
                        framing: str = "length") -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if framing == "length":
                    self.send_header("Content-Length", str(len(body)))
                elif framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                for name, value in extra:
                    self.send_header(name, value)
                self.end_headers()
                if framing != "chunked":
                    self.wfile.write(body)
                    return
                for i in range(0, len(body), 7):  # small chunks, each its own write
                    piece = body[i:i + 7]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def do_GET(self) -> None:
                if self.path in ("/ready", "/health"):
                    self._answer(200, b'{"status": "ready"}')
                else:
                    self._answer(404, b'{"error": {"code": "not_found", "message": "no"}}')

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.received.append(list(self.headers.items()))
                if fake.delay_s:
                    fake.released.wait(fake.delay_s)
                if fake.drop_connection:
                    self.close_connection = True
                    return
                self._answer(fake.status, fake.body, fake.response_headers, fake.framing)

        return Handler

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- processes ---------------------------------------------------------------------------------


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a gunicorn master and its workers at once, as a crashed host would lose them."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            children.append(int(stat.parent.name))
    for victim in [pid, *children]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [pid, *children]


def remove_runtime_dirs(pids: Iterable[int]) -> None:
    """Delete the runtime folders of killed servers, which never got to remove them themselves."""
    temp = Path(tempfile.gettempdir())
    for pid in pids:
        for metrics_file in temp.glob(f"model-router-*/prometheus/*_{pid}.db"):
            shutil.rmtree(metrics_file.parent.parent, ignore_errors=True)


def refuses_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


class RedisProcess:
    """A private redis-server without persistence on a fixed port: kill it, start it again empty."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.2,
                             retry=Retry(NoBackoff(), 0))

        def answers() -> bool:
            assert self.process is not None and self.process.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        try:
            wait_until(answers, timeout=10)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
