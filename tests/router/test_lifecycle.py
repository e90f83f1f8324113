"""The router app's one ``close()``: every thread it started ends, every connection it holds closes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from router.shadow import MirrorJob
from tests.router.conftest import in_process_router
from tests.router.helpers import AUTH

BODY = {"instances": [[0.0] * 30]}


def _started_since(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def _wait_gone(threads: list[threading.Thread], seconds: float = 5.0) -> list[str]:
    """Names of the threads still alive after up to ``seconds`` (the metrics flusher ends after
    its next round, a tenth of a second)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.02)
    return [t.name for t in threads if t.is_alive()]


def test_close_stops_every_thread_and_closes_pools_and_store(
    models: dict[str, str], sqlite_url: Callable[[], str]
) -> None:
    before = set(threading.enumerate())
    with in_process_router(models, sqlite_url(), shadow_workers=2) as app:
        ctx = app.extensions["router"]
        client = app.test_client()
        shadow_everything = {"strategy": "shadow", "candidate": "v2", "shadow_percent": 100}
        resp = client.patch("/admin/state", json=shadow_everything, headers=AUTH)
        assert resp.status_code == 200, resp.get_json()
        ctx.live.refresh()
        assert client.post("/predict", json=BODY).status_code == 200  # starts the mirror
        started = _started_since(before)
        names = {t.name for t in started}
        assert {"rollout", "state-refresh", "slot-versions", "shadow-0", "shadow-1"} <= names, names
        pools = list(ctx.pools.values())
    # the fixture's teardown is ctx.close(), the same call a worker's exit makes
    assert _wait_gone(started) == []
    assert all(pool._closed for pool in pools)
    ctx.close()  # a second close does nothing


def test_a_closed_mirror_drops_copies_instead_of_queueing_them(
    models: dict[str, str], sqlite_url: Callable[[], str]
) -> None:
    with in_process_router(models, sqlite_url()) as app:
        ctx = app.extensions["router"]
        ctx.mirror.close()
        job = MirrorJob(stable="v1", candidate="v2", body=b"{}", headers=[], stable_body=b"{}")
        assert ctx.mirror.submit(job) is False
        assert ctx.mirror.jobs.qsize() == 0
        assert [t for t in threading.enumerate() if t.name.startswith("shadow-")] == []
