"""The quality check in live rollouts: a v2 whose latency and errors match v1's but whose
predictions are clearly worse, released by canary with labels sent back through POST /feedback.

Service metrics alone promote it; the quality check (``max_accuracy_drop``) rolls it back; a
good v2 waits for its labels, saying how many more it needs, and is promoted once they come.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from loadtest.harness import ensure_degraded_artifacts
from tests.router.rollout.live import Admin, StartRouter, StartService, check_named, judged

pytestmark = pytest.mark.slow
FEEDBACK_TOKEN = "quality-secret"
DATA = load_breast_cancer()
TRUTH = np.asarray(DATA.target_names)[DATA.target].tolist()
ROWS = DATA.data.tolist()
# service checks and the quality check; two steps so that a canary passes one before promoting
PLAN = {"strategy": "canary", "steps": [50, 100], "interval_s": 1, "min_requests": 40,
        "min_labels": 600}
QUALITY = {"max_accuracy_drop": 0.05}


class LabelledTraffic:
    """Client threads: each prediction, then (while ``labelling`` is set) its true label."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.labelling = threading.Event()
        self.labelled = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> LabelledTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, index: int) -> None:
        auth = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
        with requests.Session() as session:
            i = index * 97
            while not self._stop.is_set():
                row = i % len(ROWS)
                i += 1
                try:
                    resp = session.post(self.url + "/predict", json={"instances": [ROWS[row]]},
                                        timeout=10)
                    if resp.status_code != 200 or not self.labelling.is_set():
                        continue
                    doc = {"request_id": resp.headers["X-Request-ID"], "labels": [TRUTH[row]]}
                    answer = session.post(self.url + "/feedback", json=doc, headers=auth,
                                          timeout=10)
                    assert answer.status_code == 200, answer.text
                    with self._lock:
                        self.labelled += 1
                except requests.RequestException:
                    time.sleep(0.05)


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 as trained and a v2 of the same pipeline trained on mislabelled rows."""
    return ensure_degraded_artifacts(tmp_path_factory.mktemp("degraded"))


@pytest.fixture
def stack(start_service: StartService, start_router: StartRouter,
          request: pytest.FixtureRequest) -> Iterator[tuple[str, Admin]]:
    root = request.getfixturevalue(request.param) if request.param else None
    v1 = start_service("v1", root=root, wait=False)
    v2 = start_service("v2", root=root, wait=False)
    # one worker: a label reaches the process that answered (with more it is in the store
    # within a flush interval)
    router = start_router({"v1": v1.url, "v2": v2.url}, wait=False, WEB_CONCURRENCY="1",
                          ROUTER_FEEDBACK_TOKEN=FEEDBACK_TOKEN)
    for server in (v1, v2, router):
        server.wait_ready(90)  # three processes loading scikit-learn at once on a small machine
    yield router.url, Admin(router.url)


def final(rollout: dict[str, Any]) -> dict[str, Any]:
    return judged(rollout)[-1]


@pytest.mark.parametrize("stack", ["degraded"], indirect=True)
def test_service_metrics_alone_promote_a_worse_model_and_the_quality_check_rolls_it_back(
    stack: tuple[str, Admin]
) -> None:
    url, admin = stack
    with LabelledTraffic(url) as traffic:
        traffic.labelling.set()
        admin.start(PLAN)  # errors and latency only
        blind = admin.wait_done(120)
        assert blind["status"] == "promoted", blind["decisions"]
        assert all(c["name"] != "accuracy_drop" for d in judged(blind) for c in d["checks"])

        admin.call("PATCH", "/admin/state", json={"stable": "v1", "candidate": "v2",
                                                  "strategy": "canary", "canary_weight": 0})
        admin.start({**PLAN, "thresholds": QUALITY})
        watched = admin.wait_done(180)
    assert watched["status"] == "rolled_back", [(d["action"], d["checks"], d["samples"])
                                                for d in watched["decisions"]]
    decision = final(watched)
    check = check_named(decision, "accuracy_drop")
    assert check["decision"] == "fail"
    assert check["interval"][0] > QUALITY["max_accuracy_drop"]  # the drop shown beyond the limit
    assert check["value"] > 0.1  # v2 is wrong on about a fifth more rows
    assert check_named(decision, "error_rate_increase")["decision"] == "pass"
    assert decision["samples"]["candidate_labelled"] > 0
    assert "input_drift" in decision  # what the slots said of their inputs meanwhile


@pytest.mark.parametrize("stack", [None], indirect=True)
def test_a_good_model_waits_for_its_labels_then_is_promoted(stack: tuple[str, Admin]) -> None:
    url, admin = stack
    with LabelledTraffic(url) as traffic:
        admin.start({**PLAN, "thresholds": QUALITY})
        waiting = admin.wait_for(lambda r: any(
            d.get("needed_labels") for d in r["decisions"]), 60)
        decision = [d for d in waiting["decisions"] if d.get("needed_labels")][-1]
        assert decision["decision"] == "wait" and decision["needed_labels"] == PLAN["min_labels"]
        assert check_named(decision, "labels")["decision"] == "wait"
        traffic.labelling.set()
        done = admin.wait_done(180)
    assert done["status"] == "promoted", done["decisions"]
    assert check_named(final(done), "accuracy_drop")["decision"] == "pass"
    assert traffic.labelled >= PLAN["min_labels"]
