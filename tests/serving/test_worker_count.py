"""Worker processes per role: ``--workers``, else ``$WEB_CONCURRENCY``, else the role's default
(the router one, a model service two)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import ServerProcess, model_service, router, wait_until


def worker_count(server: ServerProcess) -> int:
    """The gunicorn master's children (its workers), read from /proc."""
    def children() -> int:
        found = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            found += int(fields[1]) == server.proc.pid
        return found
    return int(wait_until(children, timeout=10))


@pytest.mark.parametrize(("given", "expected"), [(None, 1), ("", 1), ("3", 3)])
def test_the_router_starts_one_worker_unless_told(v1_service: ServerProcess, log_dir: Path,
                                                 tmp_path: Path, given: str | None,
                                                 expected: int) -> None:
    with router({"v1": v1_service.url}, log_dir, str(tmp_path / "state.db"),
                WEB_CONCURRENCY=given) as server:
        server.wait_ready(60)
        assert worker_count(server) == expected


def test_a_model_service_starts_two_workers_unless_told(artifacts: Path, log_dir: Path) -> None:
    with model_service("v1", artifacts, log_dir, WEB_CONCURRENCY=None) as server:
        server.wait_ready(60)
        assert worker_count(server) == 2


def test_a_worker_count_that_is_not_a_number_is_refused_by_name(v1_service: ServerProcess,
                                                               log_dir: Path, tmp_path: Path) -> None:
    with router({"v1": v1_service.url}, log_dir, str(tmp_path / "state.db"),
                WEB_CONCURRENCY="two") as server:
        with pytest.raises(RuntimeError, match="server exited with 1") as failed:
            server.wait_ready(60)
    assert "WEB_CONCURRENCY='two' is not a number of worker processes" in str(failed.value)
