"""Predictions kept for feedback and the quality counts it adds, on both backends."""

from __future__ import annotations

import time

import pytest

from router.state.base import QUALITY_BUCKET_S, StateStore, quality_bucket
from tests.router.state.conftest import StoreFactory
from tests.servers import wait_until

ANSWER = {"version": "v1", "at": 0.0, "predictions": [1], "probabilities": [[0.2, 0.8]],
          "classes": [0, 1]}
COUNTS = {"versions": {"v1": {"rows": 1, "correct": 1, "log_loss_sum": 0.25}}, "pairs": {}}


def test_a_request_is_recalled_with_its_shadow_part(store: StateStore) -> None:
    shadow = {**ANSWER, "version": "v2"}
    store.remember_predictions([("r1", "served", ANSWER)], 60, 100)
    store.remember_predictions([("r1", "shadow", shadow)], 60, 100)

    assert store.recall_predictions("r1") == {"served": ANSWER, "shadow": shadow}
    assert store.recall_predictions("nobody") is None


def test_feedback_counts_once_and_a_different_one_conflicts(make_store: StoreFactory) -> None:
    store, other = make_store(), make_store()  # two routers on one store
    store.remember_predictions([("r1", "served", ANSWER)], 60, 100)
    at = time.time()

    assert store.record_feedback("r1", "f1", COUNTS, at, 60) == "recorded"
    assert other.record_feedback("r1", "f1", COUNTS, at, 60) == "duplicate"
    assert other.record_feedback("r1", "f2", COUNTS, at, 60) == "conflict"
    assert store.record_feedback("r2", "f1", COUNTS, at, 60) == "unknown"

    assert other.quality_counts()["versions"] == {
        "v1": {"rows": 1.0, "correct": 1.0, "log_loss_sum": 0.25}}
    assert store.recall_predictions("r1")["feedback"] == "f1"


def test_quality_counts_are_read_per_time_window(store: StateStore) -> None:
    now = time.time()
    earlier = now - 10 * QUALITY_BUCKET_S
    store.remember_predictions([("old", "served", ANSWER), ("new", "served", ANSWER)], 3600, 100)
    store.record_feedback("old", "f", COUNTS, earlier, 3600)
    store.record_feedback("new", "f", COUNTS, now, 3600)

    assert store.quality_counts()["versions"]["v1"]["rows"] == 2
    assert store.quality_counts(since=quality_bucket(now))["versions"]["v1"]["rows"] == 1
    assert store.quality_counts(until=quality_bucket(now))["versions"]["v1"]["rows"] == 1
    assert store.quality_counts(since=now + QUALITY_BUCKET_S)["versions"] == {}


def test_predictions_expire_after_their_retention(store: StateStore) -> None:
    store.remember_predictions([("r1", "served", ANSWER)], 0.2, 100)
    assert store.recall_predictions("r1") is not None

    assert wait_until(lambda: store.recall_predictions("r1") is None, timeout=5)
    assert store.record_feedback("r1", "f", COUNTS, time.time(), 60) == "unknown"


def test_beyond_the_size_limit_the_oldest_are_dropped_first(store: StateStore) -> None:
    for i in range(5):
        store.remember_predictions([(f"r{i}", "served", ANSWER)], 60, 3)
        time.sleep(0.002)  # distinct times: the order is by time

    assert [store.recall_predictions(f"r{i}") is not None for i in range(5)] == \
        [False, False, True, True, True]


def test_an_unknown_part_is_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="served"):
        store.remember_predictions([("r1", "feedback", ANSWER)], 60, 10)
