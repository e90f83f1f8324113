"""``python -m model_service serve``: where it listens, and how it stops."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from common.serving import bind_address
from model_service.__main__ import main
from tests.model_service.conftest import post, rows_of
from tests.servers import model_service


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
def test_bind_address_precedence(monkeypatch: pytest.MonkeyPatch, bind: str | None,
                                 port: int | None, env_port: str | None, expected: str) -> None:
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
def test_serve_command_passes_the_address_and_version(monkeypatch: pytest.MonkeyPatch,
                                                      argv: list[str], env_port: str | None,
                                                      expected: str) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr("common.serving.exec_server", lambda *args: calls.append(args))
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    if env_port is None:
        monkeypatch.delenv("PORT", raising=False)
    else:
        monkeypatch.setenv("PORT", env_port)
    main(["serve", "--version", "v2", *argv])
    assert calls == [("model_service.wsgi:app", expected, None)]

    assert os.environ["MODEL_VERSION"] == "v2"


def test_sigterm_finishes_in_flight_work_exits_0_and_cleans_up(
    artifacts: Path, log_dir: Path, tmp_path: Path, dataset: Any
) -> None:
    server = model_service("v1", artifacts, log_dir, TMPDIR=str(tmp_path), WEB_CONCURRENCY="2",
                           FAULT_LATENCY_MS="1000")
    try:
        server.wait_ready()
        assert post(server.url + "/predict", {"instances": rows_of(dataset, 1).tolist()}).ok
        (runtime,) = [p for p in tmp_path.iterdir() if p.name.startswith("model-router-")]
        assert any((runtime / "prometheus").glob("*.db"))

        in_flight: list[requests.Response] = []
        request = threading.Thread(target=lambda: in_flight.append(
            post(server.url + "/predict", {"instances": rows_of(dataset, 1).tolist()},
                 timeout=30)))
        request.start()
        threading.Event().wait(0.3)  # the request is now sleeping inside a worker
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        request.join(30)
    finally:
        server.stop()
    assert [resp.status_code for resp in in_flight] == [200]
    assert not runtime.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/health", timeout=2)
