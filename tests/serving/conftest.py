"""Servers for the serving-layer tests, started once per module: the serving layer with an echo
app, a router in front of a recording upstream, and the router and model service for real."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.router.conftest import running_router
from tests.serving.wire import EchoUpstream
from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def echo_server(log_dir: Path) -> Iterator[ServerProcess]:
    """gunicorn with the project's settings serving ``tests.serving.echo_app``."""
    argv = ["-m", "gunicorn", "-c", "python:serving.gunicorn_conf", "tests.serving.echo_app:app"]
    with ServerProcess(argv, {"WEB_CONCURRENCY": "1"}, log_dir / f"echo-{time.monotonic_ns()}.log",
                       ready_path="/health") as server:
        yield server.wait_ready()


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def router_to_echo(echo_upstream: EchoUpstream, log_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A one-worker router whose only slot is the recording upstream."""
    state = f"sqlite:///{tmp_path_factory.mktemp('echo-router') / 'state.db'}"
    with running_router({"echo": echo_upstream.url}, log_dir, state, WEB_CONCURRENCY="1") as server:
        yield server


@pytest.fixture(scope="module")
def router_to_model(v1_service: ServerProcess, log_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A router in front of the real model service v1."""
    state = f"sqlite:///{tmp_path_factory.mktemp('model-router') / 'state.db'}"
    with running_router({"v1": v1_service.url}, log_dir, state) as server:
        yield server
