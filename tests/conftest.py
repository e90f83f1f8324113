"""Shared fixtures: trained artifacts (once per run) and real model-service processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_service.training import train_all
from tests.router.helpers import RedisProcess
from tests.servers import ServerProcess, free_port, model_service, skip_or_fail


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both versions trained from source into a private folder."""
    root = tmp_path_factory.mktemp("artifacts")
    train_all(root)
    return root


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def v1_service(artifacts: Path, log_dir: Path) -> Iterator[ServerProcess]:
    with model_service("v1", artifacts, log_dir, MODEL_ADMIN_TOKEN="model-secret") as server:
        yield server.wait_ready()


@pytest.fixture(scope="session")
def v2_service(artifacts: Path, log_dir: Path) -> Iterator[ServerProcess]:
    with model_service("v2", artifacts, log_dir, MODEL_ADMIN_TOKEN="model-secret") as server:
        yield server.wait_ready()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own on a free port (no persistence): kill it, start it again
    empty."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed: install Redis to run the outage tests")
    server = RedisProcess(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
