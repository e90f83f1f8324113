"""Quality from delayed labels: row scores, summaries and McNemar's test, tested like code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from metrics.quality import (
    LabelError, add_counts, flatten, mcnemar, score, summarise, unflatten, wilson,
)

CLASSES = ["benign", "malignant"]


def classifier(version: str, predictions: list[str], probabilities: list[list[float]]) -> dict:
    return {"version": version, "predictions": predictions, "probabilities": probabilities,
            "classes": CLASSES, "at": 0.0}


def test_a_classifiers_rows_are_scored_for_accuracy_and_clipped_log_loss() -> None:
    served = classifier("v1", ["benign", "malignant", "benign"],
                        [[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])

    counts = score(served, None, ["benign", "benign", "malignant"], "classification")

    v1 = counts["versions"]["v1"]
    assert (v1["rows"], v1["correct"]) == (3, 1)
    # -ln 0.9 - ln 0.2 - ln 1e-15 (a probability of 0 is clipped, not infinite)
    assert v1["log_loss_sum"] == pytest.approx(-math.log(0.9) - math.log(0.2) - math.log(1e-15))
    assert counts["pairs"] == {}


def test_labels_match_class_values_or_their_text() -> None:
    served = {"version": "v1", "predictions": [0, 1], "probabilities": [[0.6, 0.4], [0.3, 0.7]],
              "classes": [0, 1], "at": 0.0}

    assert score(served, None, [0, "1"], "classification")["versions"]["v1"]["correct"] == 2
    with pytest.raises(LabelError, match=r"labels\[1\] = 2 is not one of version v1's classes"):
        score(served, None, [0, 2], "classification")
    with pytest.raises(LabelError):
        score(served, None, [True, 0], "classification")  # a boolean is not the class 1


def test_under_shadow_both_versions_are_scored_on_the_same_rows_with_discordant_pairs() -> None:
    served = classifier("v1", ["benign", "benign", "malignant", "benign"], [[0.5, 0.5]] * 4)
    shadow = classifier("v2", ["benign", "malignant", "benign", "malignant"], [[0.5, 0.5]] * 4)
    truth = ["benign", "malignant", "malignant", "malignant"]

    counts = score(served, shadow, truth, "classification")

    assert counts["versions"]["v1"]["correct"] == 2  # rows 0 and 2
    assert counts["versions"]["v2"]["correct"] == 3  # rows 0, 1 and 3
    assert counts["pairs"]["v1 -> v2"] == {"rows": 4, "stable_correct": 2, "candidate_correct": 3,
                                           "stable_only": 1, "candidate_only": 2}


def test_a_regressors_rows_add_absolute_and_squared_errors() -> None:
    served = {"version": "r1", "predictions": [10.0, 20.0], "at": 0.0}
    shadow = {"version": "r2", "predictions": [12.0, 19.0], "at": 0.0}

    counts = score(served, shadow, [11.0, 23], "regression")

    assert counts["versions"]["r1"] == {"rows": 2, "abs_error_sum": 4.0, "sq_error_sum": 10.0}
    assert counts["versions"]["r2"] == {"rows": 2, "abs_error_sum": 5.0, "sq_error_sum": 17.0}
    summary = summarise(counts)
    assert summary["versions"]["r1"]["mae"] == 2.0
    assert summary["versions"]["r1"]["rmse"] == pytest.approx(math.sqrt(5.0))
    assert summary["paired"][0]["candidate_mae"] == 2.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "3.0", None, True])
def test_values_must_be_finite_numbers(bad: object) -> None:
    with pytest.raises(LabelError, match=r"values\[1\]"):
        score({"version": "r1", "predictions": [1.0, 2.0], "at": 0.0}, None, [1.0, bad],
              "regression")


def test_counts_round_trip_through_flat_maps_and_add_up() -> None:
    served = classifier("v1", ["benign"], [[0.7, 0.3]])
    shadow = classifier("v2", ["malignant"], [[0.4, 0.6]])
    counts = score(served, shadow, ["benign"], "classification")

    assert unflatten(flatten(counts)) == {k: {n: {f: float(v) for f, v in fs.items()}
                                              for n, fs in d.items()} for k, d in counts.items()}
    twice = add_counts(add_counts({}, counts), counts)
    assert twice["versions"]["v1"]["rows"] == 2
    assert twice["pairs"]["v1 -> v2"]["stable_only"] == 2


def test_accuracy_carries_a_wilson_interval() -> None:
    # Wilson (1927) interval for 8 of 10 at 95 %: (0.490, 0.943), as tabulated by Newcombe (1998)
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    summary = summarise({"versions": {"v1": {"rows": 10, "correct": 8, "log_loss_sum": 3.0}}})
    assert summary["versions"]["v1"]["accuracy"] == 0.8
    assert summary["versions"]["v1"]["log_loss"] == 0.3


def test_mcnemar_matches_a_published_worked_example() -> None:
    # Agresti, An Introduction to Categorical Data Analysis (2nd ed., 2007), section 8.1.1,
    # Table 8.1 (approval of the President's performance in two surveys, n = 1600): the
    # discordant cells are 150 and 86, and z = (86 - 150) / sqrt(86 + 150) = -4.17, so
    # z^2 = 17.36 without continuity correction; with it (Edwards 1948), (|150-86| - 1)^2 / 236.
    test = mcnemar(150, 86)
    assert test.method == "chi-square, continuity corrected"
    assert test.statistic == pytest.approx(63 ** 2 / 236)
    assert round((150 - 86) ** 2 / 236, 2) == 17.36
    assert test.p_value == pytest.approx(math.erfc(math.sqrt(63 ** 2 / 236) / math.sqrt(2)))
    assert test.p_value < 0.001


@pytest.mark.parametrize("b, c, p", [
    (1, 9, 2 * (1 + 10) / 2 ** 10),      # 2 * P(X <= 1), X ~ Bin(10, 1/2)
    (0, 5, 2 / 2 ** 5),                  # 2 * P(X = 0), X ~ Bin(5, 1/2)
    (3, 3, 1.0),
    (0, 0, 1.0),
])
def test_mcnemar_is_the_exact_binomial_test_for_few_discordant_pairs(b: int, c: int,
                                                                     p: float) -> None:
    test = mcnemar(b, c)
    assert test.method == "exact binomial"
    assert test.p_value == pytest.approx(p)
    assert mcnemar(c, b).p_value == pytest.approx(p)  # two-sided: symmetric


@pytest.mark.parametrize("pairs", [12, 200])
def test_mcnemar_keeps_its_type_one_error_at_alpha(pairs: int) -> None:
    """Under the null (each discordant pair equally likely either way) the test rejects at most
    alpha of the time, within a 99.9 % binomial bound on the simulated rate."""
    alpha, trials = 0.05, 4000
    rng = np.random.default_rng(20240216 + pairs)
    b = rng.binomial(pairs, 0.5, size=trials)
    rejections = sum(mcnemar(int(x), pairs - int(x)).p_value <= alpha for x in b)
    # the rate stays below alpha's 99.9 % upper binomial quantile over `trials` runs
    assert rejections <= binom.ppf(0.999, trials, alpha)
    # and the test is not vacuous: it rejects a clear difference almost always
    b_alt = rng.binomial(pairs, 0.05, size=200)
    power = np.mean([mcnemar(int(x), pairs - int(x)).p_value <= alpha for x in b_alt])
    assert power > 0.9
