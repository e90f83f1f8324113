from __future__ import annotations

import random

import pytest

from strategies import shadow
from strategies.base import Decision, RequestFacts, RoutingState

from .binomial import CONFIDENCE, interval

NAME = shadow.NAME
REQUESTS = 10_000


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_mirror_rate_matches_shadow_percent_and_stable_always_answers(percent: int) -> None:
    state = RoutingState(NAME, "v1", "v2", shadow_percent=percent)
    rng = random.Random(percent)
    decisions = [
        shadow.decide(state, RequestFacts(draw=rng.random(), mirror_draw=rng.random()))
        for _ in range(REQUESTS)
    ]
    assert {(d.version, d.fallback) for d in decisions} == {("v1", None)}
    mirrored = sum(d.mirror_to == "v2" for d in decisions)
    low, high = interval(REQUESTS, percent)
    assert low <= mirrored <= high, f"{mirrored} mirrored, outside the {CONFIDENCE:.1%} interval"


@pytest.mark.parametrize(
    ("state", "mirror_draw", "expected"),
    [
        (RoutingState(NAME, "v1", "v2", shadow_percent=0), 0.0, Decision("v1", reason="stable")),
        (
            RoutingState(NAME, "v1", "v2", shadow_percent=100),
            0.999999,
            Decision("v1", mirror_to="v2", reason="shadow"),
        ),
        (
            RoutingState(NAME, "v1", "v2", shadow_percent=30),
            0.29,
            Decision("v1", mirror_to="v2", reason="shadow"),
        ),
        (RoutingState(NAME, "v1", "v2", shadow_percent=30), 0.30, Decision("v1", reason="stable")),
        (RoutingState(NAME, "v1", None, shadow_percent=100), 0.0, Decision("v1", reason="stable")),
        # The canary weight has no say in shadow mode.
        (RoutingState(NAME, "v1", "v2", canary_weight=100), 0.0, Decision("v1", reason="stable")),
    ],
)
def test_decision_table(state: RoutingState, mirror_draw: float, expected: Decision) -> None:
    assert shadow.decide(state, RequestFacts(user_key="u", mirror_draw=mirror_draw)) == expected


def test_promote_swaps_roles_and_stops_mirroring() -> None:
    before = RoutingState(NAME, "v1", "v2", shadow_percent=50)
    assert shadow.promote(before) == RoutingState(NAME, "v2", "v1", previous_stable="v1")


def test_rollback_stops_mirroring_and_keeps_roles() -> None:
    before = RoutingState(NAME, "v1", "v2", canary_weight=5, shadow_percent=50)
    assert shadow.rollback(before) == RoutingState(NAME, "v1", "v2", canary_weight=5)
