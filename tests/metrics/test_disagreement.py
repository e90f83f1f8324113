"""Tallying two answers row by row, and summarizing the added-up tallies of a pair."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.disagreement import MAX_SAMPLE_INPUT_BYTES, field_key, summarize, tally_pair

CLASSES = ("benign", "malignant")


def answer(predictions: list[Any], probabilities: list[list[float]] | None = None) -> bytes:
    doc: dict[str, Any] = {"predictions": predictions, "model_version": "v"}
    if probabilities is not None:
        doc["probabilities"] = probabilities
    return orjson.dumps(doc)


def request(rows: list[Any]) -> bytes:
    return orjson.dumps({"instances": rows})


def exact(a: float, b: float) -> bool:
    return a == b


def add(*tallies: dict[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counts in tallies:
        total.update(counts)
    return dict(total)


def test_classifiers_fill_a_confusion_matrix_and_keep_the_disagreeing_rows() -> None:
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    stable = answer(["benign", "malignant", "benign"], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    candidate = answer(["benign", "benign", "malignant"], [[0.8, 0.2], [0.7, 0.3], [0.3, 0.7]])

    tally = tally_pair(request(rows), stable, candidate, exact, keep=10)

    assert tally is not None
    summary = summarize(tally.counts)
    assert (summary["task"], summary["rows"], summary["agreeing_rows"]) == ("classification", 3, 1)
    matrix = summary["confusion_matrix"]
    assert matrix["classes"] == ["benign", "malignant"]
    assert matrix["counts"] == [[1, 1], [1, 0]]  # rows: stable's class, columns: candidate's
    assert [(s["row"], s["input"], s["stable_prediction"], s["candidate_prediction"])
            for s in tally.samples] == [(1, [3.0, 4.0], "malignant", "benign"),
                                         (2, [5.0, 6.0], "benign", "malignant")]
    assert tally.samples[0]["difference"] == pytest.approx(0.5)
    buckets = {b["le"]: b["count"] for b in summary["differences"]["buckets"]}
    assert (buckets[0.1], buckets[0.3], buckets[0.5]) == (1, 1, 1)
    assert sum(buckets.values()) == 3


def test_regressors_get_no_matrix_and_disagree_outside_the_tolerance() -> None:
    tally = tally_pair(request([[0], [1]]), answer([10.0, 20.0]), answer([10.5, 20.0]),
                       lambda a, b: abs(a - b) <= 0.1, keep=5)

    assert tally is not None
    summary = summarize(tally.counts)
    assert summary["task"] == "regression" and summary["confusion_matrix"] is None
    assert summary["differences"]["kind"] == "value"
    assert (summary["rows"], summary["disagreeing_rows"]) == (2, 1)
    assert [s["row"] for s in tally.samples] == [0]
    assert "stable_probabilities" not in tally.samples[0]


def test_numeric_classes_sort_as_numbers_before_names() -> None:
    tally = tally_pair(request([[0]] * 3), answer([10, 2, "x"], [[1.0]] * 3),
                       answer([2, 10, "x"], [[1.0]] * 3), exact, keep=0)

    assert tally is not None and tally.samples == []
    matrix = summarize(tally.counts)["confusion_matrix"]
    assert matrix["classes"] == [2, 10, "x"]
    assert matrix["counts"] == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]


def test_a_sample_keeps_at_most_keep_rows_and_drops_an_oversized_input() -> None:
    big = ["x" * MAX_SAMPLE_INPUT_BYTES]
    tally = tally_pair(request([big, [1], [2]]), answer([1.0, 1.0, 1.0]),
                       answer([2.0, 2.0, 2.0]), exact, keep=2)

    assert tally is not None
    assert [s["row"] for s in tally.samples] == [0, 1]
    assert tally.samples[0]["input"] is None and tally.samples[0]["input_too_large"]
    assert tally.samples[1]["input"] == [1]


@pytest.mark.parametrize("stable, candidate", [
    (b"not json", answer([1.0])),
    (answer([1.0]), answer([1.0, 2.0])),              # different numbers of rows
    (answer(["a"], [[1.0]]), answer(["a"])),            # one classifier without probabilities
    (answer([True]), answer([1.0])),                    # a boolean is no regressor's value
    (answer([]), answer([])),
])
def test_answers_that_cannot_be_paired_row_by_row_add_nothing(stable: bytes,
                                                               candidate: bytes) -> None:
    assert tally_pair(request([[0]]), stable, candidate, exact, keep=5) is None


def test_a_body_without_usable_rows_still_counts_with_null_inputs() -> None:
    tally = tally_pair(b"{}", answer([1.0]), answer([2.0]), exact, keep=5)

    assert tally is not None and tally.samples[0]["input"] is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CLASSES), st.sampled_from(CLASSES),
                          st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=12),
       st.integers(1, 4))
def test_summed_tallies_count_every_row_once(rows: list[tuple[str, str, float, float]],
                                             split: int) -> None:
    """However requests split the rows, the matrix is the count of (stable, candidate) pairs."""
    tallies = []
    for start in range(0, len(rows), split):
        chunk = rows[start:start + split]
        tally = tally_pair(request([[i] for i in range(len(chunk))]),
                           answer([r[0] for r in chunk], [[r[2], 1 - r[2]] for r in chunk]),
                           answer([r[1] for r in chunk], [[r[3], 1 - r[3]] for r in chunk]),
                           exact, keep=100)
        assert tally is not None
        tallies.append(tally.counts)

    summary = summarize(add(*tallies))

    expected = Counter((s, c) for s, c, _, _ in rows)
    classes = summary["confusion_matrix"]["classes"]
    counts = summary["confusion_matrix"]["counts"]
    assert {(classes[i], classes[j]): n for i, line in enumerate(counts)
            for j, n in enumerate(line) if n} == dict(expected)
    assert summary["disagreeing_rows"] == sum(1 for s, c, _, _ in rows if s != c)
    assert sum(b["count"] for b in summary["differences"]["buckets"]) == len(rows)


def test_nothing_recorded_summarizes_as_empty() -> None:
    summary = summarize({})

    assert (summary["task"], summary["rows"], summary["agreement"]) == (None, 0, None)
    assert summary["confusion_matrix"] is None
    assert summary["differences"]["buckets"][-1] == {"le": None, "count": 0}
    assert field_key("m", "a", 1) == '["m","a",1]'
