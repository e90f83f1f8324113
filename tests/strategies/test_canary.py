from __future__ import annotations

import random

import pytest

from strategies import canary
from strategies.base import Decision, RequestFacts, RoutingState

from .binomial import CONFIDENCE, interval

NAME = canary.NAME
REQUESTS = 10_000
WEIGHTS = [1, 10, 25, 50, 90]


def state_at(weight: int, candidate: str | None = "v2") -> RoutingState:
    return RoutingState(NAME, "v1", candidate, canary_weight=weight)


@pytest.mark.parametrize("weight", WEIGHTS)
def test_anonymous_split_matches_weight(weight: int) -> None:
    rng = random.Random(weight)
    state = state_at(weight)
    on_candidate = sum(
        canary.decide(state, RequestFacts(draw=rng.random())).version == "v2"
        for _ in range(REQUESTS)
    )
    low, high = interval(REQUESTS, weight)
    assert low <= on_candidate <= high, f"{on_candidate} outside the {CONFIDENCE:.1%} interval"


@pytest.mark.parametrize("weight", WEIGHTS)
def test_sticky_split_over_distinct_users_matches_weight(weight: int) -> None:
    state = state_at(weight)
    on_candidate = sum(
        canary.decide(state, RequestFacts(user_key=f"user-{i}")).version == "v2"
        for i in range(REQUESTS)
    )
    low, high = interval(REQUESTS, weight)
    assert low <= on_candidate <= high, f"{on_candidate} outside the {CONFIDENCE:.1%} interval"


def test_users_on_the_candidate_stay_there_as_the_weight_grows() -> None:
    users = [f"user-{i}" for i in range(5_000)]

    def cohort(weight: int) -> set[str]:
        state = state_at(weight)
        return {u for u in users if canary.decide(state, RequestFacts(user_key=u)).version == "v2"}

    at_10, at_25, at_50 = cohort(10), cohort(25), cohort(50)
    assert at_10, "no user reached the candidate at 10%"
    assert at_10 <= at_25 <= at_50
    assert len(at_10) < len(at_25) < len(at_50)


def test_assignment_ignores_the_draw_and_repeats_exactly() -> None:
    state = state_at(30)
    rng = random.Random(7)
    for i in range(5_000):
        key = f"user-{i}"
        first = canary.decide(state, RequestFacts(user_key=key, draw=rng.random()))
        again = canary.decide(state, RequestFacts(user_key=key, draw=rng.random()))
        assert first == again


@pytest.mark.parametrize(
    ("candidate", "user_key", "bucket"),
    # Pinned: router instances and releases must agree, and a changed hash would reshuffle
    # every user of a running canary.
    [("v2", "alice", 3949), ("v2", "bob", 6965), ("v3", "alice", 7923)],
)
def test_bucket_is_a_pinned_hash(candidate: str, user_key: str, bucket: int) -> None:
    assert canary.canary_bucket(candidate, user_key) == bucket


def test_buckets_cover_the_whole_range() -> None:
    buckets = [canary.canary_bucket("v2", f"user-{i}") for i in range(REQUESTS)]
    assert 0 <= min(buckets) < 10 and canary.BUCKETS - 10 <= max(buckets) < canary.BUCKETS


def test_a_new_candidate_reshuffles_users() -> None:
    users = [f"user-{i}" for i in range(1_000)]
    same = sum(canary.canary_bucket("v2", u) == canary.canary_bucket("v3", u) for u in users)
    assert same < 10


@pytest.mark.parametrize(
    ("weight", "facts", "expected"),
    [
        (0, RequestFacts(draw=0.0), Decision("v1", reason="stable")),
        (100, RequestFacts(draw=0.999999), Decision("v2", fallback="v1", reason="canary")),
        (30, RequestFacts(draw=0.29), Decision("v2", fallback="v1", reason="canary")),
        (30, RequestFacts(draw=0.30), Decision("v1", reason="stable")),
        (0, RequestFacts(user_key="alice"), Decision("v1", reason="sticky-stable")),
        (
            100,
            RequestFacts(user_key="alice"),
            Decision("v2", fallback="v1", reason="sticky-canary"),
        ),
        # An empty key would put every such request in one bucket; it counts as no key.
        (100, RequestFacts(user_key="", draw=0.5), Decision("v2", fallback="v1", reason="canary")),
    ],
)
def test_decision_table(weight: int, facts: RequestFacts, expected: Decision) -> None:
    assert canary.decide(state_at(weight), facts) == expected


@pytest.mark.parametrize("facts", [RequestFacts(draw=0.0), RequestFacts(user_key="alice")])
def test_without_candidate_everything_goes_to_stable(facts: RequestFacts) -> None:
    assert canary.decide(state_at(100, candidate=None), facts) == Decision("v1", reason="stable")


def test_shadow_percent_never_mirrors_in_canary_mode() -> None:
    state = RoutingState(NAME, "v1", "v2", canary_weight=50, shadow_percent=100)
    assert canary.decide(state, RequestFacts(draw=0.9, mirror_draw=0.0)).mirror_to is None


def test_promote_swaps_roles_and_resets_split() -> None:
    before = RoutingState(NAME, "v1", "v2", canary_weight=50, shadow_percent=10)
    after = canary.promote(before)
    assert after == RoutingState(NAME, "v2", "v1", previous_stable="v1")
    assert canary.decide(after, RequestFacts(user_key="alice", draw=0.0)).version == "v2"


def test_rollback_sends_every_answer_to_stable() -> None:
    before = RoutingState(NAME, "v1", "v2", canary_weight=50, shadow_percent=10)
    after = canary.rollback(before)
    assert after == RoutingState(NAME, "v1", "v2", shadow_percent=10)
    assert canary.decide(after, RequestFacts(draw=0.0)).version == "v1"
