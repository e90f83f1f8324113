"""Every undocumented gevent or gunicorn name in ``serving.private`` still does what we rely on.

Each check exercises the name on a real server: gevent's WSGI server in this process (gevent
sockets on loopback, no monkey patching), or gunicorn with the product's worker class in a
subprocess. A failure here after an upgrade names the row of ``serving.private`` to re-check.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from gevent import pywsgi
from gevent import socket as gsocket
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from serving.handler import RequestHeaders, unread_bytes
from serving.private import CHECKED, NAMES
from tests.servers import ServerProcess, wait_until


@pytest.mark.parametrize("library", sorted(CHECKED))
def test_the_installed_version_is_the_checked_one(library: str) -> None:
    assert version(library) == CHECKED[library], (
        f"{library} {version(library)} is installed, serving/private.py was checked against "
        f"{CHECKED[library]}: re-check its rows for {library}, then update CHECKED"
    )


# -- gevent's handler, served in this process --------------------------------------------------


class AccessLog:
    """What gunicorn's handler hands the access log (a recording stand-in for gunicorn's Logger)."""

    access_log_enabled = True

    def __init__(self) -> None:
        self.records: list[tuple[Any, Any, Any]] = []

    def access(self, resp: Any, req_headers: Any, environ: Any, request_time: Any) -> None:
        self.records.append((resp, list(req_headers), environ))

    def write(self, *_: Any) -> None:
        pass


def exchange(app: Callable[..., Any], request: bytes, handler: type = pywsgi.WSGIHandler,
             log: Any = None) -> bytes:
    """Serve ``request`` (raw bytes) with ``handler`` on gevent's WSGI server; the raw answer."""
    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, handler_class=handler, log=log, error_log=None)
    server.start()
    try:
        with gsocket.create_connection(server.address, timeout=10) as conn:
            conn.sendall(request)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            return answer
    finally:
        server.stop(timeout=1)


def plain(body: Any = (b"hello",), headers: tuple[tuple[str, str], ...] = ()) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain"), *headers])
        return body() if callable(body) else list(body)
    return app


GET = b"GET /x?y=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


class Recording(pywsgi.WSGIHandler):
    """gevent's handler, recording its response state around the first write."""

    seen: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        before = {"headers_sent": self.headers_sent, "status": self.status,
                  "code": self.code, "headers": list(self.response_headers)}
        super().write(data)
        self.seen.append({"before": before, "headers_sent": self.headers_sent,
                          "headers": list(self.response_headers),
                          "chunked": self.response_use_chunked, "length": self.response_length})

    def finalize_headers(self) -> None:
        super().finalize_headers()
        self.seen.append({"finalized": list(self.response_headers), "chunked": self.response_use_chunked})

    def log_request(self) -> None:
        self.seen.append({"logged_length": self.response_length, "code": self.code})


def recording() -> list[dict[str, Any]]:
    """A fresh list for what :class:`Recording` sees."""
    Recording.seen = []
    return Recording.seen


def check_finalize_headers() -> None:
    seen = recording()
    exchange(plain(), GET, Recording)
    [finalized] = [s for s in seen if "finalized" in s]
    names = [name for name, _ in finalized["finalized"]]
    assert names[0] == b"Content-Type" and b"Date" in names
    assert (b"Content-Length", b"5") in finalized["finalized"] and finalized["chunked"] is False
    seen.clear()
    exchange(plain(headers=(("Date", "Tue, 01 Jan 2030 00:00:00 GMT"),)), GET, Recording)
    [finalized] = [s for s in seen if "finalized" in s]
    assert [name for name, _ in finalized["finalized"]].count(b"Date") == 1  # the application's


def check_status_and_response_headers() -> None:
    seen = recording()
    exchange(plain(headers=(("X-A", "b"),)), GET, Recording)
    before = seen[-2]["before"]
    assert before["status"] == b"200 OK"
    assert before["headers"] == [(b"Content-Type", b"text/plain"), (b"X-A", b"b")]


def check_headers_sent() -> None:
    seen = recording()
    exchange(plain((b"one", b"two")), GET, Recording)
    writes = [s for s in seen if "before" in s]
    assert [w["before"]["headers_sent"] for w in writes] == [False, True]
    assert all(w["headers_sent"] for w in writes)


def check_response_use_chunked() -> None:
    seen = recording()
    answer = exchange(plain(lambda: iter([b"abc"])), GET, Recording)  # no length known
    [finalized] = [s for s in seen if "finalized" in s]
    assert finalized["chunked"] is True and (b"Transfer-Encoding", b"chunked") in finalized["finalized"]
    assert answer.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")  # write() framed the chunk


def check_response_length_and_code() -> None:
    seen = recording()
    answer = exchange(plain(), GET, Recording)
    [logged] = [s for s in seen if "logged_length" in s]
    assert logged == {"logged_length": len(answer), "code": 200}


def check_socket() -> None:
    peers: list[Any] = []

    class Peer(pywsgi.WSGIHandler):
        def handle_one_response(self) -> None:
            peers.append((self.socket.getpeername(), unread_bytes(self.socket)))
            super().handle_one_response()

    server = pywsgi.WSGIServer(("127.0.0.1", 0), plain(), handler_class=Peer, log=None)
    server.start()
    try:
        with gsocket.create_connection(server.address, timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            while not peers:
                gsocket.wait_read(conn.fileno(), timeout=10)
            conn.recv(65536)
            assert peers == [(conn.getsockname(), 0)]
    finally:
        server.stop(timeout=1)
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"12345")
        wait_until(lambda: unread_bytes(right) == 5, timeout=5)


def check_message_class_protocol() -> None:
    received: list[tuple[Any, ...]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        received.append((environ.get("CONTENT_TYPE"), environ.get("CONTENT_LENGTH"),
                         environ.get("HTTP_X_MANY"), environ["wsgi.input"].read()))
        start_response("200 OK", [])
        return [b""]

    class Ours(pywsgi.WSGIHandler):
        MessageClass = RequestHeaders

    chunked = (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nX-Many: a\r\n"
               b"X-Many: b\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert exchange(app, chunked, Ours).startswith(b"HTTP/1.1 200")
    # the chunked body read by gevent; the repeated header joined by gevent's _headers
    assert received == [("text/plain", None, "a,b", b"abc")]
    sized = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    assert exchange(app, sized, Ours).startswith(b"HTTP/1.1 200")
    assert received[-1] == (None, "2", None, b"hi")
    malformed = b"GET / HTTP/1.1\r\nno colon\r\n\r\n"  # a status set: the request refused
    assert exchange(app, malformed, Ours).startswith(b"HTTP/1.1 400")
    assert len(received) == 2
    kept_open = b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    assert exchange(app, kept_open, Ours).count(b"HTTP/1.1 200") == 2  # Connection read by get()


def check_chunked_input() -> None:
    from serving.chunked import ChunkedInput
    from serving.handler import handler_class

    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        stream = environ["wsgi.input"]
        seen.append(type(stream))
        if environ["PATH_INFO"] == "/line":
            seen.append([stream.readline(), stream.read()])
        elif environ["PATH_INFO"] == "/read":
            seen.append(stream.read())
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    ours = handler_class(frozenset())
    head = b"POST /%s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n%s\r\n"
    body = b"3\r\na\nb\r\n2\r\ncd\r\n0\r\n\r\n"
    answer = exchange(app, head % (b"read", b"Expect: 100-continue\r\nConnection: close\r\n") + body,
                      ours, AccessLog())
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), answer
    assert seen == [ChunkedInput, b"a\nbcd"]
    answer = exchange(app, head % (b"line", b"Connection: close\r\n") + body, ours, AccessLog())
    assert answer.startswith(b"HTTP/1.1 200") and seen[-1] == [b"a\n", b"bcd"]
    # an unread body is read to its end (_discard), so the next request on the connection is served
    answer = exchange(app, head % (b"skip", b"") + body + head % (b"read", b"Connection: close\r\n")
                      + body, ours, AccessLog())
    assert answer.count(b"HTTP/1.1 200") == 2 and seen[-1] == b"a\nbcd"
    # a bad chunk found while discarding (the answer already sent): _InvalidClientInput ends
    # the connection, and what follows it is not read as a request (exchange reads to the close)
    answer = exchange(app, head % (b"skip", b"") + b"3;a\nb\r\nabc\r\n0\r\n\r\n"
                      + head % (b"read", b"") + body, ours, AccessLog())
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1, answer
    assert seen[-1] is ChunkedInput  # the second request never reached the app


def check_items_for_gunicorns_access_log() -> None:
    class Ours(PyWSGIHandler):  # type: ignore[misc]
        MessageClass = RequestHeaders

    log = AccessLog()
    exchange(plain(), b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\nConnection: close\r\n\r\n", Ours, log)
    [(resp, req_headers, _)] = log.records
    assert req_headers == [("Host", "t"), ("X-A", "b"), ("Connection", "close")]
    assert resp.status == "200 OK"


def check_gunicorn_pywsgi_handler() -> None:
    environs: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environs.append(environ)
        return plain()(environ, start_response)

    exchange(app, b"GET /a%20b?c=d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", PyWSGIHandler,
             AccessLog())
    assert environs[0]["RAW_URI"] == "/a%20b?c=d"
    assert isinstance(environs[0]["gunicorn.sock"], gsocket.socket)
    assert issubclass(PyWSGIHandler, pywsgi.WSGIHandler)


# -- the worker class under gunicorn -------------------------------------------------------------

PID_APP = """
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


def _pid(url: str) -> str:
    import requests

    return requests.get(url, headers={"Connection": "close"}, timeout=10).text


def check_worker_counts_and_restarts(tmp_path: Path) -> None:
    """wsgi, nr, max_requests, alive, log: a worker restarts after max_requests requests."""
    with _served(tmp_path, GUNICORN_MAX_REQUESTS="3", GUNICORN_MAX_REQUESTS_JITTER="0") as server:
        pids = [_pid(server.url) for _ in range(3)]
        assert len(set(pids)) == 1
        fourth = wait_until(lambda: (pid := _pid(server.url)) != pids[0] and pid, timeout=30)
        assert fourth != pids[0]
        assert "Autorestarting worker after current request." in server.log()


def check_worker_handler(tmp_path: Path) -> None:
    """wsgi_handler: the server the worker runs uses the handler the worker class gives it."""
    with _served(tmp_path) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"NOT HTTP\r\n\r\n")
            answer = conn.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 400") and b'"code":"bad_request"' in answer


def check_worker_stops_with_idle_connections(tmp_path: Path) -> None:
    """alive, run(): at SIGTERM, idle keep-alive connections are ended instead of waited for."""
    import signal

    import http.client

    with _served(tmp_path) as server:
        host, port = server.url.removeprefix("http://").split(":")
        idle = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            idle.request("GET", "/")
            answer = idle.getresponse()
            assert answer.status == 200 and answer.read()  # the whole answer: now idle
            assert idle.sock is not None  # kept alive
            server.signal(signal.SIGTERM)
            # graceful_timeout is 25 s: an exit well before it means the idle one was ended
            assert server.proc.wait(timeout=15) == 0
            assert idle.sock.recv(65536) == b""  # ended by the server, nothing sent
        finally:
            idle.close()


class _served:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        (tmp_path / "pid_app.py").write_text(PID_APP)
        self.server = ServerProcess(
            ["-m", "gunicorn", "-c", "python:serving.gunicorn_conf", "--chdir", str(tmp_path),
             "pid_app:app"],
            {"WEB_CONCURRENCY": "1", **env}, tmp_path / "gunicorn.log", ready_path="/",
        )

    def __enter__(self) -> ServerProcess:
        return self.server.wait_ready(60)

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


IN_PROCESS: dict[str, Callable[[], None]] = {
    "WSGIHandler.finalize_headers()": check_finalize_headers,
    "WSGIHandler.status, .response_headers": check_status_and_response_headers,
    "WSGIHandler.headers_sent": check_headers_sent,
    "WSGIHandler.response_use_chunked": check_response_use_chunked,
    "WSGIHandler.response_length, .code": check_response_length_and_code,
    "WSGIHandler.socket": check_socket,
    "MessageClass(rfile, 0) result: .status, get(), getheader(), typeheader, headers":
        check_message_class_protocol,
    "MessageClass result: items()": check_items_for_gunicorns_access_log,
    "Input(rfile, content_length, socket, chunked_input): _chunked_read, _send_100_continue, "
    "_chunked_input_error, _discard; _InvalidClientInput; WSGIHandler.wsgi_input": check_chunked_input,
    "workers.ggevent.PyWSGIHandler": check_gunicorn_pywsgi_handler,
}
UNDER_GUNICORN: dict[str, list[Callable[[Path], None]]] = {
    "GeventWorker.wsgi_handler": [check_worker_handler],
    "Worker.wsgi, .nr, .max_requests, .alive, .log": [
        check_worker_counts_and_restarts, check_worker_stops_with_idle_connections,
    ],
}


def test_every_listed_name_has_a_check() -> None:
    assert sorted([*IN_PROCESS, *UNDER_GUNICORN]) == sorted(row.name for row in NAMES)


@pytest.mark.parametrize("name", list(IN_PROCESS))
def test_gevent_and_gunicorn_handler_names_behave_as_relied_on(name: str) -> None:
    IN_PROCESS[name]()


@pytest.mark.parametrize(
    "check", [check for checks in UNDER_GUNICORN.values() for check in checks],
    ids=lambda check: check.__name__,
)
def test_gunicorn_worker_names_behave_as_relied_on(check: Callable[[Path], None], tmp_path: Path) -> None:
    check(tmp_path)


def test_the_worker_class_is_gunicorns_gevent_pywsgi_worker() -> None:
    from serving.worker import ServingWorker

    assert issubclass(ServingWorker, GeventPyWSGIWorker)
