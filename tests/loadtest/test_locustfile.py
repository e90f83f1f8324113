"""The locustfile's release gates decide Locust's exit code."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from loadtest.harness import (
    ROOT,
    Proc,
    ensure_artifacts,
    free_port,
    model_service,
    router,
    start_together,
    stop_together,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    """A router whose stable (v1) answers every request with 500, and a healthy v2."""
    ensure_artifacts()
    p1, p2 = free_port(), free_port()
    procs: list[Proc] = start_together(
        lambda: model_service("v1", p1, FAULT_ERROR_RATE="1"),
        lambda: model_service("v2", p2),
    )
    try:
        procs.append(router(free_port(), {"v1": procs[0].url, "v2": procs[1].url}))
        yield procs[-1].url
    finally:
        stop_together(procs)


def _locust(url: str, *gates: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--host", url,
         "--headless", "-u", "4", "-r", "4", "-t", "2s", "--only-summary", *gates],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def _set_stable(url: str, stable: str, candidate: str) -> None:
    resp = requests.patch(url + "/admin/state", json={"stable": stable, "candidate": candidate},
                          headers={"Authorization": "Bearer bench"}, timeout=5)
    resp.raise_for_status()


def test_failure_ratio_gate_fails_the_run(stack: str) -> None:
    _set_stable(stack, "v1", "v2")
    result = _locust(stack, "--max-fail-ratio", "0.1")
    assert result.returncode == 1
    assert "gate failed: failure ratio 1.0000 > --max-fail-ratio 0.1" in result.stderr


def test_passing_gates_exit_zero_and_p95_gate_fails(stack: str) -> None:
    _set_stable(stack, "v2", "v1")
    passing = _locust(stack, "--max-fail-ratio", "0.01", "--max-p95-ms", "10000")
    assert passing.returncode == 0, passing.stderr[-2000:]
    assert "gate failed" not in passing.stderr
    failing = _locust(stack, "--max-p95-ms", "0.001")
    assert failing.returncode == 1
    assert "gate failed: p95" in failing.stderr


def test_without_gates_any_failure_gives_locusts_own_exit_code(stack: str) -> None:
    _set_stable(stack, "v1", "v2")
    assert _locust(stack).returncode == 1
