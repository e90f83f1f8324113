"""Fixtures for whole rollouts: routers and model services, always stopped when done.

Most tests share one router in front of the session's v1 and v2 services (``shared``), reset to
stable v1 and candidate v2 with no rollout running before each test; tests that need their own
upstreams or state start their own with ``start_router`` and ``start_service``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.router.rollout.live import (
    ACTIVE,
    Admin,
    Stack,
    StartRouter,
    StartService,
    redis_state,
    shut,
    wait_all_answered_by,
)
from tests.servers import ServerProcess, model_service, router


@pytest.fixture(scope="package")
def _shared_stack(
    v1_service: ServerProcess,
    v2_service: ServerProcess,
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("shared-router") / "state.db"
    server = router({"v1": v1_service.url, "v2": v2_service.url}, log_dir, f"sqlite:///{state}")
    try:
        server.wait_ready()
        yield Stack(server, Admin(server.url))
    finally:
        shut(server)


@pytest.fixture
def shared(_shared_stack: Stack) -> Stack:
    """The shared router: stable v1, candidate v2, no traffic to v2 and no rollout running."""
    admin = _shared_stack.admin
    rollout = admin.rollout()
    if rollout and rollout["status"] in ACTIVE:
        admin.call("POST", "/admin/rollback", json={"reason": "reset between tests"})
    admin.call(
        "PATCH",
        "/admin/state",
        json={
            "strategy": "canary",
            "stable": "v1",
            "candidate": "v2",
            "canary_weight": 0,
            "shadow_percent": 0,
        },
    )
    wait_all_answered_by(_shared_stack.url, "v1")  # every worker has seen the reset
    return _shared_stack


@pytest.fixture
def start_router(log_dir: Path, tmp_path: Path) -> Iterator[StartRouter]:
    """``start_router(upstreams, state_url=None, wait=True, **env)``: a router of this test's own.

    Without ``state_url`` it keeps its state in a SQLite file of the test's (the same file for
    every router the test starts that way).
    """
    started: list[ServerProcess] = []

    def start(
        upstreams: dict[str, str], state_url: str | None = None, wait: bool = True, **env: str
    ) -> ServerProcess:
        url = state_url or f"sqlite:///{tmp_path / 'router-state.db'}"
        server = router(upstreams, log_dir, url, **env)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in reversed(started):
        shut(server)


@pytest.fixture
def redis_state_url() -> Iterator[str]:
    """A Redis ROUTER_STATE_URL of this test's own (request it before ``start_router``)."""
    with redis_state("rollout") as url:
        yield url


@pytest.fixture
def start_service(artifacts: Path, log_dir: Path) -> Iterator[StartService]:
    """``start_service(version, root=None, wait=True, **env)``: a model service of this test's own.

    With ``wait=False`` it is still starting (its URL is already known): start a router meanwhile.
    """
    started: list[ServerProcess] = []

    def start(
        version: str, root: Path | None = None, wait: bool = True, **env: str
    ) -> ServerProcess:
        server = model_service(version, root or artifacts, log_dir, **env)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in reversed(started):
        shut(server)


@pytest.fixture
def upstreams(v1_service: ServerProcess, v2_service: ServerProcess) -> dict[str, str]:
    """The session's v1 and v2 services, for a router of a test's own."""
    return {"v1": v1_service.url, "v2": v2_service.url}
