"""What fuzzing found answering 500 or outside the documents, pinned as plain requests.

Each case once crashed a handler or answered with a body its document does not allow; each now
gets the documented 4xx in the JSON error shape.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from model_service.app import create_app as create_model_app
from model_service.config import ModelServiceConfig
from router.app import create_app as create_router_app
from router.config import RouterConfig
from router.live_state import Snapshot, with_routing
from tests.servers import ServerProcess

ADMIN_TOKEN = "findings-secret"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _error(status: int, body: Any, expected: int) -> dict[str, str]:
    """The ``error`` object of a JSON error answer, after checking status and shape."""
    assert status == expected, body
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], body
    return dict(body["error"])


def test_values_that_overflow_the_model_are_refused_not_answered_with_nulls(
        v1_service: ServerProcess) -> None:
    # v1 standardises then applies a logistic regression: 1e308 overflows to inf - inf = NaN,
    # which used to come back as 200 with "probabilities": [[null, null]].
    huge = [1.7976931348623157e308, -1.7976931348623157e308] * 15
    resp = requests.post(v1_service.url + "/predict", json={"instances": [[1.0] * 30, huge]},
                         timeout=10)
    error = _error(resp.status_code, resp.json(), 422)
    assert error["code"] == "out_of_range"
    assert "instances[1]" in error["message"]


@pytest.fixture(scope="module")
def reload_client(artifacts: Path) -> Flask:
    return create_model_app(ModelServiceConfig(version="v1", artifacts=str(artifacts),
                                               admin_token="reload-secret"))


@pytest.mark.parametrize("label", ["v" * 300, "v1\n", "v1/../v2", ".hidden", "v1\x00", "-v1"])
def test_reload_refuses_what_is_not_a_version_label(reload_client: Flask, label: str) -> None:
    # A 300-character label used to reach the file system and fail there with a 500.
    resp = reload_client.test_client().post(
        "/admin/reload", json={"version": label},
        headers={"Authorization": "Bearer reload-secret"})
    assert _error(resp.status_code, resp.json, 422)["code"] == "invalid_input"
    assert reload_client.test_client().get("/version").json["version"] == "v1"


@pytest.fixture
def router_app(tmp_path: Path) -> Iterator[Flask]:
    """The router in this process (its upstreams are never called by these requests)."""
    config = RouterConfig(upstreams={"v1": "http://127.0.0.1:9", "v2": "http://127.0.0.1:9"},
                          stable="v1", candidate="v2", admin_token=ADMIN_TOKEN,
                          state_url=f"sqlite:///{tmp_path / f'state-{uuid.uuid4().hex[:8]}.db'}")
    app = create_router_app(config)
    ctx = app.extensions["router"]
    try:
        yield app
    finally:
        ctx.close()


@pytest.mark.parametrize("tag", ["\u00b2", '"\u00b9"', "9" * 5000, "", '""'])
def test_if_match_that_is_not_a_decimal_number_is_a_400(router_app: Flask, tag: str) -> None:
    # "²" passes str.isdigit() but not int(): this used to be a 500.
    client = router_app.test_client()
    resp = client.patch("/admin/state", json={"canary_weight": 0},
                        headers={**AUTH, "If-Match": tag})
    assert _error(resp.status_code, resp.json, 400)["code"] == "bad_request"
    assert client.get("/admin/state", headers=AUTH).json["config_version"] == 1


@pytest.mark.parametrize("query", ["after=9223372036854775808", "after=" + "9" * 5000,
                                   "limit=%C2%B2", "limit=1_0", "limit=+5", "after=-1",
                                   "limit=0", "limit=1001"])
def test_events_query_out_of_range_is_a_400(router_app: Flask, query: str) -> None:
    # An id past 64 bits used to reach SQLite and fail there with a 500.
    resp = router_app.test_client().get(f"/admin/events?{query}", headers=AUTH)
    assert _error(resp.status_code, resp.json, 400)["code"] == "bad_request"


def test_events_query_at_the_edges_is_answered(router_app: Flask) -> None:
    client = router_app.test_client()
    last = client.get("/admin/events?after=9223372036854775807", headers=AUTH)
    assert last.status_code == 200 and last.json == {"events": []}
    assert client.get("/admin/events?limit=1000&after=0", headers=AUTH).status_code == 200


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_rollout_pause_and_resume_refuse_unknown_fields(router_app: Flask, action: str) -> None:
    # Promote and rollback refused them; pause and resume silently dropped them.
    resp = router_app.test_client().post(f"/admin/rollout/{action}",
                                         json={"reason": "gate", "force": True}, headers=AUTH)
    error = _error(resp.status_code, resp.json, 422)
    assert "force" in error["message"]


def test_resume_when_the_candidate_went_away_is_a_409(router_app: Flask) -> None:
    # A rollout awaiting promotion whose candidate was then unset: resume used to crash (500).
    live = router_app.extensions["router"].live
    rollout = {"id": "r1", "status": "awaiting_promotion", "phase": "canary", "step": 0,
               "plan": {"strategy": "canary", "candidate": "v2", "steps": [50, 100]},
               "decisions": [], "updated_at": time.time()}
    live.change(lambda snap: Snapshot(snap.config_version, with_routing(
        snap, strategy="canary", candidate=None, canary_weight=0).routing, rollout),
        actor="test", action="seed", reason=None)
    resp = router_app.test_client().post("/admin/rollout/resume", headers=AUTH)
    assert _error(resp.status_code, resp.json, 409)["code"] == "rollout_state"
    after = router_app.test_client().get("/admin/rollout", headers=AUTH).json
    assert after["rollout"]["status"] == "awaiting_promotion"
