"""Every strategy through a real router: who answers, how the split falls, promote and rollback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from scipy.stats import binom

from tests.router.conftest import StartRouter, seed_state
from tests.router.helpers import (
    Answer,
    FakeUpstream,
    assert_answered_by,
    change,
    metric,
    post_many,
    predict,
    put_state,
    state,
    transition,
    versions,
)
from tests.servers import ServerProcess, wait_until

CONFIDENCE = 0.999


def binomial_interval(n: int, percent: int) -> tuple[int, int]:
    """Central 99.9% interval of the candidate's count when each request goes there w.p. percent."""
    tail = (1 - CONFIDENCE) / 2
    return int(binom.ppf(tail, n, percent / 100)), int(binom.ppf(1 - tail, n, percent / 100))


def users(n: int) -> list[dict[str, str]]:
    return [{"X-User-ID": f"user-{i}"} for i in range(n)]


# -- release-in-place --------------------------------------------------------------------------


def test_release_in_place_sends_everything_to_stable(one_worker_router: ServerProcess) -> None:
    r = one_worker_router
    put_state(r.url, "release-in-place")
    mirrored = metric(r.url, "router_shadow_requests_total", version="v2")
    assert_answered_by(post_many(r.url, users(100) + [{}] * 100), "v1")

    # A canary weight means nothing to this strategy: still nobody reaches the candidate.
    change(r.url, canary_weight=50, shadow_percent=100)
    assert_answered_by(post_many(r.url, users(100) + [{}] * 100), "v1")
    assert metric(r.url, "router_shadow_requests_total", version="v2") == mirrored


# -- blue-green --------------------------------------------------------------------------------


def test_blue_green_live_colour_preview_promote_and_rollback(
    one_worker_router: ServerProcess,
) -> None:
    r = one_worker_router
    put_state(r.url, "blue-green")
    assert_answered_by(post_many(r.url, users(60) + [{}] * 60), "v1")
    assert_answered_by(post_many(r.url, [{"X-Route-To": "v2"}] * 20), "v2")  # preview idle colour

    before = state(r.url)
    promoted = transition(r.url, "promote", reason="v2 looked good in preview")
    assert (promoted["stable"], promoted["candidate"]) == ("v2", "v1")
    assert promoted["config_version"] == before["config_version"] + 1
    assert_answered_by(post_many(r.url, users(60) + [{}] * 60), "v2")
    assert_answered_by(post_many(r.url, [{"X-Route-To": "v1"}] * 20), "v1")  # old colour, idle

    rolled_back = transition(r.url, "rollback", reason="v2 misbehaves")
    assert (rolled_back["stable"], rolled_back["candidate"]) == ("v1", "v2")
    assert rolled_back["config_version"] == before["config_version"] + 2
    assert_answered_by(post_many(r.url, users(60) + [{}] * 60), "v1")


@pytest.mark.slow
def test_blue_green_switch_under_load_is_atomic(one_worker_router: ServerProcess) -> None:
    """Requests in flight during a promote all succeed; every request sent after it gets v2."""
    r = one_worker_router
    put_state(r.url, "blue-green")
    answers: list[Answer] = []
    stop = threading.Event()
    switched_at: list[float] = []

    def load() -> None:
        while not stop.is_set():
            answers.extend(post_many(r.url, users(40), threads=2))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: len(answers) >= 80, timeout=30)
        assert transition(r.url, "promote")["stable"] == "v2"
        switched_at.append(time.monotonic())
        count = len(answers)
        wait_until(lambda: len(answers) >= count + 160, timeout=30)
    finally:
        stop.set()
        worker.join()

    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:3]
    assert {a.json()["model_version"] for a in answers} == {"v1", "v2"}
    after = [a for a in answers if a.sent_at > switched_at[0]]
    assert len(after) >= 100
    assert_answered_by(after, "v2")


# -- canary ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_canary_split_over_10000_requests_is_inside_the_binomial_interval(
    start_router: StartRouter, sqlite_url: Callable[[], str]
) -> None:
    """10,000 anonymous requests through a real router: the candidate's share matches the weight.

    Fast fake model services keep 10,000 HTTP requests quick; the split is the router's alone.
    """
    with FakeUpstream("v1") as v1, FakeUpstream("v2") as v2:
        upstreams = {"v1": v1.url, "v2": v2.url}
        url = seed_state(sqlite_url(), upstreams, strategy="canary", canary_weight=10)
        r = start_router(upstreams, state_url=url)  # two workers, both at weight 10 from the start
        answers = post_many(r.url, [{}] * 10_000, threads=6)

    assert all(a.status == 200 for a in answers)
    assert all(a.json()["model_version"] == a.version for a in answers)
    counts = versions(answers)
    assert set(counts) == {"v1", "v2"}
    low, high = binomial_interval(10_000, 10)
    assert low <= counts["v2"] <= high, f"{counts['v2']} of 10000 outside [{low}, {high}]"


@pytest.mark.slow
def test_canary_users_stay_on_their_version_while_the_weight_grows(
    one_worker_router: ServerProcess,
) -> None:
    r = one_worker_router
    put_state(r.url, "canary")
    population = users(200)

    def cohort(weight: int) -> set[str]:
        change(r.url, canary_weight=weight)
        first, again = post_many(r.url, population), post_many(r.url, population)
        for a, b in zip(first, again, strict=True):
            assert a.status == b.status == 200
            assert a.version == b.version == a.json()["model_version"]  # sticky at a fixed weight
        return {h["X-User-ID"] for h, a in zip(population, first, strict=True) if a.version == "v2"}

    at_10, at_25, at_50 = cohort(10), cohort(25), cohort(50)
    assert at_10, "no user reached the candidate at 10%"
    assert at_10 <= at_25 <= at_50, "a user on the candidate was moved back to stable"
    assert len(at_10) < len(at_25) < len(at_50)


def test_canary_rollback_and_promote(one_worker_router: ServerProcess) -> None:
    r = one_worker_router
    put_state(r.url, "canary", canary_weight=30)
    assert_answered_by(post_many(r.url, [{"X-Route-To": "v2"}] * 10), "v2")
    assert set(versions(post_many(r.url, users(200)))) == {"v1", "v2"}

    rolled_back = transition(r.url, "rollback", reason="errors on v2")
    assert (rolled_back["stable"], rolled_back["canary_weight"]) == ("v1", 0)
    assert_answered_by(post_many(r.url, users(200)), "v1")

    change(r.url, canary_weight=30)
    promoted = transition(r.url, "promote", reason="v2 is healthy")
    assert (promoted["stable"], promoted["candidate"], promoted["canary_weight"]) == ("v2", "v1", 0)
    assert_answered_by(post_many(r.url, users(200)), "v2")


# -- shadow ------------------------------------------------------------------------------------


def direct_answer(service_url: str) -> bytes:
    """What the model service itself answers to the test request."""
    answer = predict(service_url)
    assert answer.status == 200
    return answer.body


def test_shadow_client_sees_only_stable_while_candidate_is_compared(
    one_worker_router: ServerProcess, models: dict[str, str]
) -> None:
    r = one_worker_router
    put_state(r.url, "shadow", shadow_percent=100)
    expected = direct_answer(models["v1"])
    assert direct_answer(models["v2"]) != expected  # the two versions are told apart by body
    mirrored_before = metric(r.url, "router_shadow_requests_total", version="v2", outcome="ok")
    compared_before = metric(r.url, "router_shadow_comparisons_total")

    answers = post_many(r.url, users(40) + [{}] * 40)
    assert_answered_by(answers, "v1")
    assert all(a.body == expected for a in answers), "the client got something other than v1's body"

    def all_compared() -> bool:
        mirrored = metric(r.url, "router_shadow_requests_total", version="v2", outcome="ok")
        return (mirrored - mirrored_before >= 80
                and metric(r.url, "router_shadow_comparisons_total") - compared_before >= 80)

    wait_until(all_compared, timeout=10)
    assert metric(r.url, "router_shadow_comparisons_total") - compared_before == 80


BAD_CANDIDATES = {  # a misbehaving version of one_worker_router: what a copy sent there records
    "failing": "error", "down": "refused", "dropping": "reset",
    "slow": "timeout",  # last: its copies keep the shadow workers busy for a while
}


@pytest.mark.parametrize("candidate", BAD_CANDIDATES)
def test_misbehaving_shadow_candidate_never_changes_what_the_client_sees(
    one_worker_router: ServerProcess, v1_service: ServerProcess, candidate: str
) -> None:
    r = one_worker_router
    put_state(r.url, "shadow", candidate=candidate, shadow_percent=100)
    outcomes = {"version": candidate, "outcome": BAD_CANDIDATES[candidate]}
    before = metric(r.url, "router_shadow_requests_total", **outcomes)
    expected = direct_answer(v1_service.url)

    # The client gives up after 5 s; the slow candidate would take 60: waiting for it would show.
    answers = post_many(r.url, [{}] * 16, timeout=5)
    assert_answered_by(answers, "v1")
    assert all(a.body == expected for a in answers)
    wait_until(lambda: metric(r.url, "router_shadow_requests_total", **outcomes) > before,
               timeout=10)
    assert metric(r.url, "router_shadow_requests_total", version=candidate, outcome="ok") == 0
    assert metric(r.url, "router_shadow_comparisons_total", candidate=candidate) == 0


def test_full_shadow_queue_drops_copies_and_counts_them(
    start_router: StartRouter, v1_service: ServerProcess,
    fake_upstream: Callable[..., FakeUpstream], sqlite_url: Callable[[], str],
) -> None:
    slow = fake_upstream("v2", delay_s=60)
    upstreams = {"v1": v1_service.url, "v2": slow.url}
    url = seed_state(sqlite_url(), upstreams, strategy="shadow", shadow_percent=100)
    r = start_router(upstreams, state_url=url, WEB_CONCURRENCY="1", ROUTER_TIMEOUT_S="20",
                     ROUTER_SHADOW_WORKERS="1", ROUTER_SHADOW_QUEUE="1")
    expected = direct_answer(v1_service.url)

    answers = post_many(r.url, [{}] * 20, threads=2, timeout=5)
    assert_answered_by(answers, "v1")
    assert all(a.body == expected for a in answers)
    # One copy is with the (stuck) shadow worker, at most one waits in the queue: the rest drop.
    assert metric(r.url, "router_shadow_requests_total", version="v2", outcome="dropped") >= 18
    assert len(slow.received) <= 2
