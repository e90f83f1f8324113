"""Release in place: stable's own model service loads the new version, and loads the old one back
when the release fails."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model_service.artifacts import save_artifact
from tests.router.rollout.live import ACTIVE, Admin, Stack, Traffic, check_named, judged, shut
from tests.servers import ServerProcess, model_service, router, serving_pids, wait_until

pytestmark = pytest.mark.slow

MODEL_TOKEN = "model-secret"
WORKERS = 2  # the model service's worker processes (WEB_CONCURRENCY of tests.servers)
PROPAGATION_S = 1.0  # the other worker of the service follows a reload through its control file
PLAN = {
    "strategy": "release-in-place",
    "interval_s": 1,
    "min_requests": 30,
    "thresholds": {"max_p99_ratio": 5},
}  # before and after a reload are different minutes


def save_broken_version(root: Path, version: str = "v3") -> None:
    """Artifact ``version``: verified and loadable, but its model expects 5 features and gets 30."""
    data = load_breast_cancer()
    x, y = data.data, data.target
    pipeline = Pipeline(
        [
            ("scale", StandardScaler().fit(x)),
            ("model", LogisticRegression(max_iter=1000).fit(x[:, :5], y)),
        ]
    )
    save_artifact(
        pipeline,
        root / version,
        version=version,
        feature_names=[str(n) for n in data.feature_names],
        class_labels=[str(n) for n in data.target_names],
    )


@pytest.fixture(scope="module")
def release_stack(
    artifacts: Path,
    v2_service: ServerProcess,
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, ServerProcess]]:
    """A v1 service of its own (reloadable), behind a router allowed to reload it."""
    root = tmp_path_factory.mktemp("release-artifacts")
    for version in ("v1", "v2"):
        shutil.copytree(artifacts / version, root / version)
    save_broken_version(root)
    service = model_service("v1", root, log_dir, MODEL_ADMIN_TOKEN=MODEL_TOKEN)
    server = router(
        {"v1": service.url, "v2": v2_service.url},
        log_dir,
        f"sqlite:///{root / 'state.db'}",
        ROUTER_MODEL_ADMIN_TOKEN=MODEL_TOKEN,
    )
    try:
        service.wait_ready()
        server.wait_ready()
        yield Stack(server, Admin(server.url)), service
    finally:
        shut(server)
        shut(service)


def served(service: ServerProcess) -> str:
    return str(requests.get(service.url + "/version", timeout=5).json()["version"])


@pytest.fixture
def release(release_stack: tuple[Stack, ServerProcess]) -> tuple[Stack, ServerProcess]:
    """The release stack with the service serving v1 and no rollout running."""
    stack, service = release_stack
    rollout = stack.admin.rollout()
    if rollout and rollout["status"] in ACTIVE:
        stack.admin.call("POST", "/admin/rollback")
    resp = requests.post(
        service.url + "/admin/reload",
        json={"version": "v1"},
        timeout=30,
        headers={"Authorization": f"Bearer {MODEL_TOKEN}"},
    )
    assert resp.status_code == 200
    # every worker, not only the one that took the reload: the router's pooled connections
    # may reach either
    wait_until(lambda: len(serving_pids(service.url, "v1")) == WORKERS, 10)
    return stack, service


def test_a_good_release_reloads_stable_and_completes_the_bake(
    release: tuple[Stack, ServerProcess],
) -> None:
    stack, service = release
    with Traffic(stack.url) as traffic:
        started = time.time()
        stack.admin.start({**PLAN, "release_version": "v2"})
        rollout = stack.admin.wait_done()
    assert rollout["status"] == "promoted"
    decisions = judged(rollout)
    assert [(d["phase"], d["action"]) for d in decisions] == [
        ("reference", "reload"),
        ("bake", "complete"),
    ]
    assert rollout["restore_version"] == "v1"
    assert check_named(decisions[1], "error_rate_increase")["decision"] == "pass"
    assert served(service) == "v2"
    state = stack.admin.state()
    assert (state["strategy"], state["stable"]) == (
        "release-in-place",
        "v1",
    )  # the role did not move

    reload_at, done_at = decisions[0]["time"], decisions[1]["time"]
    before, after = (
        traffic.between(started, reload_at),
        traffic.between(reload_at + PROPAGATION_S, done_at),
    )
    assert before and after
    assert {(s.status, s.version, s.model_version) for s in before} == {(200, "v1", "v1")}
    # X-Model-Version names the version that answered: slot v1 now serves v2
    assert {(s.status, s.version, s.model_version) for s in after} == {(200, "v2", "v2")}


def test_a_release_that_cannot_load_leaves_stable_serving(
    release: tuple[Stack, ServerProcess],
) -> None:
    stack, service = release
    with Traffic(stack.url) as traffic:
        stack.admin.start({**PLAN, "release_version": "v9"})  # no such artifact
        rollout = stack.admin.wait_done()
    assert rollout["status"] == "rolled_back"
    decisions = judged(rollout)
    assert [(d["phase"], d["action"]) for d in decisions] == [("reference", "abort-reload-failed")]
    assert "404" in rollout["error"]
    assert served(service) == "v1"
    assert {(s.status, s.model_version) for s in traffic.sent} == {(200, "v1")}


def test_a_failing_release_is_reloaded_back(release: tuple[Stack, ServerProcess]) -> None:
    stack, service = release
    with Traffic(stack.url) as traffic:
        stack.admin.start({**PLAN, "release_version": "v3"})  # loads, then fails every prediction
        rollout = stack.admin.wait_done()
        rolled_back_at = time.time()
        wait_until(lambda: len(traffic.between(rolled_back_at + PROPAGATION_S)) >= 20, 20)
    assert rollout["status"] == "rolled_back"
    decisions = judged(rollout)
    assert [(d["phase"], d["action"], d["decision"]) for d in decisions] == [
        ("reference", "reload", "pass"),
        ("bake", "rollback", "fail"),
    ]
    errors = check_named(decisions[1], "error_rate_increase")
    assert errors["decision"] == "fail" and errors["value"] > 0.5
    assert served(service) == "v1"
    reload_at = decisions[0]["time"]
    failed = [s for s in traffic.between(reload_at, rolled_back_at) if s.status != 200]
    assert failed and {s.status for s in failed} == {500}
    later = traffic.between(rolled_back_at + PROPAGATION_S)
    assert later and {(s.status, s.model_version) for s in later} == {(200, "v1")}
