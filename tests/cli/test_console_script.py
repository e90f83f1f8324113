"""The installed ``rollout`` console script, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import SCRIPT, TOKEN, start_router
from tests.cli.conftest import run_script as rollout
from tests.servers import ServerProcess, free_port


@pytest.fixture(scope="module")
def stack(v1_service: ServerProcess, v2_service: ServerProcess, log_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install the project with `pip install --no-deps -e .`")
    state = tmp_path_factory.mktemp("cli-script") / "state.db"
    with start_router(v1_service, v2_service, log_dir, state) as server:
        yield server.wait_ready()


def test_status_json_from_the_console_script(stack: ServerProcess) -> None:
    proc = rollout("status", "--json", url=stack.url)

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["state"]["upstreams"].keys() == {"v1", "v2"}
    assert doc["artifacts"]["v1"]["version"] == "v1"


def test_set_and_events_from_the_console_script(stack: ServerProcess) -> None:
    changed = rollout("set", "--strategy", "canary", "--weight", "5", "--reason", "smoke",
                      url=stack.url)
    assert changed.returncode == 0, changed.stderr

    proc = rollout("events", "--limit", "1", url=stack.url)
    assert proc.returncode == 0
    assert "canary_weight 0->5" in proc.stdout and "smoke" in proc.stdout


@pytest.mark.parametrize("router_up, token, fragment", [
    (False, TOKEN, "cannot reach the router"),
    (True, "wrong-token", "401"),
])
def test_errors_from_the_console_script(stack: ServerProcess, router_up: bool, token: str,
                                        fragment: str) -> None:
    url = stack.url if router_up else f"http://127.0.0.1:{free_port()}"

    proc = rollout("status", url=url, token=token)

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr
