"""Where routing state lives: SQLite across a restart, Redis across routers and an outage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.router.conftest import StartRouter
from tests.router.helpers import (
    RedisProcess,
    admin,
    assert_answered_by,
    change,
    error_of,
    events,
    post_many,
    predict,
    state,
    transition,
)
from tests.servers import wait_until


def all_answered_by(url: str, version: str, n: int = 10) -> bool:
    """``n`` requests on fresh connections (so on any worker) all answered by ``version``."""
    return all(predict(url).version == version for _ in range(n))


@pytest.mark.slow
def test_sqlite_state_survives_a_restart(
    start_router: StartRouter, models: dict[str, str], sqlite_url: Callable[[], str]
) -> None:
    url = sqlite_url()
    first = start_router(models, state_url=url, ROUTER_STRATEGY="blue-green", WEB_CONCURRENCY="1")
    transition(first.url, "promote", reason="go live with v2")
    change(first.url, shadow_percent=5)
    before, logged = state(first.url), events(first.url)
    first.stop()

    # The environment asks for another initial state; the stored one wins.
    second = start_router(models, state_url=url, ROUTER_STRATEGY="release-in-place",
                          ROUTER_STABLE="v1", ROUTER_CANDIDATE="v2")
    after = state(second.url)
    kept = ("config_version", "strategy", "stable", "candidate", "shadow_percent")
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    assert (after["strategy"], after["stable"]) == ("blue-green", "v2")
    assert events(second.url) == logged
    assert_answered_by(post_many(second.url, [{}] * 40), "v2")


@pytest.mark.redis
@pytest.mark.slow
def test_two_routers_on_one_redis_converge_within_a_second(
    start_router: StartRouter, models: dict[str, str], redis_state_url: str
) -> None:
    a = start_router(models, state_url=redis_state_url, ROUTER_STRATEGY="blue-green",
                     WEB_CONCURRENCY="1")
    b = start_router(models, state_url=redis_state_url, ROUTER_STRATEGY="blue-green")
    assert state(a.url)["config_version"] == state(b.url)["config_version"]
    assert_answered_by(post_many(b.url, [{}] * 20), "v1")

    change(a.url, stable="v2", candidate="v1", reason="switch through router a")
    wait_until(lambda: all_answered_by(b.url, "v2"), timeout=1.5)

    change(b.url, stable="v1", candidate="v2", reason="and back through router b")
    wait_until(lambda: all_answered_by(a.url, "v1"), timeout=1.5)
    assert [e["reason"] for e in events(a.url)] == [
        "switch through router a", "and back through router b"
    ]


@pytest.mark.redis
@pytest.mark.slow
def test_routing_continues_through_a_redis_outage_and_recovers(
    start_router: StartRouter, models: dict[str, str], private_redis: RedisProcess
) -> None:
    # One worker: with two, the second one may rightly keep an older state when Redis goes
    # away before its next refresh, which would blur what this test checks.
    r = start_router(models, state_url=f"redis://127.0.0.1:{private_redis.port}/0",
                     ROUTER_STRATEGY="blue-green", WEB_CONCURRENCY="1")
    change(r.url, strategy="canary", canary_weight=10)
    change(r.url, strategy="blue-green", canary_weight=0)
    version = change(r.url, stable="v2", candidate="v1")["config_version"]
    assert version == 4  # higher than any version the emptied Redis will count up to below
    assert_answered_by(post_many(r.url, [{}] * 20), "v2")

    private_redis.kill()
    assert_answered_by(post_many(r.url, [{}] * 40), "v2")  # routing on the last state it saw
    for method, path, body in [("PATCH", "/admin/state", {"stable": "v1", "candidate": "v2"}),
                               ("POST", "/admin/promote", None), ("POST", "/admin/rollback", None)]:
        resp = admin(method, r.url, path, json=body)
        assert resp.status_code == 503
        assert error_of(resp)["code"] == "state_store_unavailable"
    during = state(r.url)
    assert (during["config_version"], during["stable"]) == (version, "v2")
    assert during["store"]["reachable"] is False
    assert predict(r.url).status == 200
    assert admin("GET", r.url, "/ready").status_code == 200

    # Redis comes back empty (no persistence): routing goes on, then changes work again.
    private_redis.start()
    wait_until(lambda: state(r.url)["store"]["reachable"], timeout=5)
    assert_answered_by(post_many(r.url, [{}] * 40), "v2")

    def switch_back() -> dict[str, Any] | None:
        resp = admin("PATCH", r.url, "/admin/state", json={"stable": "v1", "candidate": "v2"})
        assert resp.status_code in (200, 503), resp.text  # 503 only until it reconnects
        return resp.json() if resp.status_code == 200 else None

    accepted = wait_until(switch_back, timeout=5)
    assert (accepted["stable"], accepted["candidate"]) == ("v1", "v2")
    assert state(r.url)["stable"] == "v1"
    assert_answered_by(post_many(r.url, [{}] * 40), "v1")
