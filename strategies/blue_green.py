"""Blue-green: stable is the live colour, candidate the idle one; a switch swaps them at once."""

from __future__ import annotations

from dataclasses import replace

from .base import Decision, RequestFacts, RoutingState, Rules, promoted, without_candidate_traffic

NAME = "blue-green"


def decide(state: RoutingState, facts: RequestFacts) -> Decision:
    """Every request goes to the live colour; the idle colour is never a fallback.

    >>> decide(RoutingState(NAME, "v1", "v2"), RequestFacts(user_key="alice")).version
    'v1'
    """
    return Decision(version=state.stable, reason="stable")


def promote(state: RoutingState) -> RoutingState:
    """Switch colours: the idle colour goes live; the old live one is remembered for rollback.

    >>> promote(RoutingState(NAME, "v1", "v2")).stable
    'v2'
    """
    return promoted(state)


def rollback(state: RoutingState) -> RoutingState:
    """Switch back to the colour that was live before the last promote, if it is still the idle one.

    >>> rollback(promote(RoutingState(NAME, "v1", "v2"))).stable
    'v1'
    """
    cleared = without_candidate_traffic(state)
    if state.previous_stable is None or state.previous_stable != state.candidate:
        return cleared
    return replace(
        cleared, stable=state.previous_stable, candidate=state.stable, previous_stable=None
    )


STRATEGY = Rules(NAME, decide, promote, rollback)
