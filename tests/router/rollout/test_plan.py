"""Rollout plans: what POST /admin/rollout accepts, and the 422 every bad plan gets."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import Unprocessable
from metrics.analysis import Thresholds
from router.rollout_plan import RolloutPlan, parse_plan

VERSIONS = ["v1", "v2"]


def parse(doc: dict[str, Any], can_reload: bool = True) -> RolloutPlan:
    return parse_plan(doc, candidate="v2", versions=VERSIONS, can_reload=can_reload, stable="v1")


CANARY = {"strategy": "canary", "steps": [10, 50, 100], "interval_s": 1}

BAD_PLANS = {
    "steps not increasing": {**CANARY, "steps": [10, 50, 50, 100]},
    "steps going down": {**CANARY, "steps": [50, 10, 100]},
    "steps not ending at 100": {**CANARY, "steps": [10, 50]},
    "a step of 0": {**CANARY, "steps": [0, 50, 100]},
    "a step of 101": {**CANARY, "steps": [10, 101]},
    "a negative step": {**CANARY, "steps": [-10, 100]},
    "float steps": {**CANARY, "steps": [10.0, 50.5, 100]},
    "boolean steps": {**CANARY, "steps": [True, 100]},
    "empty steps": {**CANARY, "steps": []},
    "steps as a string": {**CANARY, "steps": "10,50,100"},
    "unknown field": {**CANARY, "stepz": [10, 100]},
    "unknown threshold": {**CANARY, "thresholds": {"max_latency_ms": 100}},
    "thresholds not an object": {**CANARY, "thresholds": [0.02]},
    "threshold out of range": {**CANARY, "thresholds": {"min_agreement": 1.5}},
    "threshold as a string": {**CANARY, "thresholds": {"max_p99_ratio": "2"}},
    "negative interval": {**CANARY, "interval_s": -1},
    "zero interval": {**CANARY, "interval_s": 0},
    "interval as a string": {**CANARY, "interval_s": "30"},
    "float min_requests": {**CANARY, "min_requests": 20.5},
    "zero min_requests": {**CANARY, "min_requests": 0},
    "boolean min_requests": {**CANARY, "min_requests": True},
    "zero max_failed_analyses": {**CANARY, "max_failed_analyses": 0},
    "manual_promotion not a boolean": {**CANARY, "manual_promotion": "yes"},
    "shadow_percent of 0": {**CANARY, "strategy": "shadow-then-canary", "shadow_percent": 0},
    "unknown strategy": {**CANARY, "strategy": "linear"},
    "no strategy": {"steps": [10, 100]},
    "candidate not configured": {**CANARY, "candidate": "v9"},
    "candidate is stable": {**CANARY, "candidate": "v1"},
    "release version not a label": {"strategy": "release-in-place", "release_version": "../v2"},
    "accuracy drop above 1": {**CANARY, "thresholds": {"max_accuracy_drop": 5}},
    "negative MAE increase": {**CANARY, "thresholds": {"max_mae_increase": -0.5}},
    "quality threshold null": {**CANARY, "thresholds": {"max_accuracy_drop": None}},
    "zero min_labels": {**CANARY, "min_labels": 0},
    "float min_labels": {**CANARY, "min_labels": 10.5},
}


@pytest.mark.parametrize("doc", list(BAD_PLANS.values()), ids=list(BAD_PLANS))
def test_bad_plans_are_unprocessable(doc: dict[str, Any]) -> None:
    with pytest.raises(Unprocessable) as caught:
        parse(doc)
    assert caught.value.status == 422
    assert caught.value.code == "invalid_plan"
    assert caught.value.message  # says what is wrong


def test_release_in_place_needs_the_model_admin_token() -> None:
    plan = {"strategy": "release-in-place", "release_version": "v2", "interval_s": 1}
    with pytest.raises(Unprocessable) as caught:
        parse(plan, can_reload=False)
    assert caught.value.code == "invalid_plan"
    assert "ROUTER_MODEL_ADMIN_TOKEN" in caught.value.message
    assert parse(plan, can_reload=True).release_version == "v2"


def test_the_message_names_the_problem() -> None:
    with pytest.raises(Unprocessable, match="stepz"):
        parse(BAD_PLANS["unknown field"])
    with pytest.raises(Unprocessable, match="max_latency_ms"):
        parse(BAD_PLANS["unknown threshold"])
    with pytest.raises(Unprocessable, match="ending at 100"):
        parse(BAD_PLANS["steps not ending at 100"])
    with pytest.raises(
        Unprocessable, match="canary, blue-green, shadow-then-canary, release-in-place"
    ):
        parse(BAD_PLANS["unknown strategy"])


GOOD_PLANS = [
    (
        {"strategy": "canary"},
        {
            "steps": (10, 25, 50, 100),
            "interval_s": 30.0,
            "min_requests": 100,
            "max_failed_analyses": 1,
            "manual_promotion": False,
        },
    ),
    (
        {
            **CANARY,
            "min_requests": 20,
            "thresholds": {"max_p99_ratio": 2, "max_error_rate_increase": 0.05},
        },
        {
            "steps": (10, 50, 100),
            "interval_s": 1,
            "min_requests": 20,
            "thresholds": Thresholds(max_latency_ratio=2.0, max_error_rate_increase=0.05),
        },
    ),
    ({"strategy": "canary", "steps": [100]}, {"steps": (100,)}),
    (
        {**CANARY, "min_labels": 300, "thresholds": {"max_accuracy_drop": 0.03}},
        {"min_labels": 300, "thresholds": Thresholds(max_accuracy_drop=0.03)},
    ),
    (
        {**CANARY, "thresholds": {"max_mae_increase": 2.5}},
        {"min_labels": 500, "thresholds": Thresholds(max_mae_increase=2.5)},
    ),
    (
        {
            "strategy": "canary",
            "steps": [1, 2, 3, 100],
            "interval_s": 0.5,
            "manual_promotion": True,
        },
        {"steps": (1, 2, 3, 100), "interval_s": 0.5, "manual_promotion": True},
    ),
    (
        {
            "strategy": "shadow-then-canary",
            "shadow_percent": 25,
            "thresholds": {"min_agreement": 0.9},
        },
        {"shadow_percent": 25, "thresholds": Thresholds(min_agreement=0.9)},
    ),
    (
        {"strategy": "blue-green", "preview_analysis": True, "bake_analyses": 3},
        {"preview_analysis": True, "bake_analyses": 3, "candidate": "v2"},
    ),
    (
        {"strategy": "release-in-place", "release_version": "v3"},
        {"release_version": "v3", "candidate": "v3"},
    ),
]


@pytest.mark.parametrize(("doc", "expected"), GOOD_PLANS)
def test_good_plans_parse_and_survive_the_state_document(
    doc: dict[str, Any], expected: dict[str, Any]
) -> None:
    plan = parse(doc)
    for name, value in expected.items():
        assert getattr(plan, name) == value
    assert plan.strategy == doc["strategy"]
    assert RolloutPlan.from_dict(plan.to_dict()) == plan
