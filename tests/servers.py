"""Starting real servers for tests: gunicorn subprocesses and in-process werkzeug servers.

Every server listens on an ephemeral port. Subprocesses get an already-listening socket
(``--bind fd://N``), so there is no race for the port; they are stopped by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def free_port() -> int:
    """A port nothing listens on (for 'connection refused' cases)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def skip_or_fail(reason: str) -> None:
    """Skip a test whose outside service (Redis, a binary) is missing, or fail it under CI=true,
    where every test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
    pytest.skip(reason)


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


class ServerProcess:
    """A gunicorn-served role (``python -m model_service serve`` or ``python -m router serve``)."""

    def __init__(self, argv: list[str], env: Mapping[str, str | None], log_path: Path,
                 ready_path: str = "/ready", port: int = 0) -> None:
        self.sock = listening_socket(port)  # port 0: an ephemeral one
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {"WEB_CONCURRENCY": "2", **os.environ, **env}  # None: unset
        full_env = {name: value for name, value in full_env.items() if value is not None}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        full_env.pop("SERVICE_RUNTIME_DIR", None)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *argv, "--bind", f"fd://{self.sock.fileno()}"],
            cwd=ROOT, env=full_env, pass_fds=[self.sock.fileno()],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.sock.close()
        self.ready_path = ready_path
        # the readiness probe's headers: a model service under MODEL_ACCESS_TOKEN needs it
        token = env.get("MODEL_ACCESS_TOKEN")
        self.ready_headers = {"Authorization": f"Bearer {token}"} if token else {}

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return requests.get(self.url + self.ready_path, headers=self.ready_headers,
                                    timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_service(version: str, artifacts: Path, log_dir: Path, port: int = 0,
                  **env: str | None) -> ServerProcess:
    """Start ``python -m model_service serve --version <version>`` on ``port`` or an ephemeral one."""
    full = {"MODEL_ARTIFACTS": str(artifacts), **env}
    return ServerProcess(
        ["-m", "model_service", "serve", "--version", version],
        full, log_dir / f"model-{version}-{time.monotonic_ns()}.log", port=port,
    )


class InProcessServer:
    """A WSGI app served by werkzeug on an ephemeral port in a background thread."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = int(self.server.server_port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def router(upstreams: Mapping[str, str], log_dir: Path, state_url: str, token: str | None = "admin-secret",
           port: int = 0, **env: str | None) -> ServerProcess:
    """Start ``python -m router serve`` in front of ``upstreams``, on ``port`` or an ephemeral one."""
    full = {
        "ROUTER_UPSTREAMS": ",".join(f"{k}={v}" for k, v in upstreams.items()),
        "ROUTER_STATE_URL": state_url,
        **env,
    }
    if token:
        full["ROUTER_ADMIN_TOKEN"] = token
    return ServerProcess(["-m", "router", "serve"], full, log_dir / f"router-{time.monotonic_ns()}.log",
                         port=port)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``GET /metrics`` parsed: sample name -> [(labels, value), ...]."""
    resp = requests.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def serving_pids(url: str, version: str) -> set[str]:
    """Worker PIDs whose ``model_info`` says they serve ``version`` (and no other version)."""
    info = scrape(url).get("model_info", [])
    on = {labels["pid"] for labels, value in info if labels["version"] == version and value == 1}
    elsewhere = {
        labels["pid"] for labels, value in info if labels["version"] != version and value == 1
    }
    return on - elsewhere


def settled(read: Callable[[], T], timeout: float = 10.0) -> T:
    """``read()`` once two reads a few flush intervals apart agree.

    A router worker writes its request tallies to the shared metric files every
    ``metrics.router.FLUSH_INTERVAL_S``; a scrape served by one worker can lack another's last
    requests until then. Use this to read exact counts after traffic has stopped.
    """
    from metrics.router import FLUSH_INTERVAL_S

    deadline = time.monotonic() + timeout
    last = read()
    while True:
        time.sleep(3 * FLUSH_INTERVAL_S)
        now = read()
        if now == last:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"metrics still changing after {timeout} s")
        last = now
