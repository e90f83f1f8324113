"""Disagreement tallies and samples in every backend: added up, capped, rotating, expiring."""

from __future__ import annotations

import threading
import time

import pytest

from router.state import StateStore
from tests.router.state.conftest import StoreFactory

COUNTS = {'["rows"]': 2, '["agree"]': 1, '["m","benign","malignant"]': 1}


def sample(n: int) -> dict[str, object]:
    return {"request_id": f"r{n}", "row": 0, "input": [n], "stable_prediction": "benign",
            "candidate_prediction": "malignant"}


def test_tallies_add_up_across_store_objects_and_pairs_stay_apart(
        make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    assert one.disagreements("v1", "v2").counts == {}
    one.record_disagreements("v1", "v2", COUNTS, [sample(1)], keep=10, ttl_s=60)
    two.record_disagreements("v1", "v2", COUNTS, [sample(2)], keep=10, ttl_s=60)
    two.record_disagreements("v2", "v3", {'["rows"]': 7}, [], keep=10, ttl_s=60)

    got = one.disagreements("v1", "v2")
    assert got.counts == {key: 2 * n for key, n in COUNTS.items()}
    assert [s["request_id"] for s in got.samples] == ["r2", "r1"]  # newest first
    assert two.disagreements("v2", "v3").counts == {'["rows"]': 7}
    assert two.disagreements("v2", "v1").counts == {}  # a pair is ordered: stable, candidate
    assert [(p["stable"], p["candidate"]) for p in one.disagreement_pairs()] == [
        ("v2", "v3"), ("v1", "v2")]


def test_samples_keep_the_newest_and_drop_the_oldest(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    for n in range(7):
        (one if n % 2 else two).record_disagreements("v1", "v2", COUNTS, [sample(n)], keep=3,
                                                     ttl_s=60)
    one.record_disagreements("v1", "v2", COUNTS, [sample(7), sample(8)], keep=3, ttl_s=60)

    assert [s["request_id"] for s in one.disagreements("v1", "v2").samples] == ["r8", "r7", "r6"]
    assert [s["request_id"] for s in two.disagreements("v1", "v2", limit=2).samples] == [
        "r8", "r7"]
    assert two.disagreements("v1", "v2", limit=0).samples == []


def test_keep_zero_keeps_tallies_and_no_samples(store: StateStore) -> None:
    store.record_disagreements("v1", "v2", COUNTS, [sample(1)], keep=0, ttl_s=60)

    got = store.disagreements("v1", "v2")
    assert (got.counts, got.samples) == (COUNTS, [])


def test_concurrent_writers_lose_no_count(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(4)]

    def write(store: StateStore) -> None:
        for n in range(25):
            store.record_disagreements("v1", "v2", {'["rows"]': 1}, [sample(n)], keep=5,
                                       ttl_s=60)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    got = stores[0].disagreements("v1", "v2", limit=100)
    assert got.counts == {'["rows"]': 100}
    assert len(got.samples) == 5


def test_a_pair_not_recorded_within_its_retention_is_forgotten(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    one.record_disagreements("v1", "v2", COUNTS, [sample(1)], keep=5, ttl_s=0.3)
    one.record_disagreements("v1", "v3", COUNTS, [sample(1)], keep=5, ttl_s=0.3)
    time.sleep(0.2)
    one.record_disagreements("v1", "v3", COUNTS, [], keep=5, ttl_s=0.3)  # extends v1-v3
    time.sleep(0.2)  # past v1-v2's retention, inside v1-v3's

    assert two.disagreements("v1", "v2").counts == {}
    assert two.disagreements("v1", "v2").samples == []
    assert [p["candidate"] for p in two.disagreement_pairs()] == ["v3"]
    assert two.disagreements("v1", "v3").counts["[\"rows\"]"] == 4

    one.record_disagreements("v1", "v2", {'["rows"]': 1}, [], keep=5, ttl_s=30)
    assert two.disagreements("v1", "v2").counts == {'["rows"]': 1}  # starts afresh


def test_retention_must_be_positive(store: StateStore) -> None:
    with pytest.raises(ValueError, match="retention"):
        store.record_disagreements("v1", "v2", COUNTS, [], keep=5, ttl_s=0)
