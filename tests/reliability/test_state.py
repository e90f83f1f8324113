"""Two routers sharing their state in Redis: a change propagates, an outage is survived."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.reliability.conftest import Launcher, Row
from tests.router.helpers import RedisProcess, admin, error_of, post_many, predict
from tests.servers import ServerProcess, wait_until

PROPAGATION_S = 1.0
SLACK_S = 0.5


def state_of(url: str) -> dict[str, Any]:
    return admin("GET", url, "/admin/state").json()  # type: ignore[no-any-return]


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
    prefix = f"reliability-{uuid.uuid4().hex[:8]}:"
    state_url = f"redis://127.0.0.1:{private_redis.port}/0?prefix={prefix}"
    a, b = (launch.router(models, state_url=state_url, ROUTER_STRATEGY="blue-green",
                          WEB_CONCURRENCY="1") for _ in range(2))
    a.wait_ready(60), b.wait_ready(60)
    sent: list[int] = []
    problems: list[str] = []

    def expect(url: str, version: str, n: int = 20) -> None:
        """``n`` requests, each to be answered by ``version``."""
        answers = post_many(url, [{}] * n, threads=2)
        sent.append(n)
        problems.extend(f"{url}: {a.status} {a.version} {a.error}" for a in answers
                        if (a.status, a.version) != (200, version))

    def write(url: str, path: str, body: dict[str, object], status: int, code: str = "") -> None:
        resp = admin("PATCH" if path == "/admin/state" else "POST", url, path, json=body)
        sent.append(1)
        if resp.status_code != status or (code and error_of(resp)["code"] != code):
            problems.append(f"{path} through {url}: {resp.status_code} {resp.text}")

    write(a.url, "/admin/promote", {"reason": "switch through router a"}, 200)
    changed = time.monotonic()
    while predict(b.url).version != "v2":
        sent.append(1)
        assert time.monotonic() - changed < 10, "router b never followed"
    propagated = time.monotonic() - changed
    expect(b.url, "v2")

    private_redis.kill()
    time.sleep(1)  # several state refreshes have failed on both routers
    for server in (a, b):
        expect(server.url, "v2")
        write(server.url, "/admin/state", {"shadow_percent": 5}, 503, "state_store_unavailable")

    private_redis.start()  # the same port, no data: the routers seed it with their last state
    for server in (a, b):
        wait_until(lambda url=server.url: state_of(url)["store"]["reachable"], timeout=10)
        expect(server.url, "v2")
    write(b.url, "/admin/rollback", {"reason": "written through b after the outage"}, 200)
    wait_until(lambda: predict(a.url).version == "v1", timeout=PROPAGATION_S + 4)
    expect(a.url, "v1")

    scenario.record(sum(sent), len(problems),
                    f"propagated in {propagated:.2f} s; routed through the outage; recovered")
    assert propagated < PROPAGATION_S + SLACK_S
    assert not problems, problems
