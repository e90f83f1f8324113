from __future__ import annotations

import pytest

from strategies import blue_green
from strategies.base import Decision, RequestFacts, RoutingState

NAME = blue_green.NAME


@pytest.mark.parametrize(
    ("state", "facts"),
    [
        (RoutingState(NAME, "v1", "v2"), RequestFacts()),
        (RoutingState(NAME, "v2", "v1"), RequestFacts(user_key="alice", draw=0.0)),
        (RoutingState(NAME, "v1", "v2", canary_weight=100, shadow_percent=100), RequestFacts()),
    ],
)
def test_live_colour_answers_and_idle_colour_is_never_a_fallback(
    state: RoutingState, facts: RequestFacts
) -> None:
    assert blue_green.decide(state, facts) == Decision(state.stable, reason="stable")


def test_switch_swaps_colours_and_switch_back_restores_them() -> None:
    blue = RoutingState(NAME, "v1", "v2")
    green = blue_green.promote(blue)
    assert green == RoutingState(NAME, "v2", "v1", previous_stable="v1")
    assert blue_green.decide(green, RequestFacts()).version == "v2"
    assert blue_green.rollback(green) == blue


def test_switching_twice_then_back_returns_to_the_colour_live_before_the_last_switch() -> None:
    twice = blue_green.promote(blue_green.promote(RoutingState(NAME, "v1", "v2")))
    assert twice == RoutingState(NAME, "v1", "v2", previous_stable="v2")
    assert blue_green.rollback(twice) == RoutingState(NAME, "v2", "v1")


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # Never promoted: nothing to switch back to.
        (RoutingState(NAME, "v1", "v2", canary_weight=40), RoutingState(NAME, "v1", "v2")),
        # Already switched back once.
        (RoutingState(NAME, "v1", "v2"), RoutingState(NAME, "v1", "v2")),
        # The idle colour was redeployed as v3 since the switch: v1 is gone, stay on v2.
        (
            RoutingState(NAME, "v2", "v3", shadow_percent=10, previous_stable="v1"),
            RoutingState(NAME, "v2", "v3", previous_stable="v1"),
        ),
    ],
)
def test_rollback_without_matching_idle_colour_only_clears_weights(
    before: RoutingState, after: RoutingState
) -> None:
    assert blue_green.rollback(before) == after
