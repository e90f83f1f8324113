"""``rollout simulate``: the real controller and judge on seeded synthetic traffic and a simulated
clock, how often they roll back good and harmful candidates, and the command line around them."""

from __future__ import annotations

import ast
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest.fixed_margin_judge import fixed_margin_analyse
from router.simulate import Arrivals, Outcome, Traffic, plan_for, simulate

ROOT = Path(__file__).resolve().parents[2]
# the plan the release targets name: canary steps 10, 25, 50, 100; an analysis every 30 s
PLAN = plan_for({"strategy": "canary", "steps": [10, 25, 50, 100], "interval_s": 30})


def request_log_columns() -> tuple[str, ...]:
    """The locustfile's REQUEST_LOG_COLUMNS, read from its source: importing it patches gevent."""
    tree = ast.parse((ROOT / "loadtest" / "locustfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "REQUEST_LOG_COLUMNS" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("loadtest/locustfile.py defines no REQUEST_LOG_COLUMNS")


def write_log(path: Path, rps: float, seconds: float, users: int, start: float = 1.7e9) -> Path:
    """A request log as the locustfile writes it: ``rps`` requests a second from ``users`` users."""
    columns = request_log_columns()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i in range(int(rps * seconds)):
            row = {
                "start_time": f"{start + i / rps:.3f}",
                "user": f"user-{i % users}",
                "name": "/predict",
                "version": "v1",
                "model_version": "v1",
                "status": "200",
                "rows": "1",
                "response_time_ms": "12.5",
                "failed": "False",
                "reason": "",
                "correct": "1",
            }
            writer.writerow([row[c] for c in columns])
    return path


def assert_all_decided(outcome: Outcome) -> dict:
    summary = outcome.summary()
    assert summary["promoted"] + summary["rolled_back"] + summary["undecided"] == pytest.approx(1)
    return summary


# -- how often the judge rolls back ------------------------------------------------------------------

RUNS = 100  # per cell; a rate of 1 % has a binomial standard error of 1 % over 100 runs


@pytest.mark.parametrize(
    ("base", "rps"), [(0.0, 5), (0.0, 200), (0.05, 5), (0.05, 200), (0.10, 5), (0.10, 200)]
)
def test_good_candidates_are_rarely_rolled_back(base: float, rps: float) -> None:
    traffic = Traffic(rps=rps, stable_error_rate=base, candidate_error_rate=base)
    summary = assert_all_decided(simulate(PLAN, traffic, RUNS, seed=20))
    # the judge's promise: at most 1 % (confidence 0.99); tolerance 1 % + 1 SE over 100 runs
    assert summary["rolled_back"] <= 0.02
    assert summary["promoted"] >= 0.98
    if rps == 200:  # one analysis per step before 100; at 5 req/s steps wait for their 100 requests
        assert summary["analyses_p50"] == 3 and 89 <= summary["seconds_p95"] <= 91


def test_the_fixed_margin_judge_rolls_back_good_candidates_far_more_often() -> None:
    # 1 % base errors at 5 requests a second: a 10 % canary sees a few dozen requests per step
    traffic = Traffic(rps=5, stable_error_rate=0.01, candidate_error_rate=0.01)
    anytime = simulate(PLAN, traffic, RUNS, seed=21).summary()
    fixed = simulate(PLAN, traffic, RUNS, seed=21, analyse_fn=fixed_margin_analyse).summary()
    assert anytime["rolled_back"] <= 0.02  # 1 % + 1 SE, as above
    # the fixed margin compares raw rates on each step's counts: a fifth to a quarter of these
    # good candidates fail (21.5 % of 200 runs at seed 1, 27 % of these 100); 10 % is over
    # 3 SE (4.3 points over 100 runs) below 25 %
    assert fixed["rolled_back"] >= 0.10


def test_a_candidate_with_ten_points_more_errors_is_caught_before_half_the_traffic() -> None:
    traffic = Traffic(rps=20, stable_error_rate=0.01, candidate_error_rate=0.11)
    summary = assert_all_decided(simulate(PLAN, traffic, 200, seed=22))
    # about 94 % over 1000 runs (seed 11); 90 % is 2 SE (1.7 points) below that over 200 runs
    assert summary["rolled_back"] >= 0.90
    assert summary["rolled_back_by_50"] >= 0.90  # caught while it had at most 50 % of traffic


def test_a_simulation_repeats_for_its_seed() -> None:
    traffic = Traffic(rps=50, stable_error_rate=0.02, candidate_error_rate=0.02)
    first = simulate(PLAN, traffic, 5, seed=3)
    assert simulate(PLAN, traffic, 5, seed=3).runs == first.runs
    other = simulate(PLAN, traffic, 5, seed=4)
    assert [r.exposure for r in other.runs] != [r.exposure for r in first.runs]


# -- replaying a request log -------------------------------------------------------------------------


def test_a_request_log_gives_arrival_times_from_zero_and_numbered_users(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    columns = request_log_columns()
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        for start, user in (
            (1000.5, "bob"),
            (1000.0, "alice"),
            (1002.25, "bob"),
            (1001.0, "carol"),
        ):
            writer.writerow({"start_time": start, "user": user})
    arrivals = Arrivals.from_log(path)
    assert arrivals.times.tolist() == [0.0, 0.5, 1.0, 2.25]
    # users numbered in the order they first appear in the log, then sorted by time with it
    assert arrivals.users.tolist() == [1, 0, 2, 0]


def test_a_replayed_simulation_serves_the_users_of_the_log(tmp_path: Path) -> None:
    arrivals = Arrivals.from_log(write_log(tmp_path / "requests.csv", rps=20, seconds=60, users=50))
    assert len(arrivals.times) == 1200 and int(arrivals.users.max()) == 49
    outcome = simulate(PLAN, Traffic(users=1000), 5, seed=5, arrivals=arrivals)
    assert all(r.outcome == "promoted" for r in outcome.runs)
    # only the log's 50 users exist (Traffic's 1000 are ignored); about 20 requests a second
    assert all(0 < r.users_exposed <= 50 for r in outcome.runs)
    drawn = simulate(PLAN, Traffic(users=1000), 5, seed=5)
    assert all(r.users_exposed > 50 for r in drawn.runs)


LOG_ERRORS = [  # name, file content, the message
    (
        "no start_time column",
        "user,status\nalice,200\n",
        "is not a request log of the locustfile: no column start_time",
    ),
    ("no columns at all", "", "no column start_time, user"),
    (
        "start_time not a number",
        "start_time,user\nyesterday,alice\n",
        "start_time 'yesterday' is not a number",
    ),
    ("no requests", "start_time,user\n", "holds no requests"),
]


@pytest.mark.parametrize(
    ("content", "message"), [c[1:] for c in LOG_ERRORS], ids=[c[0] for c in LOG_ERRORS]
)
def test_a_file_that_is_not_a_request_log_is_refused(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "log.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        Arrivals.from_log(path)


# -- the command line --------------------------------------------------------------------------------


def rollout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "simulate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_prints_a_summary() -> None:
    done = rollout("--runs", "20", "--rps", "50", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress on a pipe
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "canary, steps 10,25,50,100, analyses every 30 s; 50 req/s; errors stable "
        "0.01, candidate 0.01; candidate latency x1"
    )
    fields = dict(line.split(":", 1) for line in lines[1:])
    assert [k.strip() for k in fields] == [
        "runs",
        "promoted",
        "rolled back",
        "undecided",
        "to the decision",
        "exposure (requests)",
        "users exposed",
        "analyses",
    ]
    assert fields["runs"].strip() == "20" and fields["promoted"].strip() == "100.0%"
    assert fields["rolled back"].strip().startswith("0.0% (0.0% before the candidate had more")
    # three analyses 30 s apart from the first tick: 91 s, 1.5 minutes
    assert fields["to the decision"].strip() == "p50 1.5 min, p95 1.5 min"
    assert re.fullmatch(
        r" +p50 \d+, p95 \d+ \(of about 50 a second\)", fields["exposure (requests)"]
    )
    assert fields["analyses"].strip() == "p50 3"


def test_the_command_prints_json_with_the_plan_and_the_traffic() -> None:
    done = rollout("--runs", "10", "--rps", "20", "--candidate-error-rate", "0.4", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["runs"] == 10 and doc["rolled_back"] == 1.0 and doc["promoted"] == 0.0
    assert doc["plan"]["steps"] == [10, 25, 50, 100] and doc["plan"]["interval_s"] == 30
    assert doc["traffic"]["candidate_error_rate"] == 0.4 and doc["traffic"]["rps"] == 20
    assert doc["rolled_back_by_50"] == 1.0 and doc["seconds_p95"] <= 120


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The command's output for a replay of a 5-requests-a-second log of 200 users."""
    log = write_log(
        tmp_path_factory.mktemp("replay") / "requests.csv", rps=5, seconds=120, users=200
    )
    done = rollout("--runs", "4", "--seed", "2", "--replay", str(log))
    assert done.returncode == 0, done.stderr
    return log, done.stdout


def test_the_command_replays_a_request_log(replayed: tuple[Path, str]) -> None:
    log, out = replayed
    assert f"; replay of {log} (" in out.splitlines()[0]
    assert re.search(r"^runs: +4$", out, re.MULTILINE)
    assert re.search(r"^promoted: +100\.0%$", out, re.MULTILINE)


def test_a_replay_states_the_rate_of_its_log(replayed: tuple[Path, str]) -> None:
    _, out = replayed
    (exposure,) = [line for line in out.splitlines() if line.startswith("exposure")]
    assert re.search(r"of about 5(\.\d+)? a second", exposure), exposure


BAD_INPUT = [  # name, arguments, the message after "rollout: error: "
    (
        "an error rate above 1",
        ["--stable-error-rate", "2"],
        "--stable-error-rate must be a share from 0 to 1, got 2.0",
    ),
    (
        "a missing replay file",
        ["--replay", "no-such-log.csv"],
        "cannot read no-such-log.csv: No such file or directory",
    ),
    (
        "a CSV without start_time",
        ["--replay", "{tmp}/bad.csv"],
        "{tmp}/bad.csv is not a request log of the locustfile: no column start_time (write one "
        "with --request-log)",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.csv").write_text("user,status\nalice,200\n")
    done = rollout(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--runs", "1")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"rollout: error: {message.replace('{tmp}', str(tmp_path))}\n"


def test_the_default_plan_is_the_one_the_targets_name() -> None:
    assert PLAN.strategy == "canary" and PLAN.steps == (10, 25, 50, 100)
    assert PLAN.interval_s == 30 and PLAN.min_requests == 100 and PLAN.max_failed_analyses == 1
    assert PLAN.thresholds.confidence == 0.99 and PLAN.candidate == "v2"
    assert np.isclose(PLAN.thresholds.max_error_rate_increase, 0.02)
