"""Pure routing decisions: one module per deployment strategy and a registry to pick one by name.

>>> state = RoutingState("canary", stable="v1", candidate="v2", canary_weight=10)
>>> route(state, RequestFacts(draw=0.5)).version
'v1'
>>> get("canary").promote(state).stable
'v2'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from . import blue_green, canary, release_in_place, shadow
from .base import (
    Decision,
    InvalidState,
    NoCandidate,
    RequestFacts,
    RoutingState,
    Strategy,
    StrategyError,
    UnknownStrategy,
)
from .canary import canary_bucket

__all__ = [
    "STRATEGIES",
    "Decision",
    "InvalidState",
    "NoCandidate",
    "RequestFacts",
    "RoutingState",
    "Strategy",
    "StrategyError",
    "UnknownStrategy",
    "canary_bucket",
    "get",
    "names",
    "route",
]

STRATEGIES: Mapping[str, Strategy] = MappingProxyType(
    {
        module.STRATEGY.name: module.STRATEGY
        for module in (blue_green, canary, release_in_place, shadow)
    }
)


def names() -> tuple[str, ...]:
    """The registered strategy names, sorted.

    >>> names()
    ('blue-green', 'canary', 'release-in-place', 'shadow')
    """
    return tuple(sorted(STRATEGIES))


def get(name: str) -> Strategy:
    """The strategy registered under `name`; an unknown name raises UnknownStrategy.

    >>> get("shadow").name
    'shadow'
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(name, names()) from None


def route(state: RoutingState, facts: RequestFacts) -> Decision:
    """Decide who answers one request: a forced version wins, else the state's strategy decides.

    The strategy is looked up first, so a state naming an unknown strategy fails even when forced.

    >>> route(RoutingState("canary", "v1", "v2"), RequestFacts(forced_version="v2"))
    Decision(version='v2', mirror_to=None, fallback=None, reason='forced')
    """
    strategy = get(state.strategy)
    if facts.forced_version is not None:
        return Decision(version=facts.forced_version, reason="forced")
    return strategy.decide(state, facts)
