"""Reliability and security scenarios: the servers they share, and their summary table.

Each test is one scenario of the reliability issue, marked ``@pytest.mark.scenario(number,
title)``; it fills its ``scenario`` row (requests sent, failures, what it showed) and the end of
the session prints every row as a table.

Most scenarios share one router, ``gateway``: two workers in front of the session's v1 and v2
model services and of fake upstreams that misbehave on purpose (see ``fakes``); it is reset to
release-in-place, stable v1, before each test. Scenarios that stop, kill or reconfigure a
server start their own with ``launch``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.tools import Router
from tests.router.helpers import ADMIN_TOKEN, FakeUpstream
from tests.servers import ServerProcess, free_port, model_service, router

ACTIVE = ("running", "paused", "awaiting_promotion")
SETTLE_S = 1.0  # four state refreshes (ROUTER_REFRESH_S, 0.25 s): every worker routes by a change
GATEWAY_SHADOW_QUEUE = 16


# -- the summary table -------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario's line in the summary table."""

    scenario: str
    title: str
    sent: int = 0
    failures: int = 0
    note: str = ""
    result: str = "not finished"

    def record(self, sent: int, failures: int, note: str) -> None:
        self.sent, self.failures, self.note = sent, failures, note


ROWS = pytest.StashKey[list[Row]]()
ITEM_ROW = pytest.StashKey[Row]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scenario(number, title): the reliability scenario a test implements"
    )


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Row:
    """This test's row of the summary table (from its ``scenario`` marker)."""
    marker = request.node.get_closest_marker("scenario")
    assert marker is not None, "name the scenario: @pytest.mark.scenario(number, title)"
    number, title = marker.args
    callspec = getattr(request.node, "callspec", None)
    label = f"{number} ({callspec.id})" if callspec is not None else str(number)
    row = Row(label, title)
    request.config.stash.setdefault(ROWS, []).append(row)
    request.node.stash[ITEM_ROW] = row
    return row


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    row = item.stash.get(ITEM_ROW, None)
    if row is None:
        return
    if report.when == "call" or (report.failed and row.result in ("passed", "not finished")):
        row.result = "FAILED" if report.failed else report.outcome
    if report.when == "teardown":
        item.user_properties.extend([("scenario", row.scenario), ("requests_sent", row.sent),
                                     ("failures", row.failures), ("outcome", row.result)])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return

    def order(row: Row) -> tuple[int, str]:
        head = row.scenario.split(" ", 1)[0]
        digits = "".join(ch for ch in head if ch.isdigit())
        return int(digits or 0), row.scenario

    table = [("scenario", "requests sent", "failures", "outcome")]
    for row in sorted(rows, key=order):
        note = f"{row.result}: {row.title}" + (f"; {row.note}" if row.note else "")
        table.append((row.scenario, str(row.sent), str(row.failures), note))
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    terminalreporter.write_sep("=", "reliability scenarios")
    for i, line in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        terminalreporter.write_line(" | ".join([*cells, line[3]]))
        if i == 0:
            terminalreporter.write_line("-|-".join("-" * w for w in [*widths, 7]))


# -- servers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fakes:
    """Stand-in model services, each misbehaving in one way; ``down`` is a port nobody serves."""

    recorder: FakeUpstream  # answers 200 at once and records every request's headers
    failing: FakeUpstream  # answers 500
    sleeper: FakeUpstream  # answers after 20 s
    down: str


@pytest.fixture(scope="package")
def fakes() -> Iterator[Fakes]:
    with FakeUpstream("recorder") as recorder, FakeUpstream("failing", status=500) as failing, \
            FakeUpstream("sleeper", delay_s=20) as sleeper:
        yield Fakes(recorder, failing, sleeper, f"http://127.0.0.1:{free_port()}")


@dataclass
class Gateway(Router):
    """The shared router, and the model service behind its "victim" label (to be killed)."""

    victim: ServerProcess


@pytest.fixture(scope="package")
def _gateway(v1_service: ServerProcess, v2_service: ServerProcess, fakes: Fakes,
             artifacts: Path, log_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # "victim" is a v2 model service of the gateway's own, for the scenario that kills it.
    with model_service("v2", artifacts, log_dir, WEB_CONCURRENCY="1") as victim:
        upstreams = {"v1": v1_service.url, "v2": v2_service.url, "victim": victim.url,
                     "recorder": fakes.recorder.url, "failing": fakes.failing.url,
                     "sleeper": fakes.sleeper.url, "down": fakes.down}
        state_url = f"sqlite:///{tmp_path_factory.mktemp('gateway') / 'state.db'}"
        # A short shadow queue, so a stuck candidate fills it within a short burst.
        with router(upstreams, log_dir, state_url, ROUTER_TIMEOUT_S="10",
                    ROUTER_CONNECT_TIMEOUT_S="1", WEB_CONCURRENCY="2",
                    ROUTER_SHADOW_QUEUE=str(GATEWAY_SHADOW_QUEUE)) as server:
            victim.wait_ready(60)
            server.wait_ready(60)
            yield Gateway(server, victim)


@pytest.fixture
def gateway(_gateway: Gateway) -> Gateway:
    """The shared router, reset: release-in-place, stable v1, candidate v2, no rollout running."""
    rollout = _gateway.rollout()
    if rollout and rollout["status"] in ACTIVE:
        _gateway.call("POST", "/admin/rollback", json={"reason": "reset between scenarios"})
    _gateway.change(strategy="release-in-place", stable="v1", candidate="v2", canary_weight=0,
                    shadow_percent=0)
    time.sleep(SETTLE_S)
    return _gateway


class Launcher:
    """Routers and model services of one test's own, started at once, stopped at its end."""

    def __init__(self, artifacts: Path, log_dir: Path, tmp_path: Path) -> None:
        self.artifacts = artifacts
        self.log_dir = log_dir
        self.tmp_path = tmp_path
        self.started: list[ServerProcess] = []

    def router(self, upstreams: Mapping[str, str], state_url: str | None = None,
               token: str | None = ADMIN_TOKEN, **env: str) -> ServerProcess:
        """A router, starting (call ``wait_ready``); by default SQLite state of its own."""
        url = state_url or f"sqlite:///{self.tmp_path / f'router-{len(self.started)}.db'}"
        server = router(upstreams, self.log_dir, url, token=token, **env)
        self.started.append(server)
        return server

    def service(self, version: str, **env: str) -> ServerProcess:
        """A model service serving ``version``, starting (call ``wait_ready``)."""
        server = model_service(version, self.artifacts, self.log_dir, **env)
        self.started.append(server)
        return server

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()


@pytest.fixture
def launch(artifacts: Path, log_dir: Path, tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(artifacts, log_dir, tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop()

