"""The admin API under attack and contention: credentials, racing writers, hostile values."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from router.app import create_app
from router.config import RouterConfig
from tests.reliability.conftest import Gateway, Row
from tests.router.helpers import ADMIN_TOKEN, admin, error_of
from tests.servers import InProcessServer, ServerProcess

PLAN = {"strategy": "canary", "steps": [10, 100], "interval_s": 60}
CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/admin/state", None),
    ("PATCH", "/admin/state", {"strategy": "canary", "canary_weight": 50}),
    ("POST", "/admin/promote", None),
    ("POST", "/admin/rollback", None),
    ("POST", "/admin/rollout", PLAN),
    ("GET", "/admin/events", None),
]
BAD_CREDENTIALS: dict[str, dict[str, Any]] = {
    "no token": {},
    "wrong token": {"headers": {"Authorization": "Bearer not-the-token"}},
    "token in the query string": {"params": {"token": ADMIN_TOKEN}},
    "access_token in the query string": {"params": {"access_token": ADMIN_TOKEN}},
}


def protected(gateway: Gateway) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """What a refused call must leave as it was: the state, its ETag, the audit log."""
    resp = admin("GET", gateway.url, "/admin/state")
    assert resp.status_code == 200
    body = resp.json()
    body.pop("store")  # reachability, not state
    return body, resp.headers["ETag"], gateway.events()


@contextmanager
def router_without_token(upstream: str, tmp_path: Path) -> Iterator[InProcessServer]:
    """A router with no ROUTER_ADMIN_TOKEN, served on a real socket from this process."""
    config = RouterConfig(upstreams={"v1": upstream}, stable="v1", admin_token=None,
                          state_url=f"sqlite:///{tmp_path / 'no-token.db'}")
    app = create_app(config)
    ctx = app.extensions["router"]
    try:
        with InProcessServer(app) as server:
            yield server
    finally:
        ctx.close()


@pytest.mark.scenario(7, "admin credentials, racing If-Match writers, audit log")
def test_admin_refuses_strangers_lets_one_racer_win_and_logs_every_change(
    gateway: Gateway, v1_service: ServerProcess, tmp_path: Path, scenario: Row
) -> None:
    """No, a wrong, or a query-string token: 401 and nothing changes; no token configured: 503;
    of 10 concurrent PATCHes with the same If-Match exactly one wins, the rest get 412; every
    accepted change is in GET /admin/events."""
    sent = 0
    refused: list[tuple[str, str, int]] = []
    before = protected(gateway)
    for method, path, body in CALLS:
        for name, credentials in BAD_CREDENTIALS.items():
            resp = admin(method, gateway.url, path, token=None, json=body, **credentials)
            sent += 1
            if resp.status_code != 401 or error_of(resp)["code"] != "unauthorized":
                refused.append((name, f"{method} {path}", resp.status_code))
    unchanged = protected(gateway) == before

    with router_without_token(v1_service.url, tmp_path) as no_token:
        disabled = []
        for method, path, body in CALLS:
            for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
                resp = requests.request(method, no_token.url + path, json=body, headers=headers,
                                        timeout=10)
                sent += 1
                disabled.append((f"{method} {path}", resp.status_code, error_of(resp)["code"]))

    first = gateway.change(strategy="canary", reason="open the race")
    etag = f'"{first["config_version"]}"'
    go = threading.Barrier(10)
    results: dict[int, requests.Response] = {}

    def race(weight: int) -> None:
        go.wait()
        results[weight] = admin("PATCH", gateway.url, "/admin/state", headers={"If-Match": etag},
                                json={"canary_weight": weight, "reason": f"racer {weight}"})

    racers = [threading.Thread(target=race, args=(w,)) for w in range(11, 21)]
    for thread in racers:
        thread.start()
    for thread in racers:
        thread.join()
    sent += len(results) + 1
    statuses = sorted(r.status_code for r in results.values())
    winners = [w for w, r in results.items() if r.status_code == 200]
    promoted = gateway.call("POST", "/admin/promote", json={"reason": "after the race"})
    rolled_back = gateway.call("POST", "/admin/rollback", json={"reason": "and back"})
    sent += 2
    accepted = [first] + [r.json() for r in results.values() if r.status_code == 200] \
        + [promoted, rolled_back]
    logged = [e for e in gateway.events() if e["id"] > before[2][-1]["id"]]

    scenario.record(sent, len(refused) + len([s for s in statuses if s not in (200, 412)]),
                    f"{len(CALLS) * len(BAD_CREDENTIALS)} strangers refused; "
                    f"race: {statuses.count(200)} x 200, {statuses.count(412)} x 412; "
                    f"{len(logged)}/{len(accepted)} changes logged")
    assert not refused, f"not refused with 401: {refused}"
    assert unchanged, "a refused call changed the state or the audit log"
    assert all(status == 503 and code == "admin_disabled" for _, status, code in disabled), disabled
    assert statuses == [200] + [412] * 9
    [winner] = winners
    for resp in results.values():
        if resp.status_code == 412:
            assert error_of(resp)["code"] == "precondition_failed"
    assert [e["config_version"] for e in logged] == [s["config_version"] for s in accepted]
    assert [e["action"] for e in logged] == ["update", "update", "promote", "rollback"]
    assert logged[1]["new"] == {"canary_weight": winner}
    assert logged[1]["reason"] == f"racer {winner}"


INVALID_CHANGES: dict[str, tuple[str, bytes]] = {
    "weight above 100": ("/admin/state", b'{"canary_weight": 101}'),
    "weight below 0": ("/admin/state", b'{"canary_weight": -1}'),
    "weight not whole": ("/admin/state", b'{"canary_weight": 12.5}'),
    "weight as text": ("/admin/state", b'{"canary_weight": "50"}'),
    "weight as boolean": ("/admin/state", b'{"canary_weight": true}'),
    "shadow percent above 100": ("/admin/state", b'{"shadow_percent": 1000}'),
    "NaN": ("/admin/state", b'{"canary_weight": NaN}'),
    "Infinity": ("/admin/state", b'{"shadow_percent": Infinity}'),
    "1e400": ("/admin/state", b'{"canary_weight": 1e400}'),
    "unknown strategy": ("/admin/state", b'{"strategy": "rainbow"}'),
    "strategy not a name": ("/admin/state", b'{"strategy": ["canary"]}'),
    "unknown field": ("/admin/state", b'{"canary_weight": 5, "colour": "blue"}'),
    "upstreams": ("/admin/state", b'{"upstreams": {"v1": "http://169.254.169.254"}}'),
    "an upstream URL field": ("/admin/state", b'{"v1_url": "http://attacker.example"}'),
    "an upstream URL as stable": ("/admin/state", b'{"stable": "http://169.254.169.254/latest"}'),
    "unknown version": ("/admin/state", b'{"candidate": "v9"}'),
    "plan weights out of range": ("/admin/rollout", b'{"strategy": "canary", "steps": [0, 150]}'),
    "plan interval NaN": ("/admin/rollout", b'{"strategy": "canary", "interval_s": NaN}'),
    "plan interval 1e400": ("/admin/rollout", b'{"strategy": "canary", "interval_s": 1e400}'),
    "plan unknown strategy": ("/admin/rollout", b'{"strategy": "yolo"}'),
    "plan unknown field": ("/admin/rollout", b'{"strategy": "canary", "webhook": "http://x"}'),
}


@pytest.mark.scenario(8, "admin validation: ranges, NaN, unknown names and fields, URLs")
def test_invalid_changes_are_refused_and_change_nothing(gateway: Gateway, scenario: Row) -> None:
    """Each invalid change is a JSON 4xx, and the state (config_version too) and the audit log
    are exactly as before."""
    gateway.change(strategy="canary", canary_weight=10, reason="a state worth protecting")
    before = protected(gateway)
    answers = {}
    for name, (path, raw) in INVALID_CHANGES.items():
        method = "PATCH" if path == "/admin/state" else "POST"
        resp = admin(method, gateway.url, path, data=raw,
                     headers={"Content-Type": "application/json"})
        answers[name] = (resp.status_code, error_of(resp)["code"])
    after = protected(gateway)

    accepted = {name: answer for name, answer in answers.items() if not 400 <= answer[0] < 500}
    statuses = ", ".join(sorted({str(status) for status, _ in answers.values()}))
    scenario.record(len(answers), len(accepted) + (after != before),
                    f"{len(answers) - len(accepted)} refused with 4xx ({statuses}); "
                    f"state {'unchanged' if after == before else 'CHANGED'}")
    assert not accepted, f"not refused: {accepted}"
    assert after[0]["config_version"] == before[0]["config_version"]
    assert after == before
