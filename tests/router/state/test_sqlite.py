"""The embedded SQLite store: a file that outlives the process, shared by threads and processes."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from router.state import StaleState, StoreUnavailable
from router.state.sqlite import SQLiteStateStore


def test_state_and_events_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "router.db"
    first = SQLiteStateStore(path)
    first.initialize({"strategy": "release-in-place"})
    committed = first.commit(1, {"strategy": "canary"}, {"actor": "admin"})
    first.acquire_lease("rollout", "router-a", ttl_s=30)
    first.close()

    reopened = SQLiteStateStore(path)
    assert reopened.read() == committed
    [event] = reopened.events()
    assert event["actor"] == "admin"
    assert not reopened.acquire_lease("rollout", "router-b", ttl_s=30)
    reopened.commit(2, {"strategy": "shadow"}, {"actor": "admin"})
    assert [e["id"] for e in reopened.events()] == [event["id"], event["id"] + 1]
    reopened.close()


def test_threads_of_one_store_commit_without_losing_updates(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "router.db")
    store.initialize({"counter": 0})
    threads, per_thread = 6, 10

    def add() -> None:
        for _ in range(per_thread):
            while True:
                state = store.read()
                assert state is not None
                try:
                    store.commit(
                        state.config_version,
                        {"counter": state.document["counter"] + 1},
                        {"actor": threading.current_thread().name},
                    )
                    break
                except StaleState:
                    continue

    workers = [threading.Thread(target=add) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    final = store.read()
    assert final is not None
    assert final.config_version == 1 + threads * per_thread
    assert final.document["counter"] == threads * per_thread
    assert len(store.events(limit=1000)) == threads * per_thread
    store.close()


def test_an_unusable_location_raises_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(StoreUnavailable, match="ROUTER_STATE_URL"):
        SQLiteStateStore(blocker / "router.db")


def _open_and_report(path: str, barrier: Any, answers: Any) -> None:
    barrier.wait()
    try:
        SQLiteStateStore(path).close()
        answers.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        answers.put(repr(exc))


def test_worker_processes_opening_a_new_file_together_all_start(tmp_path: Path) -> None:
    """Gunicorn starts every worker at once: each opens the store, and the first to open a new
    file switches it to write-ahead logging while the others try the same. None may fail."""
    context = multiprocessing.get_context("fork")
    failed = []
    for trial in range(40):
        path, workers = str(tmp_path / f"state-{trial}.db"), 10
        barrier, answers = context.Barrier(workers), context.Queue()
        procs = [context.Process(target=_open_and_report, args=(path, barrier, answers))
                 for _ in range(workers)]
        for proc in procs:
            proc.start()
        results = [answers.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(30)
        failed += [r for r in results if r != "ok"]
    assert not failed, failed[:3]
