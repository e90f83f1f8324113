"""Shadow-then-canary: agreement measured on mirrored live traffic, then the canary steps."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from model_service.artifacts import load_artifact
from tests.router.rollout.live import (
    ROWS,
    Stack,
    Traffic,
    check_named,
    judged,
    metric,
    scrape,
    wait_every_worker_counts,
)
from tests.servers import wait_until

pytestmark = pytest.mark.slow

BATCH = 16


def offline_agreement(artifacts: Path, rows: list[list[float]]) -> tuple[int, int]:
    """(agree, disagree) of v1 and v2 predicting each row on its own, as one request each."""
    matrix = np.array(rows)
    v1, _ = load_artifact(artifacts, "v1").predict(matrix)
    v2, _ = load_artifact(artifacts, "v2").predict(matrix)
    agree = int(np.count_nonzero(v1 == v2))
    return agree, len(rows) - agree


def test_live_shadow_agreement_matches_offline_then_canary_promotes(
    shared: Stack, artifacts: Path
) -> None:
    router, admin = shared.router, shared.admin
    expected_agree, expected_disagree = offline_agreement(artifacts, ROWS)
    assert 0 < expected_disagree < len(ROWS)  # two genuinely different models

    plan = {
        "strategy": "shadow-then-canary",
        "steps": [50, 100],
        "interval_s": 1,
        "min_requests": 30,
        "thresholds": {"min_agreement": 0.9},
    }
    state = admin.start(plan)
    assert (state["strategy"], state["shadow_percent"], state["weights"]) == (
        "shadow",
        100,
        {"v1": 100, "v2": 0},
    )
    paused = admin.call("POST", "/admin/rollout/pause")["rollout"]
    assert paused["status"] == "paused"  # mirroring goes on, no verdicts meanwhile
    wait_every_worker_counts(router.url, "router_shadow_requests_total", version="v2")

    def send(i: int) -> str:
        resp = requests.post(router.url + "/predict", json={"instances": [ROWS[i]]}, timeout=10)
        assert resp.status_code == 200
        return resp.headers["X-Model-Version"]

    before = scrape(router.url)

    def mirrored(n: int) -> dict | None:
        after = scrape(router.url)
        name = "router_shadow_requests_total"
        done = metric(after, name, version="v2") - metric(before, name, version="v2")
        return after if done >= n else None

    # in batches the shadow queue can hold, so that no copy is dropped (a full queue drops them)
    answered: list[str] = []
    with ThreadPoolExecutor(3) as pool:
        for start in range(0, len(ROWS), BATCH):
            answered += pool.map(send, range(start, min(start + BATCH, len(ROWS))))
            sent = len(answered)
            after = wait_until(lambda n=sent: mirrored(n), 20)
    assert answered == ["v1"] * len(ROWS)  # the shadow never answers a client

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("router_shadow_requests_total", version="v2", outcome="ok") == len(ROWS)
    agree = delta("router_shadow_comparisons_total", result="agree", stable="v1", candidate="v2")
    disagree = delta(
        "router_shadow_comparisons_total", result="disagree", stable="v1", candidate="v2"
    )
    assert (agree, disagree) == (expected_agree, expected_disagree)
    assert agree / (agree + disagree) == expected_agree / len(ROWS)
    assert delta("router_shadow_probability_diff_count", stable="v1", candidate="v2") == len(ROWS)

    assert admin.call("POST", "/admin/rollout/resume")["rollout"]["status"] == "running"
    with Traffic(router.url):
        rollout = admin.wait_done()
    assert rollout["status"] == "promoted"
    decisions = judged(rollout)
    assert [(d["phase"], d["action"]) for d in decisions] == [
        ("shadow", "advance"),
        ("canary", "promote"),
    ]
    shadow = decisions[0]
    agreement = check_named(shadow, "agreement")
    assert agreement["decision"] == "pass" and agreement["threshold"] == 0.9
    assert agreement["value"] >= 0.9
    assert shadow["samples"]["compared"] >= 30
    assert admin.state()["stable"] == "v2"
