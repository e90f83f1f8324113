"""Release in place: one served version; a release replaces the model behind `stable`."""

from __future__ import annotations

from .base import Decision, RequestFacts, RoutingState, Rules, promoted, without_candidate_traffic

NAME = "release-in-place"


def decide(state: RoutingState, facts: RequestFacts) -> Decision:
    """Every request goes to stable, with nowhere to fall back to.

    >>> decide(RoutingState(NAME, "v1", "v2", canary_weight=100), RequestFacts()).version
    'v1'
    """
    return Decision(version=state.stable, reason="stable")


def promote(state: RoutingState) -> RoutingState:
    """The candidate becomes stable; the old stable is kept as candidate and as previous_stable."""
    return promoted(state)


def rollback(state: RoutingState) -> RoutingState:
    """Clear any candidate traffic; which version is stable does not change."""
    return without_candidate_traffic(state)


STRATEGY = Rules(NAME, decide, promote, rollback)
