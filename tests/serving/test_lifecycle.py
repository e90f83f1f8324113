"""At worker exit the serving layer closes what the app registered; the router registers its close."""

from __future__ import annotations

import gc
import importlib
import sys
import time
from pathlib import Path

import pytest

from serving import lifecycle
from tests.servers import ServerProcess


def _pids(path: Path, event: str) -> int:
    if not path.exists():
        return 0
    return len({line for line in path.read_text().splitlines() if line.startswith(event)})


def test_every_worker_runs_the_registered_close_when_the_server_stops(
    log_dir: Path, tmp_path: Path
) -> None:
    closed = tmp_path / "closed.txt"
    argv = ["-m", "gunicorn", "-c", "python:serving.gunicorn_conf", "tests.serving.echo_app:app"]
    with ServerProcess(argv, {"WEB_CONCURRENCY": "2", "ECHO_CLOSED_FILE": str(closed)},
                       log_dir / f"echo-close-{time.monotonic_ns()}.log",
                       ready_path="/health") as server:
        server.wait_ready()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _pids(closed, "loaded") != 2:
            time.sleep(0.05)  # both workers have the app loaded
        assert _pids(closed, "closed") == 0
    loaded = {line.split()[1] for line in closed.read_text().splitlines() if line.startswith("loaded")}
    shut = {line.split()[1] for line in closed.read_text().splitlines() if line.startswith("closed")}
    assert len(loaded) == 2 and shut == loaded, closed.read_text()


def test_the_router_entry_point_registers_its_close(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ROUTER_UPSTREAMS", "v1=http://127.0.0.1:9")
    monkeypatch.setenv("ROUTER_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setattr(lifecycle, "_CLOSERS", [])
    monkeypatch.delitem(sys.modules, "router.wsgi", raising=False)
    wsgi = importlib.import_module("router.wsgi")
    try:
        ctx = wsgi.app.extensions["router"]
        assert not ctx.closed
        lifecycle.run_worker_exit()
        assert ctx.closed
    finally:
        wsgi.app.extensions["router"].close()
        sys.modules.pop("router.wsgi", None)
        gc.unfreeze()  # the entry point froze this test process's objects
