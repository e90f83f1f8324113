"""The Redis store under outage and recovery, its change notifications and key prefixes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from router.state import StoreUnavailable
from router.state.redis import RedisStateStore
from tests.router.helpers import RedisProcess
from tests.servers import free_port

pytestmark = pytest.mark.redis


def _assert_unavailable(store: RedisStateStore) -> None:
    calls: dict[str, Callable[[], object]] = {
        "read": store.read,
        "initialize": lambda: store.initialize({"strategy": "canary"}),
        "commit": lambda: store.commit(1, {"strategy": "canary"}, {"actor": "admin"}),
        "restore": lambda: store.restore({"strategy": "canary"}, 2, {"actor": "router"}),
        "events": store.events,
        "acquire_lease": lambda: store.acquire_lease("rollout", "router-a", ttl_s=5),
        "release_lease": lambda: store.release_lease("rollout", "router-a"),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable, match="ROUTER_STATE_URL") as raised:
            call()
        assert "unreachable" in str(raised.value), name


def test_unreachable_server_raises_store_unavailable() -> None:
    store = RedisStateStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    try:
        _assert_unavailable(store)
        with pytest.raises(StoreUnavailable) as raised:
            store.read()
        assert "hunter2" not in str(raised.value)
    finally:
        store.close()


def test_same_store_works_again_after_the_server_restarts(private_redis: RedisProcess) -> None:
    store = RedisStateStore(private_redis.url, prefix="recovery:")
    try:
        store.initialize({"strategy": "release-in-place"})
        store.commit(1, {"strategy": "canary"}, {"actor": "admin"})
        assert store.acquire_lease("rollout", "router-a", ttl_s=30)

        private_redis.kill()
        _assert_unavailable(store)

        private_redis.start()
        # The restarted server kept nothing (no persistence) and has no cached scripts.
        assert store.read() is None
        store.initialize({"strategy": "release-in-place"})
        committed = store.commit(1, {"strategy": "shadow"}, {"actor": "admin"})
        assert store.read() == committed
        assert [event["actor"] for event in store.events()] == ["admin"]
        assert store.acquire_lease("rollout", "router-b", ttl_s=30)
    finally:
        store.close()


def test_commits_are_announced_on_the_changes_channel(redis_url: str, redis_prefix: str) -> None:
    store = RedisStateStore(redis_url, prefix=redis_prefix)
    pubsub = store.subscribe_changes()
    try:
        store.initialize({"strategy": "release-in-place"})
        store.commit(1, {"strategy": "canary"}, {"actor": "admin"})
        announced = []
        for _ in range(20):
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                announced.append(message["data"])
            if len(announced) == 2:
                break
        assert announced == ["1", "2"]
    finally:
        pubsub.close()
        store.close()


def test_prefixes_keep_routers_apart(redis_url: str, redis_prefix: str) -> None:
    europe = RedisStateStore(redis_url, prefix=f"{redis_prefix}eu:")
    america = RedisStateStore(redis_url, prefix=f"{redis_prefix}us:")
    try:
        europe.initialize({"strategy": "canary"})
        europe.acquire_lease("rollout", "router-a", ttl_s=30)
        assert america.read() is None
        assert america.events() == []
        assert america.acquire_lease("rollout", "router-b", ttl_s=30)
    finally:
        europe.close()
        america.close()
