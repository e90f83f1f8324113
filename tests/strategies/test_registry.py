from __future__ import annotations

import pytest

import strategies
from strategies import RequestFacts, RoutingState, UnknownStrategy, route
from strategies.base import Decision

ALL = ["blue-green", "canary", "release-in-place", "shadow"]


def test_names_lists_every_strategy_sorted() -> None:
    assert strategies.names() == tuple(ALL)
    assert sorted(strategies.STRATEGIES) == ALL


@pytest.mark.parametrize("name", ALL)
def test_get_returns_the_strategy_registered_under_its_name(name: str) -> None:
    strategy = strategies.get(name)
    assert strategy.name == name
    assert strategy is strategies.STRATEGIES[name]


@pytest.mark.parametrize("name", ["x", "", "Canary", "shadow-then-canary", "bluegreen"])
def test_unknown_name_is_an_error_listing_valid_names(name: str) -> None:
    with pytest.raises(UnknownStrategy) as caught:
        strategies.get(name)
    assert str(caught.value) == (
        f"unknown strategy {name!r}; valid strategies: blue-green, canary, release-in-place, shadow"
    )
    assert isinstance(caught.value, ValueError)


def test_registry_cannot_be_changed_at_runtime() -> None:
    with pytest.raises(TypeError):
        strategies.STRATEGIES["canary"] = strategies.STRATEGIES["shadow"]  # type: ignore[index]


def test_route_refuses_a_state_with_an_unknown_strategy() -> None:
    state = RoutingState("linear", "v1", "v2")
    with pytest.raises(UnknownStrategy, match="valid strategies"):
        route(state, RequestFacts())
    with pytest.raises(UnknownStrategy):
        route(state, RequestFacts(forced_version="v2"))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("forced", "percent"),
    [
        # Forcing the stable version beats a full canary and a full shadow.
        ("v1", 100),
        # Forcing the candidate beats strategies that never send it answers.
        ("v2", 0),
    ],
)
def test_forced_version_beats_every_strategy(name: str, forced: str, percent: int) -> None:
    state = RoutingState(name, "v1", "v2", canary_weight=percent, shadow_percent=percent)
    facts = RequestFacts(user_key="alice", forced_version=forced, draw=0.0, mirror_draw=0.0)
    assert route(state, facts) == Decision(forced, reason="forced")


@pytest.mark.parametrize(
    ("state", "facts", "version", "mirror_to"),
    [
        (RoutingState("release-in-place", "v1", "v2", canary_weight=9), RequestFacts(), "v1", None),
        (RoutingState("blue-green", "v2", "v1"), RequestFacts(), "v2", None),
        (RoutingState("canary", "v1", "v2", canary_weight=100), RequestFacts(), "v2", None),
        (RoutingState("shadow", "v1", "v2", shadow_percent=100), RequestFacts(), "v1", "v2"),
    ],
)
def test_route_without_forcing_delegates_to_the_state_strategy(
    state: RoutingState, facts: RequestFacts, version: str, mirror_to: str | None
) -> None:
    decision = route(state, facts)
    assert (decision.version, decision.mirror_to) == (version, mirror_to)


def test_canary_bucket_is_exported_for_the_dashboard() -> None:
    assert strategies.canary_bucket("v2", "alice") == strategies.canary.canary_bucket("v2", "alice")
