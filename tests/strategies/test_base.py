from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from strategies.base import (
    Decision,
    InvalidState,
    NoCandidate,
    RoutingState,
    StrategyError,
    promoted,
)


@pytest.mark.parametrize(
    ("canary_weight", "shadow_percent", "message"),
    [
        (-1, 0, "canary_weight must be a percentage from 0 to 100, got -1"),
        (101, 0, "canary_weight must be a percentage from 0 to 100, got 101"),
        (0, -5, "shadow_percent must be a percentage from 0 to 100, got -5"),
        (0, 150, "shadow_percent must be a percentage from 0 to 100, got 150"),
    ],
)
def test_percentages_outside_0_to_100_are_rejected(
    canary_weight: int, shadow_percent: int, message: str
) -> None:
    with pytest.raises(InvalidState) as caught:
        RoutingState("canary", "v1", "v2", canary_weight, shadow_percent)
    assert str(caught.value) == message


@pytest.mark.parametrize("value", [0, 100])
def test_percentage_bounds_are_accepted(value: int) -> None:
    state = RoutingState("canary", "v1", "v2", canary_weight=value, shadow_percent=value)
    assert (state.canary_weight, state.shadow_percent) == (value, value)


def test_values_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        RoutingState("canary", "v1", "v2").canary_weight = 50  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        Decision("v1").version = "v2"  # type: ignore[misc]


def test_promote_without_candidate_is_an_error_not_a_no_op() -> None:
    with pytest.raises(NoCandidate, match="no candidate to promote"):
        promoted(RoutingState("canary", "v1", None))


def test_errors_are_value_errors() -> None:
    assert issubclass(StrategyError, ValueError)
    assert issubclass(InvalidState, StrategyError)
    assert issubclass(NoCandidate, StrategyError)
