"""Every ``rollout`` command against a real router in front of the real v1 and v2 services."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from router.cli import main
from tests.cli.conftest import SCRIPT, TOKEN, Runner, admin_get, script_env
from tests.servers import ServerProcess, free_port, router

ROW = [14.1, 19.3, 92.0, 654.9, 0.096, 0.104, 0.089, 0.049, 0.181, 0.063, 0.405, 1.217, 2.866,
       40.3, 0.007, 0.025, 0.032, 0.012, 0.021, 0.004, 16.3, 25.7, 107.3, 880.6, 0.132, 0.254,
       0.272, 0.115, 0.290, 0.084]


def test_status_shows_split_roles_and_artifacts(read_only: Runner,
                                                v1_service: ServerProcess) -> None:
    v1_meta = requests.get(v1_service.url + "/version", timeout=5).json()

    result = read_only("status")

    assert result.code == 0, result.err
    lines = {key: value.strip() for key, value in
             (line.split(":", 1) for line in result.out.splitlines())}
    assert (lines["strategy"], lines["split"]) == ("release-in-place", "v1 100%")
    assert lines["rollout"] == "none"
    assert lines["config version"] == "1"
    assert lines["stable"].startswith("v1 ") and v1_meta["sha256"][:12] in lines["stable"]
    assert lines["candidate"].startswith("v2 ") and "accuracy" in lines["candidate"]


def test_status_json_carries_state_and_metadata(read_only: Runner,
                                                v2_service: ServerProcess) -> None:
    doc = json.loads(read_only("status", "--json").out)

    assert (doc["state"]["stable"], doc["state"]["candidate"]) == ("v1", "v2")
    assert doc["artifacts"]["v2"] == requests.get(v2_service.url + "/version", timeout=5).json()


def test_status_tolerates_an_unreachable_model_service(
        v1_service: ServerProcess, log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with router({"v1": v1_service.url, "v2": dead}, log_dir, str(tmp_path / "s.db"),
                token=TOKEN, WEB_CONCURRENCY="1") as server:
        server.wait_ready()
        monkeypatch.setenv("ROLLOUT_TOKEN", TOKEN)
        code = main(["status", "--url", server.url])

    assert code == 0
    candidate = next(line for line in capsys.readouterr().out.splitlines()
                     if line.startswith("candidate:"))
    assert "not reachable" in candidate and dead in candidate


def test_set_changes_strategy_and_split(rollout: Runner, stack: ServerProcess) -> None:
    result = rollout("set", "--strategy", "canary", "--weight", "25", "--reason", "first step",
                     "--if-match", "1")

    assert result.code == 0, result.err
    assert "v1 75%, v2 25%" in result.out
    state = admin_get(stack, "/admin/state")
    assert (state["strategy"], state["canary_weight"], state["config_version"]) == ("canary", 25, 2)


def test_set_prints_the_view_of_status(rollout: Runner, v2_service: ServerProcess) -> None:
    result = rollout("set", "--strategy", "canary", "--weight", "10")

    assert result.code == 0, result.err
    assert result.out == rollout("status").out
    sha256 = requests.get(v2_service.url + "/version", timeout=5).json()["sha256"]
    candidate = next(line for line in result.out.splitlines() if line.startswith("candidate:"))
    assert sha256[:12] in candidate and "accuracy" in candidate


def test_set_shadow_percent_json(rollout: Runner, stack: ServerProcess) -> None:
    result = rollout("--json", "set", "--strategy", "shadow", "--shadow-percent", "50")

    assert json.loads(result.out)["shadow_percent"] == 50
    assert admin_get(stack, "/admin/state")["strategy"] == "shadow"


def test_set_without_a_field_is_an_error(read_only: Runner) -> None:
    result = read_only("set", "--reason", "nothing")

    assert result.code == 2
    assert "nothing to set" in result.err


def test_promote_then_rollback(rollout: Runner, stack: ServerProcess) -> None:
    assert rollout("set", "--strategy", "canary", "--weight", "10").code == 0

    promoted = json.loads(rollout("promote", "--reason", "looks good", "--json").out)
    assert (promoted["stable"], promoted["candidate"]) == ("v2", "v1")

    assert rollout("set", "--weight", "30").code == 0
    rolled_back = rollout("rollback", "--reason", "too slow")
    assert rolled_back.code == 0
    assert "v2 100%" in rolled_back.out
    assert admin_get(stack, "/admin/state")["canary_weight"] == 0


def test_start_from_flags_then_pause_resume_and_abort(rollout: Runner,
                                                      stack: ServerProcess) -> None:
    started = rollout("start", "--strategy", "canary", "--steps", "5,25,50,100",
                      "--interval", "60", "--min-requests", "7", "--max-failed", "2",
                      "--threshold", "max_p99_ratio=2.5",
                      "--threshold", "max_error_rate_increase=0.01",
                      "--manual-promotion", "--reason", "release 2")
    assert started.code == 0, started.err
    assert "step 1 of 4 (5%)" in started.out

    plan = admin_get(stack, "/admin/rollout")["rollout"]["plan"]
    assert (plan["steps"], plan["interval_s"], plan["min_requests"]) == ([5, 25, 50, 100], 60, 7)
    assert (plan["max_failed_analyses"], plan["manual_promotion"]) == (2, True)
    assert plan["thresholds"]["max_latency_ratio"] == 2.5  # the old name, accepted
    assert plan["thresholds"]["max_error_rate_increase"] == 0.01

    paused = rollout("pause", "--reason", "lunch")
    assert paused.code == 0 and "is paused" in paused.out
    assert admin_get(stack, "/admin/rollout")["rollout"]["status"] == "paused"
    assert json.loads(rollout("resume", "--json").out)["rollout"]["status"] == "running"

    assert rollout("rollback").code == 0
    assert admin_get(stack, "/admin/rollout")["rollout"]["status"] == "aborted"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_start_from_a_plan_file_with_a_flag_override(rollout: Runner, stack: ServerProcess,
                                                     tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"plan{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"strategy": "canary", "steps": [10, 50, 100], "interval_s": 30,
                                    "min_requests": 20, "thresholds": {"max_p99_ratio": 3}}))
    else:
        path.write_text("strategy: canary\nsteps: [10, 50, 100]\ninterval_s: 30\n"
                        "min_requests: 20\nthresholds:\n  max_p99_ratio: 3\n")

    result = rollout("start", "--plan", str(path), "--interval", "45")

    assert result.code == 0, result.err
    plan = admin_get(stack, "/admin/rollout")["rollout"]["plan"]
    assert (plan["steps"], plan["min_requests"], plan["interval_s"]) == ([10, 50, 100], 20, 45)
    assert plan["thresholds"]["max_latency_ratio"] == 3  # the old name, accepted


def test_events_table_and_json(rollout: Runner) -> None:
    rollout("set", "--strategy", "canary", "--weight", "10", "--reason", "first step")
    rollout("set", "--weight", "20", "--reason", "second step")

    table = rollout("events").out.splitlines()
    assert table[0].split() == ["ID", "TIME", "CONFIG", "ACTOR", "ACTION", "CHANGE", "REASON"]
    assert len(table) == 3
    assert "canary_weight 0->10" in table[1] and table[1].endswith("first step")
    assert "canary_weight 10->20" in table[2] and "rollout-cli" in table[2]

    events = json.loads(rollout("events", "--json", "--limit", "1").out)["events"]
    assert [e["reason"] for e in events] == ["second step"]
    assert rollout("events", "--after", str(events[0]["id"])).out.strip() == "no events"


def test_events_show_the_whole_change(rollout: Runner) -> None:
    rollout("start", "--strategy", "shadow-then-canary", "--shadow-percent", "50",
            "--interval", "600", "--reason", "long change")
    event = json.loads(rollout("events", "--json", "--limit", "1").out)["events"][0]
    parts = [f"{key} {event['old'].get(key)}->{value}" for key, value in event["new"].items()
             if key != "rollout"] + ["rollout None->running"]
    assert len(", ".join(parts)) > 70  # longer than the column used to be

    header, first, *more = rollout("events", "--limit", "1").out.splitlines()

    column = header.index("CHANGE")
    assert more and first.endswith("long change")
    change = " ".join(line[column:].split("  ")[0] for line in [first, *more])
    assert "..." not in change
    for part in parts:
        assert part.replace("None", "none") in change
    assert all(line[:column].strip() == "" for line in more)


@pytest.fixture
def traffic(stack: ServerProcess) -> Iterator[None]:
    """Client requests through the router from a thread, each with its own user key."""
    stop = threading.Event()

    def send() -> None:
        with requests.Session() as session:
            user = 0
            while not stop.is_set():
                user += 1
                session.post(stack.url + "/predict", json={"instances": [ROW]},
                             headers={"X-User-ID": f"user-{user}"}, timeout=5)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


@pytest.mark.usefixtures("traffic")
def test_watch_exits_0_when_the_rollout_is_promoted(rollout: Runner, stack: ServerProcess) -> None:
    started = rollout("start", "--strategy", "canary", "--steps", "20,50,100", "--interval", "0.5",
                      "--min-requests", "10", "--threshold", "max_p99_ratio=1000")
    assert started.code == 0, started.err

    result = rollout("watch", "--interval", "0.2", "--give-up-after", "120")

    assert result.code == 0, result.err + result.out
    assert "decision: pass -> advance" in result.out
    assert "decision: pass -> promote" in result.out
    assert result.out.splitlines()[-1].endswith("promoted; stable is now v2")
    assert admin_get(stack, "/admin/state")["stable"] == "v2"

    history = rollout("history")
    assert history.code == 0, history.err
    header, row = history.out.splitlines()
    assert header.split()[:7] == ["ID", "VERSION", "SLOT", "STRATEGY", "STARTED", "ENDED",
                                  "OUTCOME"]
    assert row.split()[1:4] == ["v2", "v2", "canary"] and "promoted" in row.split()
    [record] = json.loads(rollout("history", "--json").out)["releases"]
    assert (record["version"], record["slot"], record["outcome"]) == ("v2", "v2", "promoted")
    assert record["config_versions"] and record["analyses"] >= 2
    assert "slots" in rollout("status").out


@pytest.mark.parametrize("as_json", [False, True])
def test_watch_exits_1_when_the_rollout_is_aborted(rollout: Runner, stack: ServerProcess,
                                                   as_json: bool) -> None:
    rollout("start", "--strategy", "canary", "--steps", "10,100", "--interval", "600")
    argv = [str(SCRIPT), "watch", "--interval", "0.2", *(["--json"] if as_json else [])]
    with subprocess.Popen(argv, env=script_env(stack.url), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as watch:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the first refresh: watch is following the rollout
        assert rollout("rollback", "--reason", "abort").code == 0
        out, err = watch.communicate(timeout=60)

    assert watch.returncode == 1, err
    if as_json:
        assert json.loads(first)["state"]["rollout"]["status"] == "running"
        last = json.loads(out.splitlines()[-1])
        assert last["state"]["rollout"]["status"] == "aborted"
        assert "versions" in last["analysis"]
    else:
        assert " running: canary" in first
        assert out.splitlines()[-1].endswith("aborted; stable is now v1")


def test_watch_without_a_rollout_says_so(read_only: Runner) -> None:
    result = read_only("watch")

    assert (result.code, result.err) == (3, "")
    assert result.out.splitlines() == ["no rollout is running; none has run on this router yet"]


def test_watch_after_a_rollout_ended_names_it_and_exits_3(rollout: Runner) -> None:
    started = json.loads(rollout("start", "--strategy", "canary", "--steps", "10,100",
                                 "--interval", "600", "--json").out)
    rollout("rollback", "--reason", "abort")

    result = rollout("watch")
    as_json = rollout("watch", "--json")

    assert result.code == as_json.code == 3
    rollout_id = started["rollout"]["id"]
    lines = result.out.splitlines()
    assert lines[0] == "no rollout is running"
    assert lines[1].startswith(f"last rollout: {rollout_id} (canary of v2) aborted at ")
    assert len(lines) == 2
    assert json.loads(as_json.out)["state"]["rollout"]["id"] == rollout_id
