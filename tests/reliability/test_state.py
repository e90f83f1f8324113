"""Two routers sharing their state in Redis: a change propagates, an outage is survived."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.conftest import Launcher, Row
from tests.router.helpers import RedisProcess, admin, error_of, post_many, predict
from tests.servers import ServerProcess, wait_until

PROPAGATION_S = 1.0
SLACK_S = 0.5


def answered_by(url: str, version: str, n: int = 20) -> list[str]:
    """Problems with ``n`` requests that should all be answered by ``version`` (none: empty)."""
    return [f"{a.status} {a.version} {a.error}" for a in post_many(url, [{}] * n, threads=2)
            if (a.status, a.version) != (200, version)]


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.scenario(9, "two routers on one Redis: propagation, outage, recovery")
def test_two_routers_share_state_through_a_redis_outage(
    launch: Launcher, private_redis: RedisProcess, v1_service: ServerProcess,
    v2_service: ServerProcess, scenario: Row,
) -> None:
    """A change through one router routes on the other within 1 s; with Redis stopped both keep
    routing on the last state and refuse admin writes with 503; when Redis is back, empty, both
    recover without a restart."""
    models = {"v1": v1_service.url, "v2": v2_service.url}
    state_url = f"redis://127.0.0.1:{private_redis.port}/0?prefix=reliability-{uuid.uuid4().hex[:8]}:"
    a, b = (launch.router(models, state_url=state_url, ROUTER_STRATEGY="blue-green",
                          WEB_CONCURRENCY="1") for _ in range(2))
    a.wait_ready(60), b.wait_ready(60)
    problems: list[str] = []
    sent = 0

    resp = admin("POST", a.url, "/admin/promote", json={"reason": "switch through router a"})
    changed = time.monotonic()
    assert resp.status_code == 200, resp.text
    while predict(b.url).version != "v2":
        sent += 1
        assert time.monotonic() - changed < 10, "router b never followed"
    propagated = time.monotonic() - changed
    problems += answered_by(b.url, "v2")
    sent += 21

    private_redis.kill()
    time.sleep(1)  # both routers have noticed: several state refreshes failed
    for server in (a, b):
        problems += answered_by(server.url, "v2")
        refused = admin("PATCH", server.url, "/admin/state", json={"shadow_percent": 5})
        sent += 21
        if refused.status_code != 503 or error_of(refused)["code"] != "state_store_unavailable":
            problems.append(f"write during the outage: {refused.status_code} {refused.text}")

    private_redis.start()  # the same port, no data: the routers re-seed it with their last state
    for server in (a, b):
        wait_until(lambda s=server: admin("GET", s.url, "/admin/state").json()["store"]["reachable"],
                   timeout=10)
        problems += answered_by(server.url, "v2")
        sent += 21
    resp = admin("POST", b.url, "/admin/rollback", json={"reason": "written through b after the outage"})
    sent += 1
    if resp.status_code != 200:
        problems.append(f"write after the outage: {resp.status_code} {resp.text}")
    wait_until(lambda: predict(a.url).version == "v1", timeout=PROPAGATION_S + 4)
    problems += answered_by(a.url, "v1")
    sent += 20

    scenario.record(sent, len(problems),
                    f"propagated in {propagated:.2f} s; routed through the outage; recovered")
    assert propagated < PROPAGATION_S + SLACK_S
    assert not problems, problems
