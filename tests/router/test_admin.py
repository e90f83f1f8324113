"""The admin API: refusals change nothing, validation, If-Match, the audit log, promote/rollback."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from strategies import names
from tests.router.conftest import in_process_router
from tests.router.helpers import (
    ADMIN_TOKEN,
    AUTH,
    admin,
    change,
    error_of,
    events,
    predict,
    put_state,
    state,
)
from tests.servers import ServerProcess

CALLS = [
    ("GET", "/admin/state", None),
    ("PATCH", "/admin/state", {"strategy": "canary", "canary_weight": 50}),
    ("POST", "/admin/promote", None),
    ("POST", "/admin/rollback", None),
    ("GET", "/admin/events", None),
]
CALL_IDS = [f"{method} {path}" for method, path, _ in CALLS]


@pytest.fixture(scope="module")
def admin_router(shared_router: ServerProcess) -> ServerProcess:
    """The shared two-worker router, in a state worth protecting."""
    change(shared_router.url, strategy="canary", canary_weight=10, reason="worth protecting")
    return shared_router


def snapshot(url: str) -> tuple[dict[str, Any], str, int]:
    """Everything a refused call must leave as it was: the state, its ETag, the audit log."""
    resp = admin("GET", url, "/admin/state")
    assert resp.status_code == 200
    return resp.json(), resp.headers["ETag"], len(events(url))


# -- refusals ----------------------------------------------------------------------------------

CREDENTIALS = {
    "missing": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "token prefix": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    "token with suffix": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    "empty bearer": {"Authorization": "Bearer "},
    "no scheme": {"Authorization": ADMIN_TOKEN},
    "basic auth": {
        "Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_TOKEN}".encode()).decode()
    },
}


@pytest.mark.parametrize("method,path,body", CALLS, ids=CALL_IDS)
@pytest.mark.parametrize("credentials", CREDENTIALS.values(), ids=CREDENTIALS.keys())
def test_missing_or_wrong_token_is_401_and_changes_nothing(
    admin_router: ServerProcess, method: str, path: str, body: Any, credentials: dict[str, str]
) -> None:
    before = snapshot(admin_router.url)
    resp = requests.request(method, admin_router.url + path, json=body, headers=credentials,
                            timeout=10)
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(admin_router.url) == before


@pytest.mark.parametrize("method,path,body", CALLS, ids=CALL_IDS)
@pytest.mark.parametrize("param", ["token", "access_token"])
def test_token_in_the_query_string_is_refused(
    admin_router: ServerProcess, method: str, path: str, body: Any, param: str
) -> None:
    before = snapshot(admin_router.url)
    resp = requests.request(method, admin_router.url + path, params={param: ADMIN_TOKEN},
                            json=body, timeout=10)
    assert resp.status_code == 401
    error_of(resp)
    assert snapshot(admin_router.url) == before


@pytest.mark.parametrize("method,path,body", CALLS, ids=CALL_IDS)
@pytest.mark.parametrize("credentials", [{}, AUTH], ids=["no token", "a token"])
def test_admin_api_without_a_configured_token_is_503_and_changes_nothing(
    locked_down_router: ServerProcess, method: str, path: str, body: Any,
    credentials: dict[str, str],
) -> None:
    ready = requests.get(locked_down_router.url + "/ready", timeout=10).json()
    resp = requests.request(method, locked_down_router.url + path, json=body, headers=credentials,
                            timeout=10)
    assert resp.status_code == 503
    error = error_of(resp)
    assert error["code"] == "admin_disabled"
    assert "ROUTER_ADMIN_TOKEN" in error["message"]
    assert requests.get(locked_down_router.url + "/ready", timeout=10).json() == ready
    assert predict(locked_down_router.url).version == "v1"


# -- validation (in process: nothing here needs a server) --------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    upstreams = {"v1": "http://127.0.0.1:9", "v2": "http://127.0.0.1:9"}  # never contacted here
    with in_process_router(upstreams, f"sqlite:///{tmp_path / 'state.db'}") as router_app:
        yield router_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def in_process_snapshot(client: FlaskClient) -> tuple[dict[str, Any], str | None, int]:
    resp = client.get("/admin/state", headers=AUTH)
    assert resp.status_code == 200
    log = client.get("/admin/events", headers=AUTH).get_json()["events"]
    return resp.get_json(), resp.headers.get("ETag"), len(log)


def bad_values(field: str) -> dict[str, dict[str, Any]]:
    return {f"{field} {value!r}": {field: value} for value in (-1, 101, 10.5, "10", True, None)}


INVALID_PATCHES: dict[str, dict[str, Any]] = {
    **bad_values("canary_weight"),
    **bad_values("shadow_percent"),
    "unknown strategy": {"strategy": "rainbow"},
    "strategy not a string": {"strategy": ["canary"]},
    "unknown field": {"canary_wieght": 10},
    "unknown field beside a valid one": {"canary_weight": 10, "colour": "blue"},
    "upstreams": {"upstreams": {"v1": "http://attacker.example:80"}},
    "an upstream URL": {"v2_url": "http://attacker.example:80"},
    "config_version": {"config_version": 99},
    "stable == candidate": {"candidate": "v1"},
    "stable onto the candidate": {"stable": "v2"},
    "unknown version": {"stable": "v9"},
    "version not a string": {"candidate": 2},
    "reason not a string": {"canary_weight": 10, "reason": 42},
    "nothing to change": {},
}


@pytest.mark.parametrize("body", INVALID_PATCHES.values(), ids=INVALID_PATCHES.keys())
def test_invalid_patch_is_refused_with_a_json_error_and_changes_nothing(
    client: FlaskClient, body: dict[str, Any]
) -> None:
    before = in_process_snapshot(client)
    resp = client.patch("/admin/state", json=body, headers=AUTH)
    assert 400 <= resp.status_code < 500
    assert resp.content_type.startswith("application/json")
    error = resp.get_json()["error"]
    assert error["code"] and error["message"]
    assert in_process_snapshot(client) == before


def test_unknown_strategy_message_lists_the_valid_ones(client: FlaskClient) -> None:
    resp = client.patch("/admin/state", json={"strategy": "rainbow"}, headers=AUTH)
    assert resp.status_code == 422
    message = resp.get_json()["error"]["message"]
    assert "rainbow" in message
    assert all(name in message for name in names())


def test_upstream_urls_cannot_be_set(client: FlaskClient) -> None:
    resp = client.patch("/admin/state", json={"upstreams": {"v2": "http://attacker.example"}},
                        headers=AUTH)
    assert resp.status_code == 422
    assert "ROUTER_UPSTREAMS" in resp.get_json()["error"]["message"]
    upstreams = client.get("/admin/state", headers=AUTH).get_json()["upstreams"]
    assert upstreams["v2"] == "http://127.0.0.1:9"


@pytest.mark.parametrize("data,content_type,status", [
    (b"{not json", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'"canary"', "application/json", 400),
    (b'{"canary_weight": 10}', "text/plain", 415),
], ids=["not json", "an array", "a string", "not declared as json"])
def test_malformed_patch_body_is_refused(client: FlaskClient, data: bytes, content_type: str,
                                         status: int) -> None:
    before = in_process_snapshot(client)
    resp = client.patch("/admin/state", data=data, content_type=content_type, headers=AUTH)
    assert resp.status_code == status
    assert resp.get_json()["error"]["code"]
    assert in_process_snapshot(client) == before


def test_promote_without_a_candidate_is_a_409(client: FlaskClient) -> None:
    assert client.patch("/admin/state", json={"candidate": None}, headers=AUTH).status_code == 200
    before = in_process_snapshot(client)
    resp = client.post("/admin/promote", headers=AUTH)
    assert resp.status_code == 409
    assert resp.get_json()["error"]["message"]
    assert in_process_snapshot(client) == before


def test_unknown_field_in_promote_is_refused(client: FlaskClient) -> None:
    before = in_process_snapshot(client)
    resp = client.post("/admin/promote", json={"to": "v2"}, headers=AUTH)
    assert resp.status_code == 422
    assert in_process_snapshot(client) == before


# -- If-Match ----------------------------------------------------------------------------------


def test_state_carries_its_config_version_as_etag(client: FlaskClient) -> None:
    resp = client.get("/admin/state", headers=AUTH)
    assert resp.headers["ETag"] == f'"{resp.get_json()["config_version"]}"'
    patched = client.patch("/admin/state", json={"canary_weight": 5}, headers=AUTH)
    assert patched.headers["ETag"] == f'"{patched.get_json()["config_version"]}"'


@pytest.mark.parametrize("form", ['"{}"', "{}", 'W/"{}"'], ids=["quoted", "bare", "weak"])
def test_if_match_current_is_accepted_and_stale_is_412(client: FlaskClient, form: str) -> None:
    version = client.get("/admin/state", headers=AUTH).get_json()["config_version"]
    accepted = client.patch("/admin/state", json={"canary_weight": 10},
                            headers={**AUTH, "If-Match": form.format(version)})
    assert accepted.status_code == 200
    assert accepted.get_json()["config_version"] == version + 1

    before = in_process_snapshot(client)
    stale = client.patch("/admin/state", json={"canary_weight": 20},
                         headers={**AUTH, "If-Match": form.format(version)})
    assert stale.status_code == 412
    assert stale.get_json()["error"]["code"] == "precondition_failed"
    assert stale.headers["ETag"] == f'"{version + 1}"'
    assert in_process_snapshot(client) == before

    for action in ("promote", "rollback"):
        resp = client.post(f"/admin/{action}", headers={**AUTH, "If-Match": form.format(version)})
        assert resp.status_code == 412
        assert in_process_snapshot(client) == before


def test_unusable_if_match_is_a_400(client: FlaskClient) -> None:
    before = in_process_snapshot(client)
    resp = client.patch("/admin/state", json={"canary_weight": 10},
                        headers={**AUTH, "If-Match": "yesterday"})
    assert resp.status_code == 400
    assert in_process_snapshot(client) == before


def test_concurrent_patches_with_the_same_if_match_let_exactly_one_win(
    admin_router: ServerProcess
) -> None:
    r = admin_router  # two workers: the race crosses processes
    resp = admin("GET", r.url, "/admin/state")
    etag, version, logged = resp.headers["ETag"], resp.json()["config_version"], len(events(r.url))
    go = threading.Barrier(10)
    results: dict[int, requests.Response] = {}

    def attempt(weight: int) -> None:
        go.wait()
        results[weight] = admin("PATCH", r.url, "/admin/state", json={"canary_weight": weight},
                                headers={"If-Match": etag})

    threads = [threading.Thread(target=attempt, args=(w,)) for w in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    statuses = sorted(resp.status_code for resp in results.values())
    assert statuses == [200] + [412] * 9
    [winner] = [w for w, resp in results.items() if resp.status_code == 200]
    after = state(r.url)
    assert (after["config_version"], after["canary_weight"]) == (version + 1, winner)
    assert len(events(r.url)) == logged + 1


# -- the audit log -----------------------------------------------------------------------------


def test_every_accepted_change_is_in_the_audit_log(admin_router: ServerProcess) -> None:
    r = admin_router
    put_state(r.url, "release-in-place")
    steps: list[tuple[str, Callable[[], requests.Response], str | None, dict[str, Any]]] = [
        ("alice", lambda: admin("PATCH", r.url, "/admin/state", headers={"X-Actor": "alice"},
                                json={"strategy": "canary", "canary_weight": 10,
                                      "reason": "start"}),
         "start", {"strategy": "canary", "canary_weight": 10}),
        ("admin-api", lambda: admin("PATCH", r.url, "/admin/state", json={"canary_weight": 25}),
         None, {"canary_weight": 25}),
        ("bob", lambda: admin("POST", r.url, "/admin/promote", headers={"X-Actor": "bob"},
                              json={"reason": "v2 is healthy"}),
         "v2 is healthy", {"stable": "v2", "candidate": "v1", "canary_weight": 0}),
        ("carol", lambda: admin("POST", r.url, "/admin/rollback", headers={"X-Actor": "carol"},
                                json={"reason": "second thoughts"}),
         "second thoughts", {}),
    ]
    previous = state(r.url)
    for actor, call, reason, expected_new in steps:
        logged = events(r.url)
        resp = call()
        assert resp.status_code == 200, resp.text
        current = resp.json()
        assert current["config_version"] == previous["config_version"] + 1
        log = events(r.url)
        assert len(log) == len(logged) + 1
        event = log[-1]
        assert event["actor"] == actor
        assert event["reason"] == reason
        assert event["config_version"] == current["config_version"]
        assert event["time"]
        for key, value in expected_new.items():
            assert event["new"][key] == value
            assert event["old"][key] == previous[key]
        for key in event["new"]:
            assert event["old"][key] == previous.get(key)
            assert event["new"][key] == current.get(key)
        previous = current
