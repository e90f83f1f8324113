"""A store leaves nothing open: each connection is closed by its owner, never by the garbage collector.

Python reports a database connection or socket that the garbage collector has to close with a
``ResourceWarning`` (for SQLite connections since 3.13; the file-descriptor checks fail on any
version). Each test turns that warning into an error and collects what the hook for unraisable
exceptions receives, so a leak fails here rather than somewhere later in the suite.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from router.state.base import StaleState, StateStore
from router.state.redis import RedisStateStore
from router.state.sqlite import SQLiteStateStore

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="counting open files needs /proc/self/fd"
)


@contextmanager
def leaks_reported() -> Iterator[list[str]]:
    """Collect what the garbage collector had to close while the block runs (and just after)."""
    reported: list[str] = []

    def hook(unraisable: Any) -> None:
        reported.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")

    previous = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            yield reported
            for _ in range(3):
                gc.collect()
    finally:
        sys.unraisablehook = previous


def files_open_on(path: Path) -> list[str]:
    """This process's file descriptors on the database file or its -wal and -shm files."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target in names:
            found.append(target)
    return found


def use(store: StateStore) -> None:
    """A read, a write transaction and the audit log, as the router makes them."""
    state = store.read() or store.initialize({"strategy": "release-in-place"})
    with suppress(StaleState):  # threads writing at once: all but one see a newer state
        store.commit(state.config_version, {"strategy": "canary"}, {"actor": "test"})
    store.events(limit=5)


def in_threads(
    work: Callable[[], None], count: int, *, park: threading.Event | None = None
) -> list[threading.Thread]:
    """Run ``work`` in ``count`` threads that stay alive until ``park`` is set (if given)."""
    errors: list[BaseException] = []
    done = threading.Barrier(count + 1)

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        done.wait(timeout=30)
        if park is not None:
            park.wait(timeout=30)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    done.wait(timeout=30)
    assert not errors, errors
    return threads


@needs_proc
def test_sqlite_close_closes_the_connections_of_threads_still_running(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    park = threading.Event()
    with leaks_reported() as reported:
        store = SQLiteStateStore(path)
        use(store)
        threads = in_threads(partial(use, store), 4, park=park)
        assert files_open_on(path), "the test needs connections that are open"

        store.close()
        assert files_open_on(path) == []
        park.set()
        for thread in threads:
            thread.join(timeout=30)
        del store
    assert reported == []


@needs_proc
def test_sqlite_closes_a_threads_connection_when_the_thread_ends(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    with leaks_reported() as reported:
        store = SQLiteStateStore(path)
        store.read()
        for thread in in_threads(partial(use, store), 4):
            thread.join(timeout=30)
        gc.collect()  # frees what the ended threads left, before close() could close it

        store.close()
        assert files_open_on(path) == []
        del store
    assert reported == []


def test_sqlite_store_used_then_dropped_after_close_leaves_nothing(tmp_path: Path) -> None:
    with leaks_reported() as reported:
        for _ in range(3):
            store = SQLiteStateStore(tmp_path / "router.db")
            use(store)
            store.close()
        del store
    assert reported == []


@pytest.mark.redis
def test_redis_close_closes_every_connection_of_its_pool(redis_url: str, redis_prefix: str) -> None:
    with leaks_reported() as reported:
        store = RedisStateStore(redis_url, prefix=redis_prefix)
        use(store)
        for thread in in_threads(partial(use, store), 4):
            thread.join(timeout=30)
        changes = store.subscribe_changes()
        changes.close()

        store.close()
        del store, changes
    assert reported == []
