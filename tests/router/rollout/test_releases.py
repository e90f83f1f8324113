"""Continuous releases: v2, v3 and v4 released in turn through two slots, with no restart.

Two model services are the slots ``blue`` and ``green``, both starting on v1; one router in
front of them. Under client traffic the whole time, v2 goes into green by shadow-then-canary, v3
into blue by blue-green, and v4, a version that fails every prediction, into green by canary,
where it is rolled back. No process is restarted; the history, the per-version metrics and the
audit log tell the story afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model_service.packager import Evaluation, package_model
from tests.router.rollout.live import Admin, Stack, Traffic, scrape, shut
from tests.router.rollout.test_release_in_place import save_broken_version
from tests.servers import ServerProcess, model_service, router

pytestmark = pytest.mark.slow
MODEL_TOKEN = "slot-secret"
LENIENT = {"max_p99_ratio": 20, "min_agreement": 0.8}  # different models, different speeds
TRUST = ["numpy.dtype"]


def package_v3(root: Path) -> None:
    """v3: a more strongly regularised logistic regression, packaged like a user's own."""
    data = load_breast_cancer()
    names = np.asarray(data.target_names)[data.target]
    pipeline = Pipeline([("scale", StandardScaler()),
                         ("model", LogisticRegression(C=0.05, max_iter=2000))])
    pipeline.fit(data.data[::2], names[::2])
    table = pd.DataFrame(data.data[1::2], columns=[str(n) for n in data.feature_names])
    table["diagnosis"] = names[1::2]
    evaluation = Evaluation.from_frame(table, "diagnosis", {"source": "odd rows"})
    package_model(pipeline, "v3", evaluation, root, description="logistic regression, C=0.05",
                  trust=TRUST)


@pytest.fixture(scope="module")
def slots(artifacts: Path, log_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, ServerProcess]]]:
    root = tmp_path_factory.mktemp("slot-artifacts")
    for version in ("v1", "v2"):
        shutil.copytree(artifacts / version, root / version)
    package_v3(root)
    save_broken_version(root, "v4")  # loads, then fails every prediction
    services = {name: model_service("v1", root, log_dir, MODEL_ADMIN_TOKEN=MODEL_TOKEN)
                for name in ("blue", "green")}
    try:
        for service in services.values():
            service.wait_ready(90)
        server = router({name: s.url for name, s in services.items()}, log_dir,
                        f"sqlite:///{root / 'state.db'}", ROUTER_MODEL_ADMIN_TOKEN=MODEL_TOKEN,
                        ROUTER_STABLE="blue", ROUTER_CANDIDATE="green")
        try:
            server.wait_ready(60)
            yield Stack(server, Admin(server.url)), services
        finally:
            shut(server)
    finally:
        for service in services.values():
            shut(service)


def test_v2_v3_v4_through_two_slots_with_three_strategies_and_no_restart(
        slots: tuple[Stack, dict[str, ServerProcess]]) -> None:
    stack, services = slots
    admin = stack.admin
    pids = {name: s.proc.pid for name, s in {**services, "router": stack.router}.items()}
    state = admin.state()
    assert {n: s["version"] for n, s in state["slots"].items()} == {"blue": "v1", "green": "v1"}

    with Traffic(stack.url) as traffic:
        # v2 into the idle slot (green), shadow first, then a canary
        admin.start({"strategy": "shadow-then-canary", "version": "v2", "steps": [50, 100],
                     "interval_s": 1, "min_requests": 20, "thresholds": LENIENT})
        v2 = admin.wait_done(90)
        after_v2 = admin.state()
        # a release names what it releases: blue, now idle, serves the version v2 replaced
        refused = admin.call("POST", "/admin/rollout", 409, json={"strategy": "canary"})
        # v3 into the slot v2 left idle (blue), blue-green
        admin.start({"strategy": "blue-green", "version": "v3", "interval_s": 1,
                     "min_requests": 20, "thresholds": LENIENT})
        v3 = admin.wait_done(90)
        after_v3 = admin.state()
        # v4, which fails every prediction, into green again: a canary that rolls back
        admin.start({"strategy": "canary", "version": "v4", "steps": [20, 50, 100],
                     "interval_s": 1, "min_requests": 20, "thresholds": LENIENT})
        v4 = admin.wait_done(90)
        final = admin.state()
    sent = traffic.sent

    assert (v2["status"], after_v2["stable"], after_v2["stable_version"]) == (
        "promoted", "green", "v2")
    assert after_v2["slots"]["blue"] == {**after_v2["slots"]["blue"], "version": "v1",
                                         "role": "candidate", "idle": True}
    assert refused["error"]["code"] == "name_the_version"
    assert (v3["status"], after_v3["stable"], after_v3["stable_version"]) == (
        "promoted", "blue", "v3")
    assert v4["status"] == "rolled_back"
    assert (final["stable"], final["stable_version"], final["canary_weight"]) == ("blue", "v3", 0)
    assert final["slots"]["green"]["version"] == "v4" and final["slots"]["green"]["idle"]

    # every client answer: 200 from a released version, or the bad version's own errors
    failed = [s for s in sent if s.status != 200]
    assert sent and {s.version for s in sent if s.status == 200} <= {"v1", "v2", "v3"}
    assert failed and {(s.status, s.version) for s in failed} == {(500, "v4")}
    assert all(s.version == s.model_version for s in sent if s.status == 200)

    history = admin.call("GET", "/admin/releases")["releases"]
    assert [(r["version"], r["slot"], r["strategy"], r["outcome"]) for r in history] == [
        ("v2", "green", "shadow-then-canary", "promoted"),
        ("v3", "blue", "blue-green", "promoted"),
        ("v4", "green", "canary", "rolled_back"),
    ]
    assert "error_rate" in history[2]["why"]
    for record in history:
        assert record["analyses"] >= 1 and record["ended_at"] >= record["started_at"]
        written = record["config_versions"]
        assert written == sorted(written) and len(set(written)) == len(written) >= 2
    assert history[0]["config_versions"][-1] < history[1]["config_versions"][0]

    requests_by = {labels: v for (name, labels), v in scrape(stack.url).items()
                   if name == "router_requests_total"}
    labelled = {dict(labels)["version"] for labels in requests_by}
    assert labelled >= {"v1", "v2", "v3", "v4"} and not labelled & {"blue", "green"}

    actions = [e["action"] for e in admin.events()]
    for release in ("rollout.load", "rollout.loaded", "rollout.promote", "rollout.complete",
                    "rollout.rollback"):
        assert release in actions
    assert {name: s.proc.pid for name, s in {**services, "router": stack.router}.items()} == pids
    assert all(s.proc.poll() is None for s in (*services.values(), stack.router))


def test_a_load_that_fails_aborts_and_changes_no_traffic(
        slots: tuple[Stack, dict[str, ServerProcess]]) -> None:
    stack, _ = slots
    before = stack.admin.state()

    stack.admin.start({"strategy": "canary", "version": "v9", "steps": [50, 100],
                       "interval_s": 1, "min_requests": 20})
    rollout = stack.admin.wait_done(30)

    after = stack.admin.state()
    assert rollout["status"] == "aborted" and rollout["phase"] == "done"
    assert "loading v9 into slot" in rollout["error"] and "404" in rollout["error"]
    assert (after["stable"], after["stable_version"], after["weights"]) == (
        before["stable"], before["stable_version"], before["weights"])
    assert stack.admin.call("GET", "/admin/releases")["releases"][-1]["outcome"] == "aborted"


def test_a_slot_that_changes_version_mid_rollout_aborts_it(
        slots: tuple[Stack, dict[str, ServerProcess]]) -> None:
    stack, services = slots
    stable = stack.admin.state()["stable"]
    idle = "green" if stable == "blue" else "blue"
    with Traffic(stack.url):
        stack.admin.start({"strategy": "canary", "version": "v2", "steps": [30, 100],
                           "interval_s": 1, "min_requests": 10**6})  # waits, never passes
        stack.admin.wait_for(lambda r: r["phase"] == "canary", 30)
        requests.post(services[idle].url + "/admin/reload", json={"version": "v1"}, timeout=30,
                      headers={"Authorization": f"Bearer {MODEL_TOKEN}"}).raise_for_status()
        rollout = stack.admin.wait_done(30)
    state = stack.admin.state()

    assert rollout["status"] == "aborted"
    assert f"slot {idle} now serves v1, not v2" in rollout["error"]
    assert (state["stable"], state["canary_weight"]) == (stable, 0)


def test_a_slot_redeployed_on_its_port_is_seen_and_gets_only_what_it_reports(
        artifacts: Path, log_dir: Path, tmp_path: Path) -> None:
    """A `git push` of a new build to the idle app: the slot comes back serving other artifacts."""
    first, second = tmp_path / "build-1", tmp_path / "build-2"
    shutil.copytree(artifacts / "v1", first / "v1")
    shutil.copytree(artifacts / "v2", second / "v2")
    blue = model_service("v1", first, log_dir, MODEL_ADMIN_TOKEN=MODEL_TOKEN)
    green = model_service("v1", first, log_dir, MODEL_ADMIN_TOKEN=MODEL_TOKEN)
    redeployed: ServerProcess | None = None
    try:
        blue.wait_ready(90)
        green.wait_ready(90)
        with router({"blue": blue.url, "green": green.url}, log_dir,
                     f"sqlite:///{tmp_path / 'state.db'}", ROUTER_MODEL_ADMIN_TOKEN=MODEL_TOKEN,
                     ROUTER_STABLE="blue", ROUTER_CANDIDATE="green") as front:
            front.wait_ready(60)
            admin = Admin(front.url)
            assert admin.state()["slots"]["green"]["version"] == "v1"
            port = green.port
            shut(green)
            redeployed = model_service("v2", second, log_dir, MODEL_ADMIN_TOKEN=MODEL_TOKEN,
                                       port=port)
            redeployed.wait_ready(90)

            assert admin.state()["slots"]["green"]["version"] == "v2"
            admin.start({"strategy": "canary", "version": "v3", "steps": [50, 100],
                         "interval_s": 1, "min_requests": 10})
            refused = admin.wait_done(30)
            assert refused["status"] == "aborted" and "404" in refused["error"]
            with Traffic(front.url) as traffic:
                admin.start({"strategy": "canary", "version": "v2", "steps": [50, 100],
                             "interval_s": 1, "min_requests": 10})
                released = admin.wait_done(60)
            assert released["status"] == "promoted"
            assert admin.state()["stable_version"] == "v2"
            assert {s.version for s in traffic.sent if s.status == 200} <= {"v1", "v2"}
            assert all(s.status == 200 for s in traffic.sent)
            history = admin.call("GET", "/admin/releases")["releases"]
        # the history lives in the state store: a new router on it reads the same
        with router({"blue": blue.url, "green": green.url}, log_dir,
                    f"sqlite:///{tmp_path / 'state.db'}") as restarted:
            restarted.wait_ready(60)
            assert Admin(restarted.url).call("GET", "/admin/releases")["releases"] == history
            assert [(r["version"], r["outcome"]) for r in history] == [
                ("v3", "aborted"), ("v2", "promoted")]
    finally:
        for server in (blue, green, redeployed):
            if server is not None:
                shut(server)
