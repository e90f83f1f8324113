"""Restarts: a router restarted mid-rollout, and workers restarted every few requests."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import Launcher, Row
from tests.reliability.tools import Load, Router, children
from tests.router.helpers import metric, predict
from tests.servers import ServerProcess, settled, wait_until

PLAN = {"strategy": "canary", "candidate": "v2", "steps": [20, 40, 60, 80, 100], "interval_s": 2,
        "min_requests": 10, "thresholds": {"max_p99_ratio": 100, "max_error_rate_increase": 0.05}}


def controllers(rollout: dict[str, Any]) -> list[str]:
    """The controller of each decision, in order."""
    return [decision["controller"] for decision in rollout["decisions"]]


@pytest.mark.slow
@pytest.mark.scenario("13a", "router restarted mid-rollout resumes it (SQLite state)")
def test_router_restarted_mid_rollout_resumes_it(
    launch: Launcher, v1_service: ServerProcess, v2_service: ServerProcess, tmp_path: Path,
    scenario: Row,
) -> None:
    """SIGTERM a router while its canary rollout runs; a new router on the same state file takes
    the rollout over where it was and carries it to promotion."""
    models = {"v1": v1_service.url, "v2": v2_service.url}
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    first = Router(launch.router(models, state_url=state_url, ROUTER_STRATEGY="canary",
                                 WEB_CONCURRENCY="1").wait_ready(60))
    with Load(first.url, threads=3, rate=30) as before_restart:
        first.call("POST", "/admin/rollout", json=PLAN)
        wait_until(lambda: (first.rollout() or {}).get("step", 0) >= 1, timeout=90, interval=0.1)
    first.server.signal(signal.SIGTERM)
    code = first.server.proc.wait(35)
    left = first.server  # its state file is all the next router gets
    second = Router(launch.router(models, state_url=state_url, WEB_CONCURRENCY="1").wait_ready(60))
    resumed = second.rollout()
    assert resumed is not None
    with Load(second.url, threads=3, rate=30) as after_restart:
        done = wait_until(lambda: (r := second.rollout()) and r["status"] != "running" and r,
                          timeout=120, interval=0.2)
    calls = before_restart.snapshot() + after_restart.snapshot()
    failed = [c for c in calls if c.status != 200]
    routing = second.state()

    by_first = set(controllers(resumed))
    by_second = [c for c in controllers(done) if c not in by_first]
    scenario.record(len(calls), len(failed),
                    f"resumed at step {resumed['step']} ({resumed['status']}); "
                    f"{len(by_second)} decisions after the restart; {done['status']}")
    assert code == 0, left.log()
    assert resumed["status"] == "running" and resumed["step"] >= 1
    assert done["status"] == "promoted", done
    assert by_second and done["decisions"][-1]["action"] == "promote"
    assert (routing["stable"], routing["candidate"]) == ("v2", "v1")
    assert not failed, failed[:3]


def metric_files(folder: Path) -> dict[str, list[str]]:
    """The multiprocess folder's files by owner: a worker's PID, or "archive"."""
    owners: dict[str, list[str]] = {}
    for path in folder.glob("*.db"):
        owners.setdefault(path.stem.rsplit("_", 1)[1], []).append(path.name)
    return owners


@pytest.mark.slow
@pytest.mark.scenario("13b", "metrics folder bounded while workers restart (max requests 50)")
def test_metrics_folder_stays_bounded_while_workers_restart(
    launch: Launcher, v1_service: ServerProcess, tmp_path: Path, scenario: Row
) -> None:
    """Workers restarted every 50 requests: the metrics folder holds the live workers' files
    plus one archive per metric type, and the request counter still counts every request."""
    # The router makes its runtime folder under TMPDIR; the metrics live in its "prometheus".
    server = launch.router({"v1": v1_service.url}, TMPDIR=str(tmp_path), WEB_CONCURRENCY="2",
                           GUNICORN_MAX_REQUESTS="50", GUNICORN_MAX_REQUESTS_JITTER="0")
    server.wait_ready(60)
    [folder] = tmp_path.glob("model-router-*/prometheus")
    counted_before = settled(lambda: metric(server.url, "router_requests_total"))
    workers_seen = set(children(server.proc.pid))
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            workers_seen.update(children(server.proc.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    answers: list[Any] = []
    deadline = time.monotonic() + 90
    try:
        with ThreadPoolExecutor(4) as pool:  # a fresh connection each: any worker may take it
            # at least 1000 requests, and on until a restarted worker has been seen (a restart
            # takes about a second, and 1000 requests may take less)
            while len(answers) < 1000 or (len(workers_seen) < 3 and time.monotonic() < deadline):
                answers += pool.map(lambda _: predict(server.url), range(200))
    finally:
        sampling.set()
        sampler.join()

    def only_live_files() -> dict[str, list[str]] | None:
        owners = metric_files(folder)
        live = {str(pid) for pid in children(server.proc.pid)}
        return owners if set(owners) <= live | {"archive"} else None

    owners = wait_until(only_live_files, timeout=15)
    counted = settled(lambda: metric(server.url, "router_requests_total")) - counted_before
    failed = [a for a in answers if a.status != 200]
    live_files = sum(len(names) for owner, names in owners.items() if owner != "archive")
    scenario.record(len(answers), len(failed) + int(len(answers) - counted),
                    f"{len(workers_seen) - 2} worker restarts; {live_files} live files + "
                    f"{len(owners.get('archive', []))} archives; {counted:.0f} requests counted")
    assert not failed, failed[:3]
    assert len(workers_seen) >= 3, "no worker was restarted"
    # what is left: the files of at most the two live workers, and one archive per counter type
    assert len(owners) - 1 <= 2
    assert sorted(owners["archive"]) == ["counter_archive.db", "histogram_archive.db"]
    assert counted == len(answers)
