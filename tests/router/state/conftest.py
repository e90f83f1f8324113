"""Fixtures for the state store tests: both backends (a throwaway Redis server is ``private_redis``).

Redis tests use REDIS_TEST_URL (default redis://127.0.0.1:6379/15) under a key prefix unique to
each test, and delete only their own keys. Without a Redis they skip, unless CI is "true": then
a missing Redis is a failure, so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from router.state.base import StateStore
from router.state.redis import RedisStateStore
from router.state.sqlite import SQLiteStateStore
from tests.servers import skip_or_fail

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")

StoreFactory = Callable[[], StateStore]


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(
        REDIS_TEST_URL, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        skip_or_fail(
            f"no Redis answers at {REDIS_TEST_URL} ({exc}); start one or set REDIS_TEST_URL"
        )
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test-state-{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of store objects that all share one (empty at first) state."""
    opened: list[StateStore] = []
    if request.param == "sqlite":
        path = tmp_path / "state" / "router.db"

        def factory() -> StateStore:
            opened.append(SQLiteStateStore(path))
            return opened[-1]
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

        def factory() -> StateStore:
            opened.append(RedisStateStore(url, prefix=prefix))
            return opened[-1]

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> StateStore:
    return make_store()
