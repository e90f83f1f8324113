from __future__ import annotations

import pytest

from strategies import release_in_place
from strategies.base import Decision, RequestFacts, RoutingState

NAME = release_in_place.NAME


@pytest.mark.parametrize(
    ("state", "facts"),
    [
        (RoutingState(NAME, "v1", "v2"), RequestFacts()),
        (RoutingState(NAME, "v1", "v2", canary_weight=100), RequestFacts(draw=0.0)),
        (RoutingState(NAME, "v1", "v2", shadow_percent=100), RequestFacts(user_key="alice")),
        (RoutingState(NAME, "v1", None), RequestFacts(draw=0.99, mirror_draw=0.0)),
    ],
)
def test_every_request_goes_to_stable_without_fallback_or_mirror(
    state: RoutingState, facts: RequestFacts
) -> None:
    assert release_in_place.decide(state, facts) == Decision("v1", reason="stable")


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            RoutingState(NAME, "v1", "v2"),
            RoutingState(NAME, "v2", "v1", previous_stable="v1"),
        ),
        (
            RoutingState(
                NAME, "v2", "v3", canary_weight=20, shadow_percent=5, previous_stable="v0"
            ),
            RoutingState(NAME, "v3", "v2", previous_stable="v2"),
        ),
    ],
)
def test_promote_makes_candidate_stable(before: RoutingState, after: RoutingState) -> None:
    assert release_in_place.promote(before) == after


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (RoutingState(NAME, "v1", "v2"), RoutingState(NAME, "v1", "v2")),
        (
            RoutingState(
                NAME, "v2", "v1", canary_weight=30, shadow_percent=9, previous_stable="v1"
            ),
            RoutingState(NAME, "v2", "v1", previous_stable="v1"),
        ),
    ],
)
def test_rollback_only_clears_candidate_traffic(before: RoutingState, after: RoutingState) -> None:
    assert release_in_place.rollback(before) == after
