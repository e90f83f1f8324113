"""``MODEL_ACCESS_TOKEN`` and ``METRICS_TOKEN``: a public model service answers only its router.

Every path but ``/health`` (and the admin reload, under its own token) needs the access token;
``/metrics`` needs the metrics token when one is set. A refused request is a JSON 401 that reaches
nothing: no prediction is made or counted, no model is swapped.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from common.config import ConfigError
from model_service.app import create_app
from model_service.config import ModelServiceConfig
from tests.model_service.conftest import error_of, rows_of
from tests.servers import ServerProcess, model_service

ACCESS = "access-secret"
METRICS = "metrics-secret"
ADMIN = "admin-secret"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def guarded(artifacts: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """A model service with all three tokens, under the production server."""
    with model_service("v1", artifacts, log_dir, MODEL_ACCESS_TOKEN=ACCESS, METRICS_TOKEN=METRICS,
                       MODEL_ADMIN_TOKEN=ADMIN, WEB_CONCURRENCY="1") as server:
        yield server.wait_ready()


def counted(url: str) -> dict[str, float]:
    """Requests and predicted rows the service has counted, by metric name."""
    resp = requests.get(url + "/metrics", headers=bearer(METRICS), timeout=10)
    assert resp.status_code == 200, resp.text
    totals = {"model_requests_total": 0.0, "model_predictions_total": 0.0}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def assert_refused(resp: requests.Response, variable: str) -> None:
    assert resp.status_code == 401, resp.text[:200]
    error = error_of(resp)
    assert error["code"] == "unauthorized"
    assert variable in error["message"] and "Authorization: Bearer" in error["message"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


REQUESTS = [
    ("POST", "/predict"), ("GET", "/predict"), ("GET", "/ready"), ("GET", "/version"),
    ("GET", "/openapi.json"), ("GET", "/no-such-path"), ("DELETE", "/health/x"),
]
WRONG = {
    "none": {},
    "wrong": bearer("wrong"),
    "longer": bearer(ACCESS + "x"),
    "prefix": bearer(ACCESS[:-1]),
    "basic scheme": {"Authorization": f"Basic {ACCESS}"},
    "no scheme": {"Authorization": ACCESS},
    "metrics token": bearer(METRICS),
    "admin token": bearer(ADMIN),
}


@pytest.mark.parametrize("method, path", REQUESTS, ids=[f"{m} {p}" for m, p in REQUESTS])
@pytest.mark.parametrize("headers", WRONG.values(), ids=list(WRONG))
def test_every_path_but_health_needs_the_access_token(
        guarded: ServerProcess, dataset: object, method: str, path: str,
        headers: dict[str, str]) -> None:
    before = counted(guarded.url)
    resp = requests.request(method, guarded.url + path, headers=headers, timeout=10,
                            json={"instances": rows_of(dataset, 3).tolist()})
    assert_refused(resp, "MODEL_ACCESS_TOKEN")
    assert "X-Model-Version" not in resp.headers  # nothing behind the gate answered
    assert counted(guarded.url) == before


def test_the_token_in_the_query_string_is_not_accepted(guarded: ServerProcess,
                                                       dataset: object) -> None:
    before = counted(guarded.url)
    resp = requests.post(f"{guarded.url}/predict?access_token={ACCESS}", timeout=10,
                         json={"instances": rows_of(dataset, 1).tolist()})
    assert_refused(resp, "MODEL_ACCESS_TOKEN")
    assert counted(guarded.url) == before


def test_health_is_open_and_the_token_opens_the_rest(guarded: ServerProcess,
                                                     dataset: object) -> None:
    assert requests.get(guarded.url + "/health", timeout=10).json() == {"status": "ok"}
    before = counted(guarded.url)
    resp = requests.post(guarded.url + "/predict", headers=bearer(ACCESS), timeout=10,
                         json={"instances": rows_of(dataset, 3).tolist()})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 3
    after = counted(guarded.url)
    assert after["model_predictions_total"] == before["model_predictions_total"] + 3
    for path in ("/ready", "/version", "/openapi.json"):
        assert requests.get(guarded.url + path, headers=bearer(ACCESS),
                            timeout=10).status_code == 200, path
    # client errors behind the gate are the usual ones, not 401s
    resp = requests.post(guarded.url + "/predict", headers=bearer(ACCESS), json={"rows": []},
                         timeout=10)
    assert (resp.status_code, error_of(resp)["code"]) == (422, "missing_field")


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer(ACCESS), bearer(ADMIN)],
                         ids=["none", "wrong", "access token", "admin token"])
def test_metrics_needs_the_metrics_token(guarded: ServerProcess,
                                         headers: dict[str, str]) -> None:
    resp = requests.get(guarded.url + "/metrics", headers=headers, timeout=10)
    assert_refused(resp, "METRICS_TOKEN")
    assert "model_requests_total" not in resp.text
    assert requests.get(guarded.url + "/metrics", headers=bearer(METRICS),
                        timeout=10).status_code == 200


def test_reload_takes_the_admin_token_not_the_access_token(guarded: ServerProcess) -> None:
    def served() -> str:
        return str(requests.get(guarded.url + "/version", headers=bearer(ACCESS),
                                timeout=10).json()["version"])

    for headers in ({}, bearer(ACCESS), bearer(METRICS)):
        resp = requests.post(guarded.url + "/admin/reload", json={"version": "v2"},
                             headers=headers, timeout=30)
        assert resp.status_code == 401 and error_of(resp)["code"] == "unauthorized"
        assert served() == "v1"
    for version in ("v2", "v1"):
        resp = requests.post(guarded.url + "/admin/reload", json={"version": version},
                             headers=bearer(ADMIN), timeout=30)
        assert resp.status_code == 200, resp.text
        assert served() == version


def test_a_refused_request_leaves_the_connection_usable(guarded: ServerProcess) -> None:
    """The refused body is not read by the app; the next request on the connection still works."""
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=10)
    try:
        body = b'{"instances": [[' + b"1.0, " * 29 + b"1.0]]}"
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 401
        first.read()
        conn.request("GET", "/version", headers=bearer(ACCESS))
        second = conn.getresponse()
        assert second.status == 200
        assert b'"version"' in second.read()
    finally:
        conn.close()


# -- without METRICS_TOKEN, and the configuration -------------------------------------------------


def test_metrics_takes_the_access_token_when_no_metrics_token_is_set(artifacts: Path) -> None:
    app = create_app(ModelServiceConfig(version="v1", artifacts=str(artifacts),
                                        access_token=ACCESS))
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(ACCESS)).status_code == 200
    assert client.get("/health").status_code == 200


def test_only_metrics_is_guarded_when_only_the_metrics_token_is_set(artifacts: Path) -> None:
    app = create_app(ModelServiceConfig(version="v1", artifacts=str(artifacts),
                                        metrics_token=METRICS))
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(METRICS)).status_code == 200
    assert client.get("/version").status_code == 200


def test_without_tokens_everything_is_open_as_before(artifacts: Path) -> None:
    client = create_app(ModelServiceConfig(version="v1", artifacts=str(artifacts))).test_client()
    for path in ("/metrics", "/version", "/ready", "/openapi.json"):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("variable", ["MODEL_ACCESS_TOKEN", "METRICS_TOKEN"])
@pytest.mark.parametrize("value", ["", "   ", "\t\n", "two words", "caf\u00e9"],
                         ids=["empty", "spaces", "blank", "inner space", "not ascii"])
def test_an_unusable_token_is_refused_at_start_naming_the_variable(variable: str,
                                                                   value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ModelServiceConfig.from_env({variable: value})


def test_tokens_are_read_trimmed() -> None:
    config = ModelServiceConfig.from_env({"MODEL_ACCESS_TOKEN": f" {ACCESS}\n",
                                          "METRICS_TOKEN": METRICS})
    assert (config.access_token, config.metrics_token) == (ACCESS, METRICS)
    assert ModelServiceConfig.from_env({}).access_token is None


def test_the_server_does_not_start_with_an_empty_token(artifacts: Path, log_dir: Path) -> None:
    server = model_service("v1", artifacts, log_dir, MODEL_ACCESS_TOKEN=" ")
    try:
        code = server.proc.wait(timeout=60)
    finally:
        server.stop()
    assert code != 0
    assert "MODEL_ACCESS_TOKEN" in server.log()
