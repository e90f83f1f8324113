"""``rollout watch`` shows the labels received: per-version quality and the paired comparison."""

from __future__ import annotations

from metrics.quality import summarise
from router.cli_render import render_analysis, verdict_line


def test_watch_lines_show_accuracy_mae_and_mcnemar() -> None:
    quality = summarise({
        "versions": {"v1": {"rows": 100, "correct": 90, "log_loss_sum": 25.0},
                     "v2": {"rows": 100, "correct": 80, "log_loss_sum": 40.0},
                     "r1": {"rows": 4, "abs_error_sum": 8.0, "sq_error_sum": 36.0}},
        "pairs": {"v1 -> v2": {"rows": 100, "stable_correct": 90, "candidate_correct": 80,
                               "stable_only": 12, "candidate_only": 2}},
    })

    text = render_analysis({"versions": {}, "quality": quality})

    assert "v1         100 labelled  accuracy 0.9 [0.8256, 0.9448]  log loss 0.25" in text
    assert "r1           4 labelled  MAE 2  RMSE 3" in text
    # exact: 2 * P(X <= 2), X ~ Bin(14, 1/2) = 212 / 16384
    assert "paired v1 vs v2 on 100 rows: accuracy 0.9 vs 0.8, discordant 12/2, McNemar p = 0.01294" \
        in text


def test_without_feedback_nothing_is_added() -> None:
    assert render_analysis({"versions": {}, "quality": None}) == "no traffic yet"


def test_a_verdict_waiting_for_labels_says_how_many_and_a_shifting_input_is_named() -> None:
    decision = {
        "decision": "wait", "action": "wait", "time": 0.0, "needed_labels": 60,
        "checks": [{"name": "labels", "value": 40, "threshold": 100, "decision": "wait"}],
        "input_drift": {"shifting": True, "note": "the input mix is shifting: age on v1 (v1): "
                        "PSI 0.31, major"},
    }

    line = verdict_line(decision)

    assert "about 60 more labelled rows (POST /feedback)" in line
    assert "labels 40 (limit 100) wait" in line
    assert line.endswith("the input mix is shifting: age on v1 (v1): PSI 0.31, major")
    calm = verdict_line({**decision, "input_drift": {"shifting": False, "note": "quiet"}})
    assert "quiet" not in calm
