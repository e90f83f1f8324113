"""Fixtures for router tests: real routers as subprocesses, fake upstreams, Redis.

Routers run as ``python -m router serve`` (gunicorn, two workers unless a test says otherwise) in
front of the session's real model services. A test that changes the routing state and then at
once checks where requests go runs a one-worker router: with two, the other worker follows only
at its next state refresh (within ROUTER_REFRESH_S), which is the design, not a defect.

Redis tests use ROUTER_REDIS_TEST_URL (default: database 14 of the local Redis) under a key prefix
of their own, and delete their keys afterwards. Without a Redis they skip, saying so; under CI
(CI=true) they fail instead, so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from router.app import create_app
from router.config import RouterConfig
from tests.router.helpers import ADMIN_TOKEN, AUTH, FakeUpstream
from tests.servers import ServerProcess, free_port, router, skip_or_fail

ROUTER_REDIS_URL = os.environ.get("ROUTER_REDIS_TEST_URL", "redis://127.0.0.1:6379/14")

StartRouter = Callable[..., ServerProcess]


@contextmanager
def running_router(upstreams: Mapping[str, str], log_dir: Path, state_url: str, *,
                   token: str | None = ADMIN_TOKEN, ready_path: str = "/ready",
                   **env: str) -> Iterator[ServerProcess]:
    """A router subprocess, ready, stopped on exit (``ready_path="/health"``: stable is down)."""
    server = router(upstreams, log_dir, state_url, token=token, **env)
    server.ready_path = ready_path
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@contextmanager
def in_process_router(upstreams: Mapping[str, str], state_url: str,
                      **settings: Any) -> Iterator[Flask]:
    """The router's Flask app in this process, for what a subprocess would add nothing to."""
    labels = list(upstreams)
    config = RouterConfig(upstreams=dict(upstreams), stable=labels[0],
                          candidate=labels[1] if len(labels) > 1 else None,
                          admin_token=ADMIN_TOKEN, state_url=state_url, **settings)
    app = create_app(config)
    ctx = app.extensions["router"]
    try:
        yield app
    finally:
        ctx.close()


def seed_state(state_url: str, upstreams: Mapping[str, str], **fields: Any) -> str:
    """Make ``fields`` the stored routing state (through the admin API) before a router starts.

    Every worker of a router started on ``state_url`` then routes by it from its first request.
    """
    with in_process_router(upstreams, state_url) as app:
        resp = app.test_client().patch("/admin/state", json=fields, headers=AUTH)
        assert resp.status_code == 200, resp.get_json()
    return state_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Callable[[], str]:
    """A fresh SQLite state file URL on each call."""
    return lambda: f"sqlite:///{tmp_path / f'state-{uuid.uuid4().hex[:8]}.db'}"


@pytest.fixture
def start_router(log_dir: Path, sqlite_url: Callable[[], str]) -> Iterator[StartRouter]:
    """Start routers for one test: ``start_router(upstreams, state_url=..., **env)``."""
    with ExitStack() as stack:

        def start(upstreams: Mapping[str, str], *, state_url: str | None = None,
                  **kwargs: Any) -> ServerProcess:
            return stack.enter_context(
                running_router(upstreams, log_dir, state_url or sqlite_url(), **kwargs)
            )

        yield start


@pytest.fixture
def fake_upstream() -> Iterator[Callable[..., FakeUpstream]]:
    """Start fake upstreams for one test: ``fake_upstream("v2", delay_s=5)``."""
    with ExitStack() as stack:
        yield lambda label, **kwargs: stack.enter_context(FakeUpstream(label, **kwargs))


@pytest.fixture(scope="package")
def models(v1_service: ServerProcess, v2_service: ServerProcess) -> dict[str, str]:
    """The real model services, as ROUTER_UPSTREAMS."""
    return {"v1": v1_service.url, "v2": v2_service.url}


def _state_url(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp(name) / 'state.db'}"


# Routers shared by several test modules. A test using one either only compares before with
# after, or first sets the whole routing state it needs (helpers.put_state).


@pytest.fixture(scope="package")
def shared_router(models: dict[str, str], log_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two workers in front of the real v1 and v2, starting as a canary at weight 0."""
    with running_router(models, log_dir, _state_url(tmp_path_factory, "shared"),
                        ROUTER_STRATEGY="canary") as server:
        yield server


@pytest.fixture(scope="package")
def one_worker_router(models: dict[str, str], log_dir: Path,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One worker, so that a change routes from the very next request.

    Besides the real v1 and v2 it knows versions that misbehave: ``slow`` answers after 60 s
    (ROUTER_TIMEOUT_S is 2), ``failing`` answers 500, ``down`` refuses connections and
    ``dropping`` closes them without an answer.
    """
    with ExitStack() as stack:
        slow = stack.enter_context(FakeUpstream("slow", delay_s=60))
        failing = stack.enter_context(FakeUpstream("failing", status=500))
        dropping = stack.enter_context(FakeUpstream("dropping", drop_connection=True))
        upstreams = {**models, "slow": slow.url, "failing": failing.url,
                     "down": f"http://127.0.0.1:{free_port()}", "dropping": dropping.url}
        yield stack.enter_context(running_router(
            upstreams, log_dir, _state_url(tmp_path_factory, "one-worker"),
            WEB_CONCURRENCY="1", ROUTER_TIMEOUT_S="2",
        ))


@pytest.fixture(scope="package")
def locked_down_router(models: dict[str, str], log_dir: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No admin token configured and X-Route-To disabled."""
    with running_router(models, log_dir, _state_url(tmp_path_factory, "locked-down"), token=None,
                        ROUTER_ALLOW_ROUTE_TO="false", WEB_CONCURRENCY="1") as server:
        yield server


# -- Redis -------------------------------------------------------------------------------------


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5,
                                retry=Retry(NoBackoff(), 0))


@pytest.fixture(scope="session")
def shared_redis() -> str:
    """The Redis server the router tests share (ROUTER_REDIS_TEST_URL, database 14 by default)."""
    client = _redis_client(ROUTER_REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        skip_or_fail(f"no Redis answers at {ROUTER_REDIS_URL} ({exc}): start one or set "
                     "ROUTER_REDIS_TEST_URL")
    finally:
        client.close()
    return ROUTER_REDIS_URL


@pytest.fixture
def redis_state_url(shared_redis: str) -> Iterator[str]:
    """A ROUTER_STATE_URL with a key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex}:"
    yield f"{shared_redis}?prefix={prefix}"
    client = _redis_client(shared_redis)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()

