"""The judge's quality check: labelled predictions (POST /feedback) held to ``max_accuracy_drop``
(classifiers) or ``max_mae_increase`` (regressors), with the guarantees of every other check:
harm is shown by anytime-valid bounds, looking as often as a rollout likes, and a plan that asks
for it waits for enough labels and says how many more."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from metrics.analysis import FAIL, PASS, WAIT, Thresholds, judge, judge_alone, quality_checks
from metrics.window import VersionCounts

ACCURACY = Thresholds(max_accuracy_drop=0.05)
MAE = Thresholds(max_mae_increase=0.1)
BUSY = VersionCounts(requests=5000.0)  # plenty of requests: only the quality check can wait


def classifier(rows: float, correct: float) -> dict[str, float]:
    return {"rows": rows, "correct": correct, "log_loss_sum": 0.2 * rows}


def regressor(errors: np.ndarray) -> dict[str, float]:
    return {"rows": float(len(errors)), "abs_error_sum": float(np.abs(errors).sum()),
            "sq_error_sum": float((errors * errors).sum())}


def names(verdict) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.name for c in verdict.checks]


def test_a_plan_without_the_quality_check_ignores_labels() -> None:
    verdict = judge(BUSY, BUSY, Thresholds(), min_requests=50,
                    quality=(classifier(500, 480), classifier(500, 200)))
    assert verdict.decision == PASS and "accuracy_drop" not in names(verdict)


def test_too_few_labels_wait_and_say_how_many_more() -> None:
    verdict = judge(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=100,
                    quality=(classifier(300, 285), classifier(40, 38)))
    assert verdict.decision == WAIT and verdict.needed_labels == 60
    labels = verdict.checks[0]
    assert labels.name == "labels" and labels.decision == WAIT
    assert "60 more labelled rows" in labels.detail and "100 per version" in labels.detail
    evidence = orjson.loads(orjson.dumps(verdict.evidence()))
    assert evidence["needed_labels"] == 60
    assert evidence["samples"]["candidate_labelled"] == 40


def test_no_labels_at_all_wait_and_name_the_endpoint() -> None:
    verdict = judge(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=100, quality=(None, None))
    assert verdict.decision == WAIT and verdict.needed_labels == 100
    assert "POST /feedback" in [c for c in verdict.checks if c.name == "quality"][0].detail


def test_a_clear_drop_fails_before_the_labels_are_all_in() -> None:
    # evidence of harm ends the rollout at once: the bounds hold at every sample size
    verdict = judge(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=1000,
                    quality=(classifier(80, 76), classifier(80, 40)))
    assert verdict.decision == FAIL
    (check,) = [c for c in verdict.checks if c.name == "accuracy_drop"]
    assert check.decision == FAIL and check.value == pytest.approx(0.45)
    assert check.interval is not None and check.interval[0] > 0.05
    assert "accuracy stable 76/80 (95.00%), candidate 40/80 (50.00%)" in check.detail


def test_an_equal_accuracy_passes_once_labelled() -> None:
    verdict = judge(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=100,
                    quality=(classifier(400, 380), classifier(400, 381)))
    assert verdict.decision == PASS
    (check,) = [c for c in verdict.checks if c.name == "accuracy_drop"]
    assert check.decision == PASS and not check.proven  # 400 rows cannot show a drop under 5 pts


def test_require_evidence_waits_for_proof_and_counts_labels_not_requests() -> None:
    thin = judge(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=100, require_evidence=True,
                 quality=(classifier(400, 380), classifier(400, 381)))
    assert thin.decision == WAIT and thin.needed_labels is not None and thin.needed_labels > 0
    plenty = judge(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=100, require_evidence=True,
                   quality=(classifier(20000, 19000), classifier(20000, 19010)))
    assert [c for c in plenty.checks if c.name == "accuracy_drop"][0].proven


def test_the_wrong_threshold_for_the_task_says_which_to_set() -> None:
    verdict = judge(BUSY, BUSY, MAE, min_requests=50, min_labels=10,
                    quality=(classifier(400, 380), classifier(400, 381)))
    assert verdict.decision == WAIT
    assert "set max_accuracy_drop" in [c for c in verdict.checks if c.name == "quality"][0].detail
    verdict = judge(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=10,
                    quality=(regressor(np.ones(50)), regressor(np.ones(50))))
    assert "set max_mae_increase" in [c for c in verdict.checks if c.name == "quality"][0].detail


def test_mae_increase_fails_on_a_worse_regressor_and_passes_an_equal_one() -> None:
    rng = np.random.default_rng(5)
    stable = regressor(rng.normal(0, 1.0, 600))
    worse = judge(BUSY, BUSY, MAE, min_requests=50, min_labels=100,
                  quality=(stable, regressor(rng.normal(0, 2.0, 600))))
    assert worse.decision == FAIL
    (check,) = [c for c in worse.checks if c.name == "mae_increase"]
    assert check.value == pytest.approx(0.8, abs=0.15) and check.interval[0] > 0.1  # type: ignore[index]
    same = judge(BUSY, BUSY, MAE, min_requests=50, min_labels=100,
                 quality=(stable, regressor(rng.normal(0, 1.0, 600))))
    assert same.decision == PASS


def test_the_mae_bounds_wait_for_thirty_rows_per_version() -> None:
    checks, short = quality_checks((regressor(np.full(20, 0.1)), regressor(np.full(20, 9.0))),
                                   MAE, 0.01, 10)
    assert checks[0].decision == PASS and checks[0].interval == (-math.inf, math.inf)
    assert short == 0


def test_shadow_and_bake_judge_quality_too() -> None:
    mirrored = VersionCounts(shadow_requests=5000.0, agree=5000.0)
    shadow = judge(BUSY, mirrored, ACCURACY, min_requests=50, min_labels=100, shadow=True,
                   quality=(classifier(300, 290), classifier(300, 150)))
    assert shadow.decision == FAIL and "accuracy_drop" in names(shadow)
    bake = judge_alone(BUSY, BUSY, ACCURACY, min_requests=50, min_labels=100,
                       quality=(classifier(300, 290), classifier(300, 150)))
    assert bake.decision == FAIL
    assert bake.samples["reference_labelled"] == 300 and bake.samples["labelled"] == 300


# -- seeded simulations: how often a rollout that looks again and again is wrong ----------------


def rollouts(runs: int, looks: np.ndarray, p_stable: float, p_candidate: float, t: Thresholds,
             seed: int) -> tuple[float, np.ndarray]:
    """Share of ``runs`` the check ever fails, looking at ``looks`` labelled rows per version;
    and for each failed run the labels it took."""
    rng = np.random.default_rng(seed)
    n = int(looks[-1])
    right_s = np.cumsum(rng.random((runs, n)) < p_stable, axis=1)[:, looks - 1]
    right_c = np.cumsum(rng.random((runs, n)) < p_candidate, axis=1)[:, looks - 1]
    failed, took = 0, []
    for run in range(runs):
        for i, rows in enumerate(looks):
            checks, _ = quality_checks((classifier(rows, right_s[run, i]),
                                        classifier(rows, right_c[run, i])), t, 0.01, 100)
            if checks[0].decision == FAIL:
                failed += 1
                took.append(rows)
                break
    return failed / runs, np.asarray(took)


LOOKS = np.unique(np.geomspace(20, 4000, 30).astype(int))


@pytest.mark.parametrize("p", [0.95, 0.7])
def test_a_candidate_as_accurate_as_stable_is_rarely_rolled_back(p: float) -> None:
    # alpha 0.01 for the check (the judge splits 1 - confidence between its checks); a drop of
    # exactly the tolerance is the hardest case that must still pass
    rate, _ = rollouts(400, LOOKS, p, p - 0.05, ACCURACY, seed=int(p * 100))
    assert rate <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 400), rate  # 0.025


def test_a_clearly_worse_candidate_is_rolled_back_within_a_few_hundred_labels() -> None:
    # 95 % against 75 %: a drop four times the tolerance (the median run needs about 310 labelled
    # rows per version at alpha 0.01)
    rate, took = rollouts(200, LOOKS, 0.95, 0.75, ACCURACY, seed=9)
    assert rate >= 0.99, rate
    assert np.median(took) <= 400 and np.percentile(took, 90) <= 600, took


@pytest.mark.parametrize("scale_ratio", [1.0, 1.1])
def test_mae_checks_rarely_roll_back_a_regressor_within_the_tolerance(scale_ratio: float) -> None:
    # absolute errors of normal residuals; ratio 1.1 raises the MAE by 0.08 (limit 0.1)
    runs, rng = 300, np.random.default_rng(int(scale_ratio * 10))
    looks = np.unique(np.geomspace(30, 3000, 25).astype(int))
    failed = 0
    for _ in range(runs):
        s = rng.normal(0, 1.0, int(looks[-1]))
        c = rng.normal(0, scale_ratio, int(looks[-1]))
        for n in looks:
            checks, _ = quality_checks((regressor(s[:n]), regressor(c[:n])), MAE, 0.01, 100)
            if checks[0].decision == FAIL:
                failed += 1
                break
    assert failed / runs <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / runs), failed


def test_mae_checks_catch_a_regressor_twice_as_wrong() -> None:
    rng = np.random.default_rng(21)
    took = []
    for _ in range(100):
        s, c = rng.normal(0, 1.0, 3000), rng.normal(0, 2.0, 3000)
        for n in range(30, 3001, 10):
            checks, _ = quality_checks((regressor(s[:n]), regressor(c[:n])), MAE, 0.01, 100)
            if checks[0].decision == FAIL:
                took.append(n)
                break
    # an MAE of 1.6 against 0.8 (limit +0.1): the median run needs about 270 labelled rows
    assert len(took) == 100 and np.median(took) <= 350, (len(took), np.median(took))


@pytest.mark.parametrize(("p_candidate", "low", "high"), [(0.75, 0.8, 0.95), (0.80, 0.1, 0.3)])
def test_the_default_min_labels_shows_a_large_drop_most_of_the_time(
    p_candidate: float, low: float, high: float
) -> None:
    # what the plan's default of 500 labelled rows per version buys, at a canary's share of
    # alpha (0.01 over three checks): the rates router/rollout_plan.py states
    n, runs, rng = 500, 400, np.random.default_rng(17)
    shown = 0
    for _ in range(runs):
        right_s, right_c = (rng.random(n) < 0.95).sum(), (rng.random(n) < p_candidate).sum()
        checks, _ = quality_checks((classifier(n, right_s), classifier(n, right_c)), ACCURACY,
                                   0.01 / 3, n)
        shown += checks[0].decision == FAIL
    assert low <= shown / runs <= high, shown / runs
