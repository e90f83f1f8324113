"""Comparing a candidate's answer with stable's, row by row, for classifiers and regressors."""

from __future__ import annotations

import orjson
import pytest

from router.shadow import DEFAULT_TOLERANCE, Tolerance, compare


def answer(predictions: list[object], probabilities: list[list[float]] | None = None) -> bytes:
    doc: dict[str, object] = {"predictions": predictions, "model_version": "v"}
    if probabilities is not None:
        doc["probabilities"] = probabilities
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    "stable, candidate, tolerance, agreeing",
    [
        ([100.0], [104.9], Tolerance(0.0, 0.05), 1),      # 4.9 <= 0 + 0.05 * 100
        ([100.0], [105.1], Tolerance(0.0, 0.05), 0),      # 5.1 > 5
        ([0.0], [0.009], Tolerance(0.01, 0.05), 1),       # near zero the absolute part decides
        ([0.0], [0.011], Tolerance(0.01, 0.05), 0),
        ([-200.0], [-209.0], Tolerance(0.0, 0.05), 1),    # relative to |stable|
        ([1.0, 2.0, 3.0], [1.0, 2.5, 3.0], Tolerance(0.1, 0.0), 2),
        ([5], [5], DEFAULT_TOLERANCE, 1),                 # integers are numbers too
    ],
)
def test_regressors_agree_within_absolute_plus_relative_tolerance(
        stable: list[float], candidate: list[float], tolerance: Tolerance, agreeing: int) -> None:
    result = compare(answer(stable), answer(candidate), tolerance)

    assert result is not None and result.regression
    assert (result.rows, result.agreeing_rows) == (len(stable), agreeing)
    assert result.agree == (agreeing == len(stable))
    assert result.max_diff == pytest.approx(max(abs(a - b) for a, b in zip(stable, candidate)))


def test_classifiers_agree_on_the_same_class_and_report_the_largest_probability_gap() -> None:
    stable = answer(["yes", "no"], [[0.2, 0.8], [0.9, 0.1]])
    candidate = answer(["yes", "yes"], [[0.3, 0.7], [0.4, 0.6]])

    result = compare(stable, candidate)

    assert result is not None and not result.regression
    assert (result.rows, result.agreeing_rows, result.agree) == (2, 1, False)
    assert result.max_diff == pytest.approx(0.5)


@pytest.mark.parametrize("candidate", [b"not json", answer(["a"]), answer([None]),
                                       orjson.dumps({"model_version": "v"})])
def test_unusable_answers_are_not_compared(candidate: bytes) -> None:
    assert compare(answer([1.5]), candidate) is None


def test_a_plan_sets_the_tolerance_and_defaults_apply_otherwise() -> None:
    plan = {"plan": {"thresholds": {"agreement_abs_tol": 0.5, "agreement_rel_tol": 0.0}}}

    assert Tolerance.of_rollout(plan) == Tolerance(0.5, 0.0)
    assert Tolerance.of_rollout(None) == DEFAULT_TOLERANCE == Tolerance(0.01, 0.05)
