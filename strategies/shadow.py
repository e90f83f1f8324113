"""Shadow: stable answers everything; a sample of requests is copied to the candidate too."""

from __future__ import annotations

from dataclasses import replace

from .base import Decision, RequestFacts, RoutingState, Rules, promoted

NAME = "shadow"


def decide(state: RoutingState, facts: RequestFacts) -> Decision:
    """Stable answers; the candidate gets a copy iff mirror_draw < shadow_percent / 100.

    >>> decide(RoutingState(NAME, "v1", "v2", shadow_percent=20), RequestFacts(mirror_draw=0.1))
    Decision(version='v1', mirror_to='v2', fallback=None, reason='shadow')
    """
    if state.candidate is not None and facts.mirror_draw < state.shadow_percent / 100:
        return Decision(version=state.stable, mirror_to=state.candidate, reason="shadow")
    return Decision(version=state.stable, reason="stable")


def promote(state: RoutingState) -> RoutingState:
    """The candidate becomes stable with all traffic; the old stable becomes the candidate."""
    return promoted(state)


def rollback(state: RoutingState) -> RoutingState:
    """Stop mirroring: the shadow percent drops to 0."""
    return replace(state, shadow_percent=0)


STRATEGY = Rules(NAME, decide, promote, rollback)
