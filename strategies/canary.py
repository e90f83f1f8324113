"""Canary: `canary_weight` percent of requests go to the candidate, the rest to stable.

A request with a user key is assigned by a hash of (candidate, user key), so a user keeps their
version while the weight grows; a request without one is assigned by the caller's draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from .base import Decision, RequestFacts, RoutingState, Rules, promoted

NAME = "canary"
BUCKETS = 10_000
_BUCKETS_PER_PERCENT = BUCKETS // 100


def canary_bucket(candidate: str, user_key: str) -> int:
    """The user's bucket in [0, 10000) for this candidate; the same in every process and release.

    A user is on the candidate iff bucket < canary_weight * 100, so raising the weight only ever
    moves users from stable to candidate. A new candidate label reshuffles the users.

    >>> canary_bucket("v2", "alice") == canary_bucket("v2", "alice")
    True
    """
    key = f"{candidate}\x00{user_key}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def decide(state: RoutingState, facts: RequestFacts) -> Decision:
    """Pick candidate or stable; a request sent to the candidate may fall back to stable once.

    An empty user key counts as none: one shared bucket for all such requests would skew the split.

    >>> decide(RoutingState(NAME, "v1", "v2", canary_weight=30), RequestFacts(draw=0.1))
    Decision(version='v2', mirror_to=None, fallback='v1', reason='canary')
    """
    if state.candidate is None:
        return Decision(version=state.stable, reason="stable")
    if facts.user_key:
        bucket = canary_bucket(state.candidate, facts.user_key)
        on_candidate = bucket < state.canary_weight * _BUCKETS_PER_PERCENT
        prefix = "sticky-"
    else:
        on_candidate = facts.draw < state.canary_weight / 100
        prefix = ""
    if on_candidate:
        return Decision(version=state.candidate, fallback=state.stable, reason=prefix + "canary")
    return Decision(version=state.stable, reason=prefix + "stable")


def promote(state: RoutingState) -> RoutingState:
    """The candidate becomes stable with all traffic; the old stable becomes the candidate."""
    return promoted(state)


def rollback(state: RoutingState) -> RoutingState:
    """All answers back to stable: the canary weight drops to 0."""
    return replace(state, canary_weight=0)


STRATEGY = Rules(NAME, decide, promote, rollback)
