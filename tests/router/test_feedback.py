"""POST /feedback with real model services: labels joined to the version that answered.

A router with ROUTER_FEEDBACK_TOKEN remembers each answered request's predictions (and, under
shadow, the candidate's) in its state store; a label sent later is scored once against them, and
the counts show in /admin/analysis and /metrics. One worker, so that a request's predictions are
written by the process the feedback reaches (with several, another worker's answers are in the
store within its flush interval, a fraction of a second).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from router.state import open_store
from tests.router.conftest import StartRouter
from tests.router.helpers import admin, error_of, metric, predict, put_state
from tests.servers import settled, wait_until

pytestmark = pytest.mark.slow
TOKEN = "feedback-secret"
FEEDBACK_AUTH = {"Authorization": f"Bearer {TOKEN}"}
DATA = load_breast_cancer()
NAMES = np.asarray(DATA.target_names)[DATA.target].tolist()  # the classes the models predict
CLASSES = sorted(DATA.target_names.tolist())  # the probability columns' order (scikit-learn's)
ROWS = list(range(0, 60, 3))  # 20 rows of the data set


def ask(url: str, rows: list[int] = ROWS) -> tuple[str, dict[str, Any]]:
    """POST /predict for ``rows``: (the request id the router answered with, the answer)."""
    body = json.dumps({"instances": [DATA.data[i].tolist() for i in rows]}).encode()
    answer = predict(url, body=body)
    assert answer.status == 200, answer.body
    return answer.headers["x-request-id"], answer.json()


def send(url: str, doc: Any, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(doc, bytes):
        return requests.post(url + "/feedback", data=doc, timeout=10,
                             headers={**headers, "Content-Type": "application/json"}, **kwargs)
    return requests.post(url + "/feedback", json=doc, headers=headers, timeout=10, **kwargs)


def quality(url: str) -> dict[str, Any]:
    resp = admin("GET", url, "/admin/analysis")
    assert resp.status_code == 200, resp.text
    return resp.json()["quality"]  # type: ignore[no-any-return]


@pytest.fixture
def feedback_router(start_router: StartRouter, models: dict[str, str],
                    sqlite_url: Callable[[], str]) -> Callable[..., Any]:
    def start(state_url: str | None = None, **env: str) -> Any:
        return start_router(models, state_url=state_url or sqlite_url(), WEB_CONCURRENCY="1",
                            ROUTER_FEEDBACK_TOKEN=TOKEN, **env)
    return start


def test_labels_score_the_version_that_answered_once(feedback_router: Callable[..., Any]) -> None:
    server = feedback_router()
    put_state(server.url, "release-in-place")
    request_id, answer = ask(server.url)
    labels = [NAMES[i] for i in ROWS]
    labels[0] = "benign" if answer["predictions"][0] == "malignant" else "malignant"  # one wrong
    correct = sum(p == t for p, t in zip(answer["predictions"], labels, strict=True))
    log_loss = -sum(math.log(min(max(probs[CLASSES.index(t)], 1e-15),
                                 1 - 1e-15))
                    for probs, t in zip(answer["probabilities"], labels, strict=True))

    first = send(server.url, {"request_id": request_id, "labels": labels})
    again = send(server.url, {"request_id": request_id, "labels": labels})
    other = send(server.url, {"request_id": request_id, "labels": list(reversed(labels))})

    assert first.status_code == 200, first.text
    assert first.json() | {"versions": ["v1"]} == {
        "request_id": request_id, "recorded": True, "duplicate": False, "rows": len(ROWS),
        "versions": ["v1"], "paired": False}
    assert again.status_code == 200 and again.json()["duplicate"] and not again.json()["recorded"]
    assert other.status_code == 409 and error_of(other)["code"] == "feedback_conflict"
    v1 = quality(server.url)["versions"]["v1"]
    assert (v1["rows"], v1["correct"]) == (len(ROWS), correct)
    assert v1["accuracy"] == pytest.approx(correct / len(ROWS), abs=1e-6)
    assert v1["accuracy_ci95"][0] < v1["accuracy"] < v1["accuracy_ci95"][1]
    assert v1["log_loss"] == pytest.approx(log_loss / len(ROWS), abs=1e-5)
    counted = settled(lambda: (metric(server.url, "router_feedback_rows_total", version="v1"),
                               metric(server.url, "router_feedback_correct_total", version="v1"),
                               metric(server.url, "router_feedback_log_loss_total", version="v1")))
    assert counted[:2] == (len(ROWS), correct)
    assert counted[2] == pytest.approx(log_loss, rel=1e-6)
    assert metric(server.url, "router_feedback_requests_total", outcome="duplicate") == 1


def test_bad_feedback_is_a_json_4xx_and_records_nothing(
        feedback_router: Callable[..., Any]) -> None:
    server = feedback_router()
    put_state(server.url, "release-in-place")
    request_id, answer = ask(server.url, ROWS[:2])
    good = [NAMES[i] for i in ROWS[:2]]
    cases = [
        ({"request_id": request_id, "labels": good[:1]}, TOKEN, 422, "wrong_row_count"),
        ({"request_id": request_id, "labels": [good[0], "maybe"]}, TOKEN, 422, "invalid_label"),
        ({"request_id": request_id, "values": [1.0, 2.0]}, TOKEN, 422, "invalid_feedback"),
        ({"request_id": request_id}, TOKEN, 422, "invalid_feedback"),
        ({"request_id": "no-such-request", "labels": good}, TOKEN, 404, "unknown_request"),
        ({"request_id": "bad id!", "labels": good}, TOKEN, 422, "invalid_request_id"),
        (b'{"request_id": ', TOKEN, 400, None),
        (b'{"request_id": "x", "values": [NaN]}', TOKEN, 400, None),
        ({"request_id": request_id, "labels": good}, None, 401, "unauthorized"),
        ({"request_id": request_id, "labels": good}, "wrong", 401, "unauthorized"),
    ]
    for doc, token, status, code in cases:
        resp = send(server.url, doc, token)
        assert resp.status_code == status, (doc, resp.text)
        assert resp.headers["Content-Type"].startswith("application/json")
        if code:
            assert error_of(resp)["code"] == code, resp.text
    bad_label = send(server.url, {"request_id": request_id, "labels": [good[0], "maybe"]})
    assert "labels[1]" in error_of(bad_label)["message"]
    assert "malignant" in error_of(bad_label)["message"]

    assert quality(server.url)["versions"] == {}
    # the request can still be labelled: nothing of the above stuck to it
    assert send(server.url, {"request_id": request_id, "labels": good}).json()["recorded"]


def test_feedback_is_off_without_its_token(start_router: StartRouter,
                                           models: dict[str, str]) -> None:
    server = start_router(models, WEB_CONCURRENCY="1")
    request_id, _ = ask(server.url)

    resp = send(server.url, {"request_id": request_id, "labels": ["benign"]})

    assert resp.status_code == 404
    assert error_of(resp)["code"] == "feedback_disabled"
    assert "ROUTER_FEEDBACK_TOKEN" in error_of(resp)["message"]
    assert quality(server.url) is None


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_late_feedback_joins_after_a_router_restart(
        backend: str, feedback_router: Callable[..., Any], sqlite_url: Callable[[], str],
        request: pytest.FixtureRequest) -> None:
    state_url = sqlite_url() if backend == "sqlite" else request.getfixturevalue("redis_state_url")
    first = feedback_router(state_url)
    put_state(first.url, "release-in-place")
    request_id, answer = ask(first.url)
    first.stop()  # the predictions were written at the latest on the way out

    second = feedback_router(state_url)
    resp = send(second.url, {"request_id": request_id, "labels": [NAMES[i] for i in ROWS]})

    assert resp.status_code == 200, resp.text
    assert quality(second.url)["versions"]["v1"]["rows"] == len(ROWS)


def test_expired_predictions_take_no_feedback(feedback_router: Callable[..., Any],
                                              sqlite_url: Callable[[], str]) -> None:
    state_url = sqlite_url()
    server = feedback_router(state_url, ROUTER_FEEDBACK_RETENTION_S="1")
    put_state(server.url, "release-in-place")
    request_id, _ = ask(server.url, ROWS[:1])
    store = open_store(state_url)
    try:
        assert wait_until(lambda: store.recall_predictions(request_id) is not None)
        assert wait_until(lambda: store.recall_predictions(request_id) is None)
    finally:
        store.close()

    resp = send(server.url, {"request_id": request_id, "labels": [NAMES[ROWS[0]]]})

    assert resp.status_code == 404
    assert error_of(resp)["code"] == "unknown_request"
    assert "ROUTER_FEEDBACK_RETENTION_S=1 s" in error_of(resp)["message"]
    assert quality(server.url)["versions"] == {}


def test_under_shadow_both_versions_are_scored_on_the_same_rows(
        feedback_router: Callable[..., Any], models: dict[str, str],
        sqlite_url: Callable[[], str]) -> None:
    state_url = sqlite_url()
    server = feedback_router(state_url)
    put_state(server.url, "shadow", shadow_percent=100)
    rows = list(range(0, 400, 2))  # 200 rows: v1 and v2 differ on a few
    request_id, answer = ask(server.url, rows)
    body = {"instances": [DATA.data[i].tolist() for i in rows]}
    candidate = requests.post(models["v2"] + "/predict", json=body, timeout=10).json()
    store = open_store(state_url)
    try:
        assert wait_until(lambda: "shadow" in (store.recall_predictions(request_id) or {}))
    finally:
        store.close()
    labels = [NAMES[i] for i in rows]

    resp = send(server.url, {"request_id": request_id, "labels": labels})

    assert resp.status_code == 200 and resp.json()["paired"], resp.text
    ours = [p == t for p, t in zip(answer["predictions"], labels, strict=True)]
    theirs = [p == t for p, t in zip(candidate["predictions"], labels, strict=True)]
    b = sum(a and not c for a, c in zip(ours, theirs, strict=True))
    c = sum(c and not a for a, c in zip(ours, theirs, strict=True))
    found = quality(server.url)
    assert found["versions"]["v2"]["correct"] == sum(theirs)
    (pair,) = found["paired"]
    assert (pair["stable"], pair["candidate"], pair["rows"]) == ("v1", "v2", len(rows))
    assert pair["stable_accuracy"] == pytest.approx(sum(ours) / len(rows), abs=1e-6)
    assert pair["candidate_accuracy"] == pytest.approx(sum(theirs) / len(rows), abs=1e-6)
    assert (pair["stable_right_candidate_wrong"], pair["stable_wrong_candidate_right"]) == (b, c)
    assert 0 < pair["mcnemar"]["p_value"] <= 1
