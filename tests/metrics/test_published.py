"""The document a router instance publishes: its runs carried on, ended runs settled, never less."""

from __future__ import annotations

import json

import pytest

from metrics.published import document_total, next_document
from metrics.window import Reading, VersionCounts, went_down

HOUR = 3600.0


def counts(v1: float, v2: float = 0.0) -> Reading:
    """Requests per version, each with its latency bucket, as a router's counters hold them."""
    reading = {}
    for version, n in (("v1", v1), ("v2", v2)):
        if n:
            reading[version] = VersionCounts(requests=n, latency_buckets={0.1: n, float("inf"): n})
    return reading


def requests(document: dict) -> dict[str, float]:  # type: ignore[type-arg]
    total = document_total(json.loads(json.dumps(document)))  # as read back from the store
    return {version: c.requests for version, c in total.items()}


def test_a_first_document_holds_the_run_alone() -> None:
    doc = next_document(None, "web.1", "run-a", counts(5, 2), 100.0, HOUR)
    assert doc["instance"] == "web.1" and doc["published_at"] == 100.0
    assert list(doc["runs"]) == ["run-a"]
    assert requests(doc) == {"v1": 5, "v2": 2}


@pytest.mark.parametrize(
    ("earlier_run", "earlier", "run", "fresh", "expected"),
    [
        # the same run again (another worker of the instance took over): its counts, once
        ("a", counts(5, 2), "a", counts(7, 2), {"v1": 7, "v2": 2}),
        # a restart: a new run starts from zero; the earlier run is carried on
        ("a", counts(5, 2), "b", counts(1), {"v1": 6, "v2": 2}),
        # a restart whose run id came back (a process id used again): its counters fell
        ("a", counts(5, 2), "a", counts(1), {"v1": 6, "v2": 2}),
        # ... and fell for one version only, while the other already passed its old count
        ("a", counts(5, 2), "a", counts(9, 1), {"v1": 14, "v2": 3}),
    ],
)
def test_what_an_instance_publishes_counts_each_run_once(
    earlier_run: str, earlier: Reading, run: str, fresh: Reading, expected: dict[str, float]
) -> None:
    first = next_document(None, "web.1", earlier_run, earlier, 100.0, HOUR)
    doc = next_document(first, "web.1", run, fresh, 101.0, HOUR)
    assert requests(doc) == expected
    assert not went_down(document_total(doc), document_total(first))


def test_runs_that_overlap_each_keep_their_own_counts() -> None:
    """Old and new run of one instance both serving for a while (a dyno's preboot)."""
    doc = next_document(None, "web.1", "old", counts(10), 100.0, HOUR)
    doc = next_document(doc, "web.1", "new", counts(1), 101.0, HOUR)
    doc = next_document(doc, "web.1", "old", counts(12), 102.0, HOUR)
    doc = next_document(doc, "web.1", "new", counts(4), 103.0, HOUR)
    assert requests(doc) == {"v1": 16}
    assert set(doc["runs"]) == {"old", "new"}


def test_a_run_silent_for_the_retention_is_settled() -> None:
    doc = next_document(None, "web.1", "old", counts(10, 3), 100.0, HOUR)
    doc = next_document(doc, "web.1", "new", counts(2), 100.0 + HOUR - 1, HOUR)
    assert set(doc["runs"]) == {"old", "new"}

    doc = next_document(doc, "web.1", "new", counts(5), 100.0 + HOUR + 1, HOUR)
    assert set(doc["runs"]) == {"new"}
    assert requests(doc) == {"v1": 15, "v2": 3}
    doc = next_document(doc, "web.1", "newer", counts(1), 100.0 + 3 * HOUR, HOUR)
    assert requests(doc) == {"v1": 16, "v2": 3}  # settled twice over, never lost


def test_without_a_restart_check_a_dip_of_the_own_run_is_published_as_it_is() -> None:
    """While one process holds the lease, its run's counts are what its counters say."""
    doc = next_document(None, "web.1", "a", counts(5), 100.0, HOUR)
    doc = next_document(doc, "web.1", "a", counts(4), 101.0, HOUR, check_restart=False)
    assert requests(doc) == {"v1": 4}


@pytest.mark.parametrize("document", [{}, {"runs": {}}, {"settled": {}, "runs": {"a": {}}}])
def test_an_empty_document_counts_nothing(document: dict) -> None:  # type: ignore[type-arg]
    assert document_total(document) == {}
