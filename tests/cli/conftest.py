"""A real router in front of the real v1 and v2 services, and ``rollout`` run in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from router.cli import main
from tests.servers import ServerProcess, router

TOKEN = "admin-secret"
SCRIPT = Path(sys.executable).parent / "rollout"


@dataclass
class Result:
    code: int
    out: str
    err: str


Runner = Callable[..., Result]


def start_router(v1: ServerProcess, v2: ServerProcess, log_dir: Path, state: Path,
                 token: str | None = TOKEN) -> ServerProcess:
    """A router with its own state file: v1 stable, v2 candidate, release-in-place."""
    return router({"v1": v1.url, "v2": v2.url}, log_dir, str(state), token=token,
                  ROUTER_MODEL_ADMIN_TOKEN="model-secret", WEB_CONCURRENCY="1")


@pytest.fixture
def stack(v1_service: ServerProcess, v2_service: ServerProcess, log_dir: Path,
          tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh router, for a test that changes the state."""
    with start_router(v1_service, v2_service, log_dir, tmp_path / "state.db") as server:
        yield server.wait_ready()


@pytest.fixture(scope="module")
def shared_stack(v1_service: ServerProcess, v2_service: ServerProcess, log_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One router per module, for tests that leave the state as it is."""
    state = tmp_path_factory.mktemp("cli") / "state.db"
    with start_router(v1_service, v2_service, log_dir, state) as server:
        yield server.wait_ready()


def cli_runner(url: str, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> Runner:
    """``run(*argv)`` calls ``main`` in-process with ROLLOUT_URL and ROLLOUT_TOKEN for ``url``."""
    monkeypatch.setenv("ROLLOUT_URL", url)
    monkeypatch.setenv("ROLLOUT_TOKEN", TOKEN)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def rollout(stack: ServerProcess, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> Runner:
    """``rollout(*argv)`` runs the CLI against ``stack``."""
    return cli_runner(stack.url, monkeypatch, capsys)


@pytest.fixture
def read_only(shared_stack: ServerProcess, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> Runner:
    """Like ``rollout``, against the module's shared router: the test must not change the state."""
    return cli_runner(shared_stack.url, monkeypatch, capsys)


def admin_get(server: ServerProcess, path: str) -> Any:
    resp = requests.get(server.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    resp.raise_for_status()
    return resp.json()


def script_env(url: str, token: str = TOKEN) -> dict[str, str]:
    """The environment for the console script: ROLLOUT_URL and ROLLOUT_TOKEN, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")}
    env.update(ROLLOUT_URL=url, ROLLOUT_TOKEN=token)
    return env


def run_script(*argv: str, url: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    """The installed ``rollout`` console script, run as a user runs it."""
    return subprocess.run([str(SCRIPT), *argv], check=False, env=script_env(url, token),
                          capture_output=True, text=True, timeout=180)
