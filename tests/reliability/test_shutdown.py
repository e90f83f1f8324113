"""Graceful shutdown: SIGTERM (as Heroku sends it) to a router or a model service under load."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.reliability.conftest import Launcher, Row
from tests.reliability.tools import Load
from tests.router.helpers import FakeUpstream
from tests.servers import ServerProcess, wait_until

HEROKU_GRACE_S = 30  # SIGKILL follows SIGTERM after this long
LATENCY_S = 0.3  # every answer takes this long, so requests are in flight at the signal


@pytest.fixture
def slow_v1() -> Iterator[FakeUpstream]:
    with FakeUpstream("v1", delay_s=LATENCY_S) as fake:
        yield fake


@pytest.mark.slow
@pytest.mark.parametrize("target", ["router", "model-service"])
@pytest.mark.scenario(6, "SIGTERM under load")
def test_sigterm_lets_every_accepted_request_finish(
    launch: Launcher, slow_v1: FakeUpstream, target: str, scenario: Row
) -> None:
    """Requests sent before the signal all complete with 200; later ones are either answered
    or refused (not accepted, not failures); the process exits with 0 within Heroku's 30 s."""
    server: ServerProcess
    if target == "router":
        server = launch.router({"v1": slow_v1.url}, WEB_CONCURRENCY="1")
    else:
        server = launch.service("v1", WEB_CONCURRENCY="1",
                                FAULT_LATENCY_MS=str(int(LATENCY_S * 1000)))
    server.wait_ready(60)

    with Load(server.url, threads=6) as load:
        wait_until(lambda: load.count() >= 30, timeout=60)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        try:
            code = server.proc.wait(HEROKU_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            code = None
        exited = time.monotonic()
        time.sleep(0.5)  # clients keep trying after the exit: connection refused
    calls = load.snapshot()

    before = [c for c in calls if c.started < signalled]
    in_flight = [c for c in before if c.ended > signalled]
    after = [c for c in calls if c.started >= signalled]
    not_accepted = [c for c in after if c.status == 0]
    failed = [c for c in before if c.status != 200] + [c for c in after if c.status not in (0, 200)]
    scenario.record(len(calls), len(failed),
                    f"{len(in_flight)} in flight at the signal, all 200; {len(not_accepted)} "
                    f"sent later not accepted; exit {code} after {exited - signalled:.1f} s")
    assert in_flight, "no request was in flight at the signal: the scenario tested nothing"
    assert not failed, f"{len(failed)} accepted requests failed, e.g. {failed[:3]}"
    assert code == 0, server.log()
    assert exited - signalled < HEROKU_GRACE_S
