"""Values every strategy shares: routing state, request facts, decision, the Strategy protocol.

A strategy is pure: it reads a RoutingState and the RequestFacts of one request and returns a
Decision; it never sends anything, reads a clock or draws random numbers (the caller draws).

Errors raised by this package::

    StrategyError (ValueError)
    ├── UnknownStrategy   a name the registry does not hold; the message lists the valid ones
    ├── InvalidState      a percentage outside 0..100
    └── NoCandidate       promote asked for while no candidate is set
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol


class StrategyError(ValueError):
    """Base class of every error raised by the strategies package."""


class UnknownStrategy(StrategyError):
    """A strategy name that is not in the registry."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown strategy {name!r}; valid strategies: {', '.join(self.valid)}")


class InvalidState(StrategyError):
    """A routing state that no strategy can act on."""


class NoCandidate(StrategyError):
    """Promotion needs a candidate, and the state has none."""


@dataclass(frozen=True)
class RoutingState:
    """Which versions hold which role, and how much traffic the candidate gets.

    >>> RoutingState("canary", stable="v1", candidate="v2", canary_weight=10).canary_weight
    10
    """

    strategy: str
    stable: str
    candidate: str | None
    canary_weight: int = 0
    shadow_percent: int = 0
    previous_stable: str | None = None

    def __post_init__(self) -> None:
        for field in ("canary_weight", "shadow_percent"):
            value = getattr(self, field)
            if not 0 <= value <= 100:
                raise InvalidState(f"{field} must be a percentage from 0 to 100, got {value}")


@dataclass(frozen=True)
class RequestFacts:
    """What a strategy may know about one request, including the caller's draws in [0, 1)."""

    user_key: str | None = None
    forced_version: str | None = None
    draw: float = 0.0
    mirror_draw: float = 0.0


@dataclass(frozen=True)
class Decision:
    """Who answers, who gets a mirrored copy, where to retry once if refused, and why."""

    version: str
    mirror_to: str | None = None
    fallback: str | None = None
    reason: str = ""


class Strategy(Protocol):
    """One deployment strategy: a routing rule plus the promote and rollback transitions."""

    @property
    def name(self) -> str: ...

    def decide(self, state: RoutingState, facts: RequestFacts) -> Decision: ...

    def promote(self, state: RoutingState) -> RoutingState: ...

    def rollback(self, state: RoutingState) -> RoutingState: ...


@dataclass(frozen=True)
class Rules:
    """A Strategy assembled from a strategy module's functions."""

    name: str
    decide: Callable[[RoutingState, RequestFacts], Decision]
    promote: Callable[[RoutingState], RoutingState]
    rollback: Callable[[RoutingState], RoutingState]


def promoted(state: RoutingState) -> RoutingState:
    """Swap roles: the candidate becomes stable with all traffic, the old stable the candidate.

    >>> after = promoted(RoutingState("canary", "v1", "v2", canary_weight=50))
    >>> after.stable, after.candidate, after.canary_weight, after.previous_stable
    ('v2', 'v1', 0, 'v1')
    """
    if state.candidate is None:
        raise NoCandidate("there is no candidate to promote; set a candidate version first")
    return replace(
        state,
        stable=state.candidate,
        candidate=state.stable,
        canary_weight=0,
        shadow_percent=0,
        previous_stable=state.stable,
    )


def without_candidate_traffic(state: RoutingState) -> RoutingState:
    """Send the candidate nothing, neither answers nor mirrored copies; roles stay as they are."""
    return replace(state, canary_weight=0, shadow_percent=0)
