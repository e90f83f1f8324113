"""``make run`` as a user runs it: ``python -m router.devstack`` in a folder of its own, on free ports.

Also ``make reset``, which starts the local stack over without setting it up again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from router.devstack import local_tokens
from tests.cli.conftest import run_script
from tests.servers import ROOT, wait_until

ROW = [14.1, 19.3, 92.0, 654.9, 0.096, 0.104, 0.089, 0.049, 0.181, 0.063, 0.405, 1.217, 2.866,
       40.3, 0.007, 0.025, 0.032, 0.012, 0.021, 0.004, 16.3, 25.7, 107.3, 880.6, 0.132, 0.254,
       0.272, 0.115, 0.290, 0.084]
OWN_VARIABLES = ("ROUTER_", "MODEL_", "ROLLOUT_", "DEVSTACK_", "PROMETHEUS_MULTIPROC_DIR",
                 "SERVICE_RUNTIME_DIR")


class Devstack:
    """``python -m router.devstack`` started in ``home``; its output is read line by line."""

    def __init__(self, home: Path, artifacts: Path, **env: str) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
        full.update({"MODEL_ARTIFACTS": str(artifacts), "DEVSTACK_PORT": "0", "WEB_CONCURRENCY": "1",
                     **env})
        full.pop("LOG_LEVEL", None)  # gunicorn's info lines tell which signals each server got
        self.proc = subprocess.Popen([sys.executable, "-m", "router.devstack"], cwd=home, env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with the output if it never comes."""
        def found() -> re.Match[str] | None:
            match = next(filter(None, (re.search(pattern, line) for line in list(self.lines))),
                         None)
            if match is None and self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"devstack exited with {self.proc.returncode} before {pattern!r}:\n"
                            f"{self.output[-5000:]}")
            return match

        return wait_until(found, timeout, interval=0.1)

    def up(self) -> tuple[str, str]:
        """Wait until the stack is up; the router's URL and the admin token of the export line."""
        match = self.wait_for(r"export ROLLOUT_URL=(\S+) ROLLOUT_TOKEN=(\S+)")
        self.wait_for("Press Ctrl-C")
        return match[1], match[2]

    def url_of(self, role: str) -> str:
        return self.wait_for(rf"^  model {role}\s+(\S+)")[1]

    def stop(self, *signums: int) -> int:
        """Send each signal, the second once the stack is stopping; the exit code."""
        for i, signum in enumerate(signums):
            if i:
                self.wait_for("stopping v1, v2 and the router")
            self.proc.send_signal(signum)
        code = self.proc.wait(60)
        self._reader.join(10)  # all of the output is in
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop(signal.SIGTERM)


Starter = Callable[..., Devstack]


@pytest.fixture
def start(artifacts: Path) -> Iterator[Starter]:
    """``start(home, **env)``: a devstack in ``home``, stopped at the end of the test."""
    started: list[Devstack] = []

    def run(home: Path, **env: str) -> Devstack:
        started.append(Devstack(home, artifacts, **env))
        return started[-1]

    yield run
    for stack in started:
        stack.close()


@contextmanager
def traffic(url: str) -> Iterator[None]:
    """Client requests through the router from a thread, until the block ends."""
    stop = threading.Event()

    def send() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    session.post(url + "/predict", json={"instances": [ROW]}, timeout=5)
                except requests.RequestException:
                    pass

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_release_in_place_works_under_make_run(start: Starter, tmp_path: Path) -> None:
    stack = start(tmp_path)
    url, token = stack.up()

    with traffic(url):
        started = run_script("start", "--strategy", "release-in-place", "--candidate", "v2",
                             "--interval", "0.5", "--min-requests", "10",
                             "--threshold", "max_p99_ratio=1000", url=url, token=token)
        assert started.returncode == 0, started.stderr
        watched = run_script("watch", "--interval", "0.2", "--give-up-after", "120",
                             url=url, token=token)

    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "decision: pass -> reload" in watched.stdout
    # slot v1, reloaded in place, now serves v2
    assert watched.stdout.splitlines()[-1].endswith("promoted; stable is now v1 (v2)")
    served = requests.get(stack.url_of("v1") + "/version", timeout=5).json()["version"]
    assert served == "v2"  # stable's own service was reloaded with the router's model token


def test_an_access_token_from_the_environment_reaches_the_router(start: Starter,
                                                                tmp_path: Path) -> None:
    stack = start(tmp_path, MODEL_ACCESS_TOKEN="local-access")
    url, _ = stack.up()  # the readiness probes of the model services carried the token

    model = stack.url_of("v1")
    assert requests.get(model + "/version", timeout=5).status_code == 401
    assert requests.get(model + "/version", headers={"Authorization": "Bearer local-access"},
                        timeout=5).json()["version"] == "v1"
    resp = requests.post(url + "/predict", json={"instances": [ROW]}, timeout=10)
    assert resp.status_code == 200, resp.text  # the router sends ROUTER_MODEL_ACCESS_TOKEN
    assert requests.get(url + "/metrics", timeout=5).status_code == 200  # no METRICS_TOKEN set


def test_feedback_works_under_make_run_with_the_printed_token(start: Starter,
                                                           tmp_path: Path) -> None:
    stack = start(tmp_path)
    url, admin = stack.up()
    feedback_token = stack.wait_for(r"ROUTER_FEEDBACK_TOKEN=(\S+)")[1]
    assert f"ROUTER_FEEDBACK_TOKEN={feedback_token}\n" in (tmp_path / "var" / "tokens.env").read_text()

    answer = requests.post(url + "/predict", json={"instances": [ROW]}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = {"request_id": answer.headers["X-Request-ID"], "labels": answer.json()["predictions"]}
    refused = requests.post(url + "/feedback", json=body, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"]["code"]

    def scored() -> requests.Response | None:  # the answer is kept off the request path
        resp = requests.post(url + "/feedback", json=body, timeout=5,
                             headers={"Authorization": f"Bearer {feedback_token}"})
        return resp if resp.status_code == 200 else None

    first = wait_until(scored, 10)
    assert first.json().get("duplicate") is not True, first.json()
    quality = requests.get(url + "/admin/analysis", timeout=5,
                           headers={"Authorization": f"Bearer {admin}"}).json()["quality"]
    assert quality, quality


def test_tokens_and_state_survive_a_restart(start: Starter, tmp_path: Path) -> None:
    first = start(tmp_path)
    url, token = first.up()
    changed = run_script("set", "--strategy", "canary", "--weight", "10", "--reason", "before",
                         url=url, token=token)
    assert changed.returncode == 0, changed.stderr
    assert first.stop(signal.SIGTERM) == 0

    tokens = tmp_path / "var" / "tokens.env"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert f"ROUTER_ADMIN_TOKEN={token}\n" in tokens.read_text()

    url, token_again = start(tmp_path).up()

    assert token_again == token
    status = run_script("status", url=url, token=token)
    assert status.returncode == 0, status.stderr
    assert "v1 90%, v2 10%" in status.stdout


@pytest.mark.parametrize("signums", [
    (signal.SIGTERM,),
    (signal.SIGINT, signal.SIGINT),  # Ctrl-C, and again while the servers stop
    (signal.SIGTERM, signal.SIGTERM),  # e.g. `kill` of make's process group: make passes it on
], ids=["sigterm", "ctrl-c-twice", "sigterm-twice"])
def test_a_signal_stops_each_server_once_without_a_traceback(
        start: Starter, tmp_path: Path, signums: tuple[int, ...]) -> None:
    stack = start(tmp_path)
    stack.up()

    code = stack.stop(*signums)

    assert code == 0, stack.output[-3000:]
    assert "Traceback" not in stack.output and "KeyboardInterrupt" not in stack.output
    assert stack.output.count("Handling signal: term") == 3  # v1, v2 and the router, once each
    assert "Handling signal: int" not in stack.output
    assert stack.lines[-1] == "stopped"
    if len(signums) > 1:
        assert "already stopping; waiting for the servers to exit" in stack.lines


def test_a_busy_port_is_one_line_that_names_the_variable(start: Starter, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = start(tmp_path, DEVSTACK_PORT=str(port))
        code = stack.stop()  # no signal: it stops on its own

    assert code == 1
    assert stack.lines == [f"error: port {port} (router) is in use, perhaps by "
                           "another `make run`: stop it, or set DEVSTACK_PORT to use other ports "
                           "(DEVSTACK_PORT=9000: 9000-9002)"]


def test_tokens_come_from_the_environment_else_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "tokens.env"
    old = os.umask(0)  # whatever the umask, the file is private
    try:
        made = local_tokens(path, env={})
    finally:
        os.umask(old)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert made["ROUTER_ADMIN_TOKEN"] != made["MODEL_ADMIN_TOKEN"]
    assert local_tokens(path, env={}) == made
    given = local_tokens(path, env={"ROUTER_ADMIN_TOKEN": "from-env"})
    assert given == {**made, "ROUTER_ADMIN_TOKEN": "from-env"}
    assert "from-env" not in path.read_text()


def test_a_missing_token_is_added_to_the_file_and_a_wide_file_made_private(tmp_path: Path) -> None:
    path = tmp_path / "tokens.env"
    path.write_text("ROUTER_ADMIN_TOKEN=kept\n")
    path.chmod(0o644)

    tokens = local_tokens(path, env={})

    assert tokens["ROUTER_ADMIN_TOKEN"] == "kept" and tokens["MODEL_ADMIN_TOKEN"]
    assert f"MODEL_ADMIN_TOKEN={tokens['MODEL_ADMIN_TOKEN']}\n" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("reset_tokens, kept", [
    ("", {".venv/bin/python", "artifacts/v1/metadata.json", "var/tokens.env"}),
    ("1", {".venv/bin/python", "artifacts/v1/metadata.json"}),
])
def test_make_reset_keeps_the_setup(tmp_path: Path, reset_tokens: str, kept: set[str]) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    made = [".venv/bin/python", "artifacts/v1/metadata.json", "var/tokens.env",
            "var/router-state.db", "var/router-state.db-wal", "var/logs/router.log"]
    for name in made:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")

    proc = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "reset",
                           f"RESET_TOKENS={reset_tokens}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)

    assert proc.returncode == 0, proc.stderr
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert left == kept
    assert (tmp_path / "var").is_dir()


def test_the_readme_canary_walkthrough_promotes_v2_with_the_default_thresholds(
        start: Starter, tmp_path: Path) -> None:
    """The README's flow as written: make run, Locust's users, a canary with every default."""
    stack = start(tmp_path)
    url, token = stack.up()
    locust = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--host",
         url, "--headless", "-u", "20", "-r", "20", "-t", "240s"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = run_script("start", "--strategy", "canary", "--steps", "10,50,100",
                             "--interval", "10", "--reason", "release v2", url=url, token=token)
        assert started.returncode == 0, started.stderr
        watched = run_script("watch", "--give-up-after", "150", url=url, token=token)
    finally:
        locust.terminate()
        locust.wait(30)
    # v2 is slower than v1 by a millisecond or so: within the latency margin, so no harm
    assert watched.returncode == 0, watched.stdout[-4000:] + watched.stderr
    assert watched.stdout.splitlines()[-1].endswith("promoted; stable is now v2")
    assert "latency_p50" in watched.stdout and "latency_p99" in watched.stdout
