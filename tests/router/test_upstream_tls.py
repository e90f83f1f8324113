"""The router reaching model services over ``https://`` with a certificate from a private CA.

gunicorn terminates TLS itself (``--certfile``/``--keyfile`` through ``GUNICORN_CMD_ARGS``, with
the gevent WSGI worker the services run in production); the router trusts the CA the way an
operator makes it, through ``SSL_CERT_FILE``. Then what an operator sees when verification fails:
an untrusted CA, a certificate for another host name.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme

from router.upstream import Unreachable, UpstreamPool
from tests.router.conftest import in_process_router, running_router
from tests.router.helpers import AUTH, JSON, PREDICT_BODY
from tests.servers import ServerProcess, model_service, wait_until

HINT = "trust the server's CA with SSL_CERT_FILE or fix the certificate"


def _https_ready(server: ServerProcess, ca_file: Path) -> ServerProcess:
    def ready() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(f"model service exited:\n{server.log()}")
        try:
            return requests.get(server.url + "/ready", verify=str(ca_file), timeout=2).ok
        except requests.RequestException:
            return False

    wait_until(ready, 60)
    return server


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def _https_service(ca: trustme.CA, folder: Path, artifacts: Path, log_dir: Path,
                   **env: str) -> ServerProcess:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    args = f"--certfile {cert_file} --keyfile {key_file} {env.pop('GUNICORN_CMD_ARGS', '')}"
    server = model_service("v1", artifacts, log_dir, WEB_CONCURRENCY="1",
                           GUNICORN_CMD_ARGS=args, **env)
    server.url = f"https://127.0.0.1:{server.port}"
    return server


@pytest.fixture(scope="module")
def https_v1(private_ca: tuple[trustme.CA, Path], artifacts: Path, log_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """v1 behind TLS, in the production worker (gevent's WSGI server)."""
    ca, ca_file = private_ca
    with _https_service(ca, tmp_path_factory.mktemp("tls"), artifacts, log_dir) as server:
        yield _https_ready(server, ca_file)


def test_the_router_verifies_the_certificate_and_serves_predictions_through_it(
        https_v1: ServerProcess, private_ca: tuple[trustme.CA, Path], log_dir: Path,
        tmp_path: Path) -> None:
    _, ca_file = private_ca
    with running_router({"v1": https_v1.url}, log_dir, f"sqlite:///{tmp_path / 's.db'}",
                        SSL_CERT_FILE=str(ca_file), WEB_CONCURRENCY="1") as router:
        ready = requests.get(router.url + "/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        for _ in range(5):
            resp = requests.post(router.url + "/predict", data=PREDICT_BODY, headers=JSON, timeout=10)
            assert resp.status_code == 200, resp.text
            assert resp.headers["X-Model-Version"] == "v1"
            assert len(resp.json()["predictions"]) == 1
        state = requests.get(router.url + "/admin/state", headers=AUTH, timeout=10).json()
        assert state["slots"]["v1"]["problem"] is None
        assert state["slots"]["v1"]["version"] == "v1"


def test_connections_to_a_tls_upstream_are_reused(
        https_v1: ServerProcess, private_ca: tuple[trustme.CA, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Many requests, a handshake or two: the pool keeps TLS connections alive between them."""
    _, ca_file = private_ca
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with in_process_router({"v1": https_v1.url}, f"sqlite:///{tmp_path / 's.db'}") as app:
        client = app.test_client()
        for _ in range(30):
            resp = client.post("/predict", data=PREDICT_BODY, headers=JSON)
            assert resp.status_code == 200, resp.get_json()
        pool: UpstreamPool = app.extensions["router"].pools["v1"]
        # the background version check may need a connection of its own while a request holds one
        assert 1 <= pool.opened <= 2


def _established(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is ``port`` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


@pytest.fixture
def short_keepalive_v1(private_ca: tuple[trustme.CA, Path], artifacts: Path, log_dir: Path,
                       tmp_path: Path) -> Iterator[ServerProcess]:
    """v1 behind TLS in gunicorn's gevent worker, which ends connections idle for 1 s."""
    ca, ca_file = private_ca
    with _https_service(ca, tmp_path, artifacts, log_dir, GUNICORN_WORKER_CLASS="gevent",
                        GUNICORN_CMD_ARGS="--keep-alive 1") as server:
        yield _https_ready(server, ca_file)


def test_the_router_survives_the_upstream_closing_idle_connections(
        short_keepalive_v1: ServerProcess, private_ca: tuple[trustme.CA, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, ca_file = private_ca
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    port = short_keepalive_v1.port
    with in_process_router({"v1": short_keepalive_v1.url}, f"sqlite:///{tmp_path / 's.db'}",
                           timeout_s=10.0) as app:
        client = app.test_client()
        pool: UpstreamPool = app.extensions["router"].pools["v1"]
        for round_ in range(3):
            assert client.post("/predict", data=PREDICT_BODY, headers=JSON).status_code == 200
            opened = pool.opened
            wait_until(lambda: _established(port) == 0, timeout=30)  # the server ended them all
            resp = client.post("/predict", data=PREDICT_BODY, headers=JSON)
            assert resp.status_code == 200, (round_, resp.get_json())
            assert pool.opened > opened  # a new connection, not an error


# -- verification failures ---------------------------------------------------------------------


class WrongNameTLSServer:
    """A TLS listener whose certificate (from the trusted CA) names another host."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("model.elsewhere.example").configure_cert(self.context)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                conn.settimeout(5)
                self.context.wrap_socket(conn, server_side=True).close()
            except OSError:
                conn.close()

    def close(self) -> None:
        self.listener.close()


def _operator_view(router: ServerProcess, slot: str) -> tuple[dict, dict, dict]:
    ready = requests.get(router.url + "/ready", timeout=10)
    assert ready.status_code == 503
    predict = requests.post(router.url + "/predict", data=PREDICT_BODY, headers=JSON, timeout=10)
    assert predict.status_code == 502
    assert predict.headers["Content-Type"] == "application/json"
    state = requests.get(router.url + "/admin/state", headers=AUTH, timeout=10)
    assert state.status_code == 200
    return ready.json(), predict.json(), state.json()["slots"][slot]


def test_an_untrusted_certificate_is_named_to_the_operator(
        https_v1: ServerProcess, log_dir: Path, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with running_router({"v1": https_v1.url}, log_dir, f"sqlite:///{tmp_path / 's.db'}",
                        ready_path="/health", SSL_CERT_FILE=str(other_ca),
                        WEB_CONCURRENCY="1") as router:
        ready, predict, slot = _operator_view(router, "v1")
        expected = f"TLS certificate verification failed for {https_v1.url}: "
        for message in (ready["error"]["message"], predict["error"]["message"], slot["problem"]):
            assert expected in message and HINT in message, message
            assert "unable to get local issuer certificate" in message, message
        assert ready["error"]["code"] == "not_ready"
        assert predict["error"]["code"] == "upstream_tls_verify_failed"
        wait_until(lambda: expected in router.log(), timeout=10)


def test_a_certificate_for_another_host_is_named_to_the_operator(
        private_ca: tuple[trustme.CA, Path], log_dir: Path, tmp_path: Path) -> None:
    ca, ca_file = private_ca
    server = WrongNameTLSServer(ca)
    try:
        with running_router({"v1": server.url}, log_dir, f"sqlite:///{tmp_path / 's.db'}",
                            ready_path="/health", SSL_CERT_FILE=str(ca_file),
                            WEB_CONCURRENCY="1") as router:
            ready, predict, slot = _operator_view(router, "v1")
            for message in (ready["error"]["message"], predict["error"]["message"], slot["problem"]):
                assert f"TLS certificate verification failed for {server.url}: " in message
                assert "IP address mismatch" in message and HINT in message, message
    finally:
        server.close()


def test_a_tls_failure_is_kept_as_the_slots_error(
        private_ca: tuple[trustme.CA, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool remembers why it could not connect (``/admin/state`` shows it for the slot);
    no connection is counted for a handshake that failed."""
    ca, ca_file = private_ca
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = WrongNameTLSServer(ca)
    pool = UpstreamPool("v1", server.url, connect_timeout_s=5.0)
    try:
        with pytest.raises(Unreachable, match="IP address mismatch") as raised:
            pool.request("GET", "/ready", b"", [], time.monotonic() + 5)
        assert raised.value.reason == "tls_verify"
        assert pool.last_error == str(raised.value)
        assert HINT in pool.last_error
        assert pool.opened == 0
    finally:
        pool.close()
        server.close()
