"""The StateStore contract, run against every backend (SQLite file and Redis)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import datetime, timedelta

import pytest

from router.state import StaleState, StateStore, StoredState
from tests.router.state.conftest import StoreFactory

INITIAL = {"strategy": "release-in-place", "stable": "v1", "candidate": "v2", "canary_weight": 0}


def test_every_backend_implements_the_protocol(store: StateStore) -> None:
    assert isinstance(store, StateStore)


def test_read_is_none_until_initialized(store: StateStore) -> None:
    assert store.read() is None
    assert store.events() == []


def test_initialize_race_leaves_one_state(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    results: list[StoredState | None] = [None] * len(stores)

    def initialize(index: int) -> None:
        barrier.wait()
        results[index] = stores[index].initialize({**INITIAL, "writer": index})

    threads = [threading.Thread(target=initialize, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    first = results[0]
    assert first is not None and first.config_version == 1
    assert all(result == first for result in results)
    assert stores[0].read() == first
    assert stores[1].initialize({"writer": "late"}) == first


def test_commit_bumps_version_and_appends_event(make_store: StoreFactory) -> None:
    store, other = make_store(), make_store()
    store.initialize(INITIAL)
    event = {"actor": "admin", "change": {"canary_weight": [0, 10]}, "reason": "start canary"}

    committed = store.commit(1, {**INITIAL, "canary_weight": 10}, event)

    assert committed.config_version == 2
    assert committed.document == {**INITIAL, "canary_weight": 10}
    assert other.read() == committed
    [logged] = other.events()
    assert logged["config_version"] == 2
    assert {key: logged[key] for key in event} == event
    assert isinstance(logged["id"], int)
    assert datetime.fromisoformat(logged["time"]).utcoffset() == timedelta(0)
    assert "time" not in event and "config_version" not in event


def test_commit_keeps_a_given_time_and_overrides_config_version(store: StateStore) -> None:
    store.initialize(INITIAL)
    store.commit(1, INITIAL, {"time": "2024-01-01T00:00:00Z", "config_version": 99, "id": -5})
    [logged] = store.events()
    assert logged["time"] == "2024-01-01T00:00:00Z"
    assert logged["config_version"] == 2
    assert logged["id"] != -5


def test_stale_commit_raises_and_changes_nothing(store: StateStore) -> None:
    store.initialize(INITIAL)
    winner = store.commit(1, {**INITIAL, "strategy": "canary"}, {"actor": "first"})

    with pytest.raises(StaleState) as raised:
        store.commit(1, {**INITIAL, "strategy": "shadow"}, {"actor": "second"})

    assert raised.value.current_version == 2
    assert store.read() == winner
    assert [event["actor"] for event in store.events()] == ["first"]


def test_commit_on_an_empty_store_reports_version_zero(store: StateStore) -> None:
    with pytest.raises(StaleState) as raised:
        store.commit(3, INITIAL, {"actor": "admin"})
    assert raised.value.current_version == 0
    assert store.read() is None
    assert store.events() == []


def test_an_event_that_cannot_be_stored_changes_nothing(store: StateStore) -> None:
    store.initialize(INITIAL)
    with pytest.raises(TypeError):
        store.commit(1, {**INITIAL, "strategy": "canary"}, {"actor": object()})
    assert store.read() == StoredState(1, INITIAL)
    assert store.events() == []


def test_events_after_and_limit(store: StateStore) -> None:
    state = store.initialize(INITIAL)
    for step in range(5):
        state = store.commit(
            state.config_version, {**INITIAL, "canary_weight": step}, {"step": step}
        )

    events = store.events()
    ids = [event["id"] for event in events]
    assert [event["step"] for event in events] == [0, 1, 2, 3, 4]
    assert ids == sorted(set(ids))
    assert [e["step"] for e in store.events(after=ids[1])] == [2, 3, 4]
    assert [e["step"] for e in store.events(limit=2)] == [3, 4]
    assert [e["step"] for e in store.events(limit=2, after=ids[0])] == [3, 4]
    assert [e["step"] for e in store.events(limit=10, after=ids[2])] == [3, 4]
    assert store.events(after=ids[-1]) == []
    assert store.events(limit=0) == []


def _commit_repeatedly(store: StateStore, worker: int, count: int) -> None:
    """Add ``count`` entries to the shared document, re-reading after every lost race."""
    for step in range(count):
        while True:
            state = store.read()
            assert state is not None
            document = dict(state.document)
            document["counter"] += 1
            document["writes"] = [*document["writes"], f"{worker}-{step}"]
            try:
                store.commit(state.config_version, document, {"actor": f"worker-{worker}"})
                break
            except StaleState:
                continue


def test_concurrent_commits_from_processes_lose_no_update(make_store: StoreFactory) -> None:
    workers, per_worker = 4, 25
    store = make_store()
    store.initialize({"counter": 0, "writes": []})
    # Forked after the store was used, like pre-loaded server workers: each child must open
    # its own connections rather than share the parent's.
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_commit_repeatedly, args=(store, worker, per_worker))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=120)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert [process.exitcode for process in processes] == [0] * workers

    total = workers * per_worker
    final = store.read()
    assert final is not None and final.config_version == 1 + total
    assert final.document["counter"] == total
    assert len(set(final.document["writes"])) == total
    events = store.events(limit=10 * total)
    assert len(events) == total
    assert [event["config_version"] for event in events] == list(range(2, total + 2))
    assert [event["id"] for event in events] == sorted({event["id"] for event in events})


def test_lease_is_exclusive_until_released_by_its_holder(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    assert one.acquire_lease("rollout", "router-a", ttl_s=30)
    assert not two.acquire_lease("rollout", "router-b", ttl_s=30)
    assert two.acquire_lease("other-lease", "router-b", ttl_s=30)

    two.release_lease("rollout", "router-b")
    assert not two.acquire_lease("rollout", "router-b", ttl_s=30)

    one.release_lease("rollout", "router-a")
    assert two.acquire_lease("rollout", "router-b", ttl_s=30)
    assert not one.acquire_lease("rollout", "router-a", ttl_s=30)


def test_lease_expires_after_its_ttl(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    assert one.acquire_lease("rollout", "router-a", ttl_s=0.2)
    assert not two.acquire_lease("rollout", "router-b", ttl_s=0.2)
    time.sleep(0.3)
    assert two.acquire_lease("rollout", "router-b", ttl_s=30)
    assert not one.acquire_lease("rollout", "router-a", ttl_s=0.2)


def test_renewing_a_lease_extends_it(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    assert one.acquire_lease("rollout", "router-a", ttl_s=0.4)
    time.sleep(0.25)
    assert one.acquire_lease("rollout", "router-a", ttl_s=2.0)
    time.sleep(0.25)  # past the first TTL, well inside the renewed one
    assert not two.acquire_lease("rollout", "router-b", ttl_s=2.0)


def test_lease_ttl_must_be_positive(store: StateStore) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        store.acquire_lease("rollout", "router-a", ttl_s=0)


def test_published_counts_are_the_latest_document_of_each_instance(
        make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    assert one.published_counts() == {}
    first = {"runs": {"r1": {"counts": {"v1": {"requests": 3.0}}}}}
    one.publish_counts("web.1", first, ttl_s=30)
    two.publish_counts("web.2", {"runs": {}}, ttl_s=30)
    assert one.published_counts() == {"web.1": first, "web.2": {"runs": {}}}

    later = {"runs": {"r1": {"counts": {"v1": {"requests": 5.0}}}}}
    two.publish_counts("web.1", later, ttl_s=30)
    assert one.published_counts() == {"web.1": later, "web.2": {"runs": {}}}


def test_published_counts_expire_unless_published_again(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    one.publish_counts("stopped", {"n": 1}, ttl_s=0.3)
    one.publish_counts("running", {"n": 1}, ttl_s=0.3)
    time.sleep(0.2)
    one.publish_counts("running", {"n": 2}, ttl_s=0.3)  # refreshes its expiry
    time.sleep(0.2)  # past the stopped instance's expiry, inside the running one's
    assert two.published_counts() == {"running": {"n": 2}}

    time.sleep(0.2)
    assert two.published_counts() == {}
    one.publish_counts("stopped", {"n": 3}, ttl_s=30)  # back after its counts expired
    assert two.published_counts() == {"stopped": {"n": 3}}


def test_published_counts_ttl_must_be_positive(store: StateStore) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        store.publish_counts("web.1", {}, ttl_s=0)
    assert store.published_counts() == {}


def test_release_records_are_upserted_by_id_and_listed_oldest_first(
        make_store: StoreFactory) -> None:
    store, other = make_store(), make_store()
    assert store.releases() == []
    store.save_release({"id": "b", "version": "v3", "started_at": 200.0, "outcome": "running"})
    store.save_release({"id": "a", "version": "v2", "started_at": 100.0, "outcome": "promoted"})
    store.save_release({"id": "c", "version": "v4", "started_at": 300.0, "outcome": "running"})

    store.save_release({"id": "b", "version": "v3", "started_at": 200.0, "outcome": "rolled_back"})

    assert [(r["id"], r["outcome"]) for r in other.releases()] == [
        ("a", "promoted"), ("b", "rolled_back"), ("c", "running")]
    assert [r["id"] for r in other.releases(limit=2)] == ["b", "c"]
    assert other.releases(limit=0) == []


RESTORED = {**INITIAL, "strategy": "canary", "canary_weight": 30,
            "rollout": {"id": "r1", "status": "running", "step": 1}}


def test_restore_writes_a_lost_state_back_at_its_version(make_store: StoreFactory) -> None:
    store, other = make_store(), make_store()
    event = {"actor": "router", "action": "state.restored", "reason": "the store came back empty"}

    restored = store.restore(RESTORED, 8, event)

    assert restored == StoredState(8, RESTORED)
    assert other.read() == restored
    [logged] = other.events()
    assert {key: logged[key] for key in event} == event
    assert logged["config_version"] == 8
    assert logged["id"] == 7  # where the ids of the store that was lost had got to
    after = other.commit(8, {**RESTORED, "canary_weight": 50}, {"actor": "rollout-controller"})
    assert after.config_version == 9
    assert [(e["id"], e["config_version"]) for e in other.events()] == [(7, 8), (8, 9)]


def test_restore_over_an_older_state_keeps_its_events(store: StateStore) -> None:
    store.initialize(INITIAL)
    store.commit(1, {**INITIAL, "canary_weight": 10}, {"actor": "a new router"})

    store.restore(RESTORED, 6, {"actor": "router"})

    assert store.read() == StoredState(6, RESTORED)
    events = store.events()
    assert [(e["actor"], e["config_version"]) for e in events] == [
        ("a new router", 2), ("router", 6)]
    assert events[0]["id"] < events[1]["id"] == 5


@pytest.mark.parametrize("version", [1, 2])
def test_restore_at_a_version_the_store_holds_or_passed_changes_nothing(
        store: StateStore, version: int) -> None:
    store.initialize(INITIAL)
    held = store.commit(1, {**INITIAL, "canary_weight": 10}, {"actor": "admin"})

    with pytest.raises(StaleState) as raised:
        store.restore(RESTORED, version, {"actor": "router"})

    assert raised.value.current_version == 2
    assert store.read() == held
    assert [event["actor"] for event in store.events()] == ["admin"]


def test_restore_race_has_one_winner(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[StoredState | int | None] = [None] * len(stores)

    def restore(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = stores[index].restore({**RESTORED, "writer": index}, 8,
                                                    {"actor": f"router-{index}"})
        except StaleState as exc:
            outcomes[index] = exc.current_version

    threads = [threading.Thread(target=restore, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    [winner] = [outcome for outcome in outcomes if isinstance(outcome, StoredState)]
    assert sorted(outcome for outcome in outcomes if isinstance(outcome, int)) == [8] * 5
    assert stores[0].read() == winner
    [logged] = stores[0].events()
    assert logged["actor"] == f"router-{winner.document['writer']}"


def test_restore_needs_a_positive_version(store: StateStore) -> None:
    with pytest.raises(ValueError, match="config_version"):
        store.restore(RESTORED, 0, {"actor": "router"})
    assert store.read() is None
