"""``POST /admin/reload``: guarded by a bearer token, atomic under load, followed by every worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from model_service.app import create_app
from model_service.config import ModelServiceConfig
from tests.model_service.conftest import error_of, post, rows_of
from tests.servers import ServerProcess, model_service, serving_pids, wait_until

SECRET = "reload-secret"
BEARER = {"Authorization": f"Bearer {SECRET}"}


def _served_version(url: str) -> str:
    return str(requests.get(url + "/version", timeout=5).json()["version"])


def test_reload_is_disabled_without_a_token(artifacts: Path) -> None:
    client = create_app(ModelServiceConfig(version="v1", artifacts=str(artifacts))).test_client()
    resp = client.post(
        "/admin/reload", json={"version": "v2"}, headers={"Authorization": "Bearer anything"}
    )
    assert resp.status_code == 503
    assert resp.json["error"]["code"] == "admin_disabled"
    assert "MODEL_ADMIN_TOKEN" in resp.json["error"]["message"]
    assert client.get("/version").json["version"] == "v1"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": SECRET},
        {"X-Admin-Token": SECRET},
    ],
    ids=["missing", "wrong", "longer", "basic scheme", "no scheme", "other header"],
)
def test_missing_or_wrong_token_is_401_and_nothing_changes(
    v1_service: ServerProcess, headers: dict[str, str]
) -> None:
    # v1_service's token is "model-secret"; none of these carry it.
    resp = post(v1_service.url + "/admin/reload", {"version": "v2"}, headers=headers)
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert _served_version(v1_service.url) == "v1"


def test_token_in_query_string_is_not_accepted(v1_service: ServerProcess) -> None:
    resp = post(v1_service.url + "/admin/reload?token=model-secret", {"version": "v2"})
    assert resp.status_code == 401
    assert _served_version(v1_service.url) == "v1"


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"version": "v9"}, 404, "unknown_version"),
        ({"version": "../v1"}, 422, "invalid_input"),
        ({"version": ""}, 422, "invalid_input"),
        ({"version": 2}, 422, "invalid_input"),
        ({}, 422, "invalid_input"),
        ({"version": "v2", "force": True}, 422, "invalid_input"),
    ],
)
def test_bad_reload_request_changes_nothing(
    v1_service: ServerProcess, body: dict[str, Any], status: int, code: str
) -> None:
    resp = post(
        v1_service.url + "/admin/reload", body, headers={"Authorization": "Bearer model-secret"}
    )
    assert resp.status_code == status
    assert error_of(resp)["code"] == code
    assert _served_version(v1_service.url) == "v1"


@pytest.fixture(scope="module")
def reloadable(artifacts: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """A two-worker v1 service of its own: reloading it must not disturb the shared ones."""
    with model_service(
        "v1", artifacts, log_dir, WEB_CONCURRENCY="2", MODEL_ADMIN_TOKEN=SECRET
    ) as server:
        server.wait_ready(timeout=90)
        wait_until(lambda: len(serving_pids(server.url, "v1")) == 2, timeout=30)
        yield server


def _last_n_fresh_answers(url: str, body: dict[str, Any], version: str, n: int) -> bool:
    """True when ``n`` consecutive answers, each on a new connection, come from ``version``."""
    for _ in range(n):
        resp = requests.post(url + "/predict", json=body, timeout=5)
        if resp.status_code != 200 or resp.json()["model_version"] != version:
            return False
    return True


def test_reload_under_load_loses_nothing_and_reaches_every_worker(
    reloadable: ServerProcess, dataset: Any
) -> None:
    url = reloadable.url
    body = {"instances": rows_of(dataset, 5).tolist()}
    stop = threading.Event()
    answers: list[list[tuple[int, str | None]]] = [[] for _ in range(4)]

    def client(log: list[tuple[int, str | None]]) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    resp = session.post(url + "/predict", json=body, timeout=10)
                    log.append((resp.status_code, resp.json().get("model_version")))
                except (requests.RequestException, ValueError) as exc:
                    log.append((0, repr(exc)))

    threads = [threading.Thread(target=client, args=(log,)) for log in answers]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(log) >= 20 for log in answers), timeout=30)
        reload = post(url + "/admin/reload", {"version": "v2"}, headers=BEARER)
        assert reload.status_code == 200, reload.text
        assert reload.json()["model_version"] == "v2"
        assert reload.json()["previous_version"] == "v1"
        counts = [len(log) for log in answers]
        time.sleep(1.0)  # keep the load on while the other worker follows
        wait_until(lambda: all(len(log) >= c + 20 for log, c in zip(answers, counts)), timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    flat = [answer for log in answers for answer in log]
    failures = [answer for answer in flat if answer[0] != 200]
    assert failures == [], failures[:5]
    assert {version for _, version in flat} == {"v1", "v2"}

    wait_until(lambda: _last_n_fresh_answers(url, body, "v2", 20), timeout=5)
    wait_until(lambda: len(serving_pids(url, "v2")) == 2, timeout=5)
    assert requests.get(url + "/version", timeout=5).json()["version"] == "v2"
    assert requests.get(url + "/ready", timeout=5).json()["model_version"] == "v2"

    back = post(url + "/admin/reload", {"version": "v1"}, headers=BEARER)
    assert back.status_code == 200 and back.json()["previous_version"] == "v2"
    wait_until(lambda: _last_n_fresh_answers(url, body, "v1", 20), timeout=5)
    wait_until(lambda: len(serving_pids(url, "v1")) == 2, timeout=5)


def test_reload_to_the_served_version_is_harmless(reloadable: ServerProcess, dataset: Any) -> None:
    current = _served_version(reloadable.url)
    resp = post(reloadable.url + "/admin/reload", {"version": current}, headers=BEARER)
    assert resp.status_code == 200 and resp.json()["model_version"] == current
    answer = post(reloadable.url + "/predict", {"instances": rows_of(dataset, 1).tolist()})
    assert answer.status_code == 200 and answer.json()["model_version"] == current
