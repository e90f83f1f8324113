"""``python -m model_service serve``: where it listens, and how it stops."""

from __future__ import annotations

import http.client
import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from serving.process import bind_address
from model_service.__main__ import main
from tests.model_service.conftest import rows_of
from tests.servers import ServerProcess, model_service, wait_until


@pytest.mark.parametrize(
    "bind, port, env_port, expected",
    [
        (None, None, None, "127.0.0.1:8001"),
        (None, 9000, None, "127.0.0.1:9000"),
        (None, None, "5123", "0.0.0.0:5123"),
        (None, 9000, "5123", "127.0.0.1:9000"),
        ("unix:/run/model.sock", 9000, "5123", "unix:/run/model.sock"),
        ("fd://3", None, None, "fd://3"),
    ],
    ids=["default", "--port", "$PORT", "--port beats $PORT", "--bind beats both", "fd"],
)
def test_bind_address_precedence(
    monkeypatch: pytest.MonkeyPatch,
    bind: str | None,
    port: int | None,
    env_port: str | None,
    expected: str,
) -> None:
    if env_port is None:
        monkeypatch.delenv("PORT", raising=False)
    else:
        monkeypatch.setenv("PORT", env_port)
    assert bind_address(bind, port, 8001) == expected


@pytest.mark.parametrize(
    "argv, env_port, expected",
    [
        (["--port", "9100"], "5123", "127.0.0.1:9100"),
        ([], "5123", "0.0.0.0:5123"),
        ([], None, "127.0.0.1:8001"),
    ],
)
def test_serve_command_passes_the_address_and_version(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env_port: str | None, expected: str
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr("serving.process.exec_server", lambda *args: calls.append(args))
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    if env_port is None:
        monkeypatch.delenv("PORT", raising=False)
    else:
        monkeypatch.setenv("PORT", env_port)
    main(["serve", "--version", "v2", *argv])
    assert calls == [("model_service.wsgi:app", expected, None)]

    assert os.environ["MODEL_VERSION"] == "v2"


def _accepted_by_a_worker(server: ServerProcess, client_port: int) -> bool:
    for worker in psutil.Process(server.proc.pid).children():
        for conn in worker.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == client_port and conn.laddr.port == server.port:
                return True
    return False


def test_sigterm_finishes_in_flight_work_exits_0_and_cleans_up(
    artifacts: Path, log_dir: Path, tmp_path: Path, dataset: Any
) -> None:
    """What a restart looks like behind the router: pooled idle connections, one slow request."""
    server = model_service(
        "v1", artifacts, log_dir, TMPDIR=str(tmp_path), WEB_CONCURRENCY="2", FAULT_LATENCY_MS="800"
    )
    body = json.dumps({"instances": rows_of(dataset, 1).tolist()})
    idle = [requests.Session() for _ in range(4)]
    slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        server.wait_ready(timeout=90)
        for session in idle:  # each keeps its connection open afterwards, like a client pool
            assert session.get(server.url + "/health", timeout=5).status_code == 200
        (runtime,) = [p for p in tmp_path.iterdir() if p.name.startswith("model-router-")]
        assert (runtime / "prometheus").is_dir()

        slow.request("POST", "/predict", body, {"Content-Type": "application/json"})
        client_port = slow.sock.getsockname()[1]
        wait_until(lambda: _accepted_by_a_worker(server, client_port), timeout=30)
        server.signal(signal.SIGTERM)
        answer = slow.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read())["model_version"] == "v1"
        # well under graceful_timeout (25 s): idle connections must not hold the shutdown
        assert server.proc.wait(timeout=15) == 0
    finally:
        slow.close()
        server.stop()
        for session in idle:
            session.close()
    assert not runtime.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/health", timeout=2)
