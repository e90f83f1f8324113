"""Release v2 under load with each strategy and measure what users experience.

    python -m loadtest.compare --seconds-per-phase 30 --users 20 --out comparison
    python -m loadtest.compare --scenarios good,bad-errors --strategies blue-green,canary
    python -m loadtest.compare --scenarios bad-quality,bad-quality-checked \
        --strategies canary,shadow --out comparison-quality

For every scenario (what v2 is) and strategy (how it is released) the run starts fresh v1, v2
and router processes, runs Locust headless against the router (``loadtest/locustfile.py``,
``--csv`` with ``--csv-full-history``), releases v2 after the "before" phase, waits for the
router's final decision, keeps the load on for the "after" phase, then stops everything. The
folder given by ``--out`` receives ``report.md`` (one table per scenario), ``plots/*.png`` and,
under ``csv/<scenario>/<strategy>/``, Locust's CSV files, the request log and the run's timeline.

The exit code is 1 when a run broke (a process did not start, Locust crashed or its totals
disagree with the request log), 2 for bad arguments, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.compare_measures import (
    LOCUST_PREFIX,
    REQUEST_LOG,
    Timeline,
    disagreements,
    read_locust_totals,
    read_requests,
)
from loadtest.compare_release import (
    CANDIDATE,
    DEFAULT_RELEASES,
    DEFAULT_SCENARIOS,
    FINAL,
    RELEASES,
    SCENARIOS,
    STABLE,
    Admin,
    Release,
    Scenario,
    StatePoller,
    read_outcome,
)
from loadtest.harness import (
    ROOT,
    Proc,
    ensure_artifacts,
    ensure_degraded_artifacts,
    free_port,
    model_service,
    router,
    start_together,
    stop_together,
)
from loadtest.report import MANIFEST, render

MODEL_TOKEN = "compare-model-admin"
FEEDBACK_TOKEN = "compare-feedback"


@dataclass(frozen=True)
class Options:
    seconds_per_phase: float
    users: int
    interval_s: float
    min_requests: int
    decision_timeout_s: float
    out: Path


@dataclass
class RunResult:
    scenario: Scenario
    release: Release
    folder: Path
    skipped: str | None = None
    broken: str | None = None


class Progress:
    """One line per phase of each run, on stderr."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.label = ""
        self.started = time.monotonic()

    def start(self, scenario: Scenario, release: Release) -> None:
        self.index += 1
        self.label = f"[{self.index}/{self.total}] {scenario.name} / {release.name}"
        self.started = time.monotonic()

    def line(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{self.label} {elapsed:5.1f}s: {message}", file=sys.stderr, flush=True)


def _start_locust(router_url: str, folder: Path, options: Options,
                  scenario: Scenario) -> subprocess.Popen[bytes]:
    limit = int(options.seconds_per_phase * 2 + options.decision_timeout_s + 300)
    argv = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
            "--host", router_url, "--headless", "-u", str(options.users), "-r", str(options.users),
            "--run-time", f"{limit}s", "--csv", str(folder / LOCUST_PREFIX), "--csv-full-history",
            "--request-log", str(folder / REQUEST_LOG), "--wait-ready", "120", "--only-summary",
            "--loglevel", "WARNING"]
    if scenario.feedback_share:
        argv += ["--feedback-share", f"{scenario.feedback_share:g}", "--feedback-token",
                 FEEDBACK_TOKEN]
    log = (folder / "locust.log").open("wb")
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _stop_locust(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("Locust did not stop within 60 s of SIGTERM") from None


def _wait_for_load(folder: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    log = folder / REQUEST_LOG
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Locust exited with {proc.returncode} before sending load; "
                               "see locust.log in the run's folder")
        if log.exists() and log.stat().st_size > 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no requests logged within {timeout_s:.0f} s")


def _restart_in_place(procs: list[Proc], port: int, scenario: Scenario, release_at: float,
                      progress: Progress) -> dict[str, Any]:
    """Stop stable's service (procs[0]) and start v2 on its port, as a deploy in place does."""
    progress.line("during: restarting stable's service with v2")
    procs.pop(0).stop()
    stopped_at = time.time()
    procs.insert(0, model_service(CANDIDATE, port, workers=1, MODEL_ADMIN_TOKEN=MODEL_TOKEN,
                                  **_model_env(scenario)))
    ready_at = time.time()
    return {"full_release": ready_at, "exposure_from": stopped_at,
            "outcome": "released (nothing checks v2)",
            "notes": [(f"the old process exited {stopped_at - release_at:.1f} s after SIGTERM; the "
                      f"new one was ready {ready_at - stopped_at:.1f} s later")]}


def _model_env(scenario: Scenario) -> dict[str, str]:
    """The environment of the scenario's model services (v1 and v2 alike, but for the faults)."""
    if scenario.degraded:
        return {"MODEL_ARTIFACTS": str(ensure_degraded_artifacts()), **scenario.fault_env}
    return dict(scenario.fault_env)


def _roll_out(admin: Admin, plan: dict[str, Any], options: Options, progress: Progress) -> dict[str, Any]:
    """Start the rollout and wait for its final decision."""
    progress.line(f"during: rollout {plan['strategy']} started, waiting for its decision")
    admin.start(plan)
    deadline = time.monotonic() + options.decision_timeout_s
    rollout: dict[str, Any] = {}
    while time.monotonic() < deadline:
        rollout = admin.rollout() or {}
        if rollout.get("status") in FINAL:
            return read_outcome(rollout)
        time.sleep(0.2)
    progress.line(f"no decision within {options.decision_timeout_s:g} s: rolling back by hand")
    admin.rollback("comparison run: no decision in time")
    now = time.time()
    return {**read_outcome(rollout), "outcome": f"no decision within {options.decision_timeout_s:g} s",
            "rollback": now, "decided": now}


def run_one(scenario: Scenario, release: Release, options: Options, folder: Path,
            progress: Progress) -> Timeline:
    """One release under load; writes the CSVs and ``timeline.json`` into ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    procs: list[Proc] = []
    locust: subprocess.Popen[bytes] | None = None
    v1_port, v2_port, router_port = free_port(), free_port(), free_port()
    upstreams = {STABLE: f"http://127.0.0.1:{v1_port}", CANDIDATE: f"http://127.0.0.1:{v2_port}"}
    try:
        progress.line("starting v1, v2, the router, and Locust waiting for the router")
        started = time.time()
        locust = _start_locust(f"http://127.0.0.1:{router_port}", folder, options, scenario)
        artifacts = {k: v for k, v in _model_env(scenario).items() if k == "MODEL_ARTIFACTS"}
        feedback = {"ROUTER_FEEDBACK_TOKEN": FEEDBACK_TOKEN} if scenario.feedback_share else {}
        procs = start_together(
            lambda: model_service(STABLE, v1_port, MODEL_ADMIN_TOKEN=MODEL_TOKEN, **artifacts),
            lambda: model_service(CANDIDATE, v2_port, workers=1, MODEL_ADMIN_TOKEN=MODEL_TOKEN,
                                  **_model_env(scenario)),
            lambda: router(router_port, upstreams, ROUTER_STRATEGY="release-in-place",
                           ROUTER_MODEL_ADMIN_TOKEN=MODEL_TOKEN, **feedback),
        )
        with StatePoller(Admin(procs[2].url)) as poller:
            _wait_for_load(folder, locust)
            progress.line(f"before: {options.seconds_per_phase:g} s of load on v1")
            time.sleep(options.seconds_per_phase)
            release_at = time.time()
            load_at_release = os.getloadavg()[0]
            plan = release.plan(options.interval_s, options.min_requests, scenario)
            if plan is None:
                fields = _restart_in_place(procs, v1_port, scenario, release_at, progress)
            else:
                fields = _roll_out(poller.admin, plan, options, progress)
            settled = fields.get("decided") or fields.get("full_release") or time.time()
            progress.line(f"{fields['outcome']} {settled - release_at:.1f} s after the release; "
                          f"after: {options.seconds_per_phase:g} s")
            time.sleep(max(0.0, settled + options.seconds_per_phase - time.time()))
            code = _stop_locust(locust)
            ended = time.time()
        if code not in (0, 1):
            raise RuntimeError(f"Locust exited with {code}; see locust.log in the run's folder")
        fields.setdefault("notes", []).append(
            f"host load average (1 min) {load_at_release:.1f} at the release and "
            f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs")
        timeline = Timeline(scenario=scenario.name, strategy=release.name, stable=STABLE,
                            candidate=CANDIDATE, in_place=release.in_place, started=started,
                            release=release_at, ended=ended, plan=plan,
                            max_weight=poller.max_canary_weight(), states=poller.changes, **fields)
        timeline.save(folder)
        return timeline
    finally:
        if locust is not None and locust.poll() is None:
            locust.kill()
            locust.wait()
        stop_together(procs, quick=True)


def _check_run(folder: Path) -> str | None:
    """Why the run's files cannot be trusted; None when Locust and the request log agree."""
    exceptions = (folder / f"{LOCUST_PREFIX}_exceptions.csv").read_text().strip().splitlines()
    if len(exceptions) > 1:
        return f"the locustfile raised exceptions: {exceptions[1][:200]}"
    problems = disagreements(read_requests(folder), read_locust_totals(folder))
    return "; ".join(problems) or None


def _names(raw: str, known: dict[str, Any], what: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or raw!r}; valid: {', '.join(known)}")
    return names


def _scrub(message: str) -> str:
    """A broken run's reason for the report: short, and without this host's file system paths."""
    for path, short in ((sys.executable, "python"), (f"{ROOT}/", ""), (str(ROOT), ".")):
        message = message.replace(path, short)
    return message[:600]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds-per-phase", type=float, default=30.0,
                        help="seconds of load before the release and after the decision (default 30)")
    parser.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated, from: {', '.join(SCENARIOS)} (default: "
                             f"{','.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--strategies", default=",".join(DEFAULT_RELEASES),
                        help=f"comma-separated, from: {', '.join(RELEASES)}")
    parser.add_argument("--interval-s", type=float, default=2.0,
                        help="rollout analysis interval (default 2)")
    parser.add_argument("--min-requests", type=int, default=20,
                        help="rollout sample size per version and analysis (default 20)")
    parser.add_argument("--decision-timeout-s", type=float, default=120.0,
                        help="roll back by hand when a rollout has not decided by then (default 120)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seconds_per_phase <= 0 or args.users < 1:
        print("error: --seconds-per-phase and --users must be positive", file=sys.stderr)
        return 2
    try:
        scenarios = [SCENARIOS[n] for n in _names(args.scenarios, SCENARIOS, "scenario")]
        releases = [RELEASES[n] for n in _names(args.strategies, RELEASES, "strategy")]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = Options(args.seconds_per_phase, args.users, args.interval_s, args.min_requests,
                      args.decision_timeout_s, args.out)
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the output folder {options.out}: {exc.strerror or exc}; "
              "give --out a folder you can write", file=sys.stderr)
        return 2
    ensure_artifacts()
    if any(s.degraded for s in scenarios):
        print("building the degraded v2 (once, into artifacts-degraded/)", file=sys.stderr)
        ensure_degraded_artifacts()
    results = [RunResult(s, r, options.out / "csv" / s.name / r.name) for s in scenarios for r in releases]
    progress = Progress(sum(r.release.skip_reason(r.scenario) is None for r in results))
    for result in results:
        result.skipped = result.release.skip_reason(result.scenario)
        if result.skipped:
            continue
        progress.start(result.scenario, result.release)
        try:
            run_one(result.scenario, result.release, options, result.folder, progress)
            result.broken = _check_run(result.folder)
        except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others
            result.broken = _scrub(f"{type(exc).__name__}: {exc}")
        progress.line(f"BROKEN: {result.broken}" if result.broken else "done")
    command = shlex.join([
        "python", "-m", "loadtest.compare", "--seconds-per-phase", f"{options.seconds_per_phase:g}",
        "--users", str(options.users), "--scenarios", ",".join(s.name for s in scenarios),
        "--strategies", ",".join(r.name for r in releases), "--interval-s", f"{options.interval_s:g}",
        "--min-requests", str(options.min_requests)])
    manifest = {
        "command": command, "users": options.users, "seconds_per_phase": options.seconds_per_phase,
        "interval_s": options.interval_s, "min_requests": options.min_requests,
        "scenarios": [s.name for s in scenarios], "strategies": [r.name for r in releases],
        "runs": [{"scenario": r.scenario.name, "strategy": r.release.name, "skipped": r.skipped,
                  "broken": r.broken} for r in results],
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    print(render(options.out).read_text())
    return 1 if any(r.broken for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
