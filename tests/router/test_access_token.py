"""The router in front of model services that answer only it (``MODEL_ACCESS_TOKEN``).

With the right ``ROUTER_MODEL_ACCESS_TOKEN`` everything works end to end: forwarded predictions,
shadow copies, readiness, each slot's ``GET /version``, and a release that reloads a slot. With a
wrong or missing one the router says so: in ``/ready``, in each slot's ``problem`` in the state,
and to clients as a 502 (the router's credential failed, not theirs). ``METRICS_TOKEN`` guards
the router's ``/metrics`` and nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from common.config import ConfigError
from router.config import RouterConfig
from tests.router.conftest import in_process_router
from tests.router.helpers import AUTH
from tests.router.rollout.live import Admin, Traffic, shut
from tests.servers import ServerProcess, model_service, router, wait_until

ACCESS = "access-secret"
METRICS = "metrics-secret"
MODEL_ADMIN = "model-admin-secret"
ROW = [13.54, 14.36, 87.46, 566.3, 0.09779, 0.08129, 0.06664, 0.04781, 0.1885, 0.05766, 0.2699,
       0.7886, 2.058, 23.56, 0.008462, 0.0146, 0.02387, 0.01315, 0.0198, 0.0023, 15.11, 19.26,
       99.7, 711.2, 0.144, 0.1773, 0.239, 0.1288, 0.2977, 0.07259]
LENIENT = {"max_p99_ratio": 20, "min_agreement": 0.5}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def samples(url: str, token: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = requests.get(url + "/metrics", headers=bearer(token), timeout=10)
    assert resp.status_code == 200, resp.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, got), v in found.items()
               if n == name and set(labels.items()) <= set(got))


@pytest.fixture(scope="module")
def slots(artifacts: Path, log_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """Two guarded model services, blue and green, both serving v1 (v2 is in their artifacts)."""
    root = tmp_path_factory.mktemp("guarded-artifacts")
    for version in ("v1", "v2"):
        shutil.copytree(artifacts / version, root / version)
    services = {name: model_service("v1", root, log_dir, MODEL_ACCESS_TOKEN=ACCESS,
                                    METRICS_TOKEN=METRICS, MODEL_ADMIN_TOKEN=MODEL_ADMIN,
                                    WEB_CONCURRENCY="1")
                for name in ("blue", "green")}
    try:
        for service in services.values():
            service.wait_ready(90)
        yield services
    finally:
        for service in services.values():
            shut(service)


@pytest.fixture(scope="module")
def guarded_router(slots: dict[str, ServerProcess], log_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    state = tmp_path_factory.mktemp("guarded-router") / "state.db"
    server = router({name: s.url for name, s in slots.items()}, log_dir, f"sqlite:///{state}",
                    ROUTER_MODEL_ACCESS_TOKEN=ACCESS, ROUTER_MODEL_ADMIN_TOKEN=MODEL_ADMIN,
                    METRICS_TOKEN=METRICS, ROUTER_STABLE="blue", ROUTER_CANDIDATE="green",
                    WEB_CONCURRENCY="1")
    try:
        yield server.wait_ready(60)  # GET /ready asks blue's /ready, with the token
    finally:
        shut(server)


def predict(url: str, **headers: str) -> requests.Response:
    return requests.post(url + "/predict", json={"instances": [ROW]}, headers=headers, timeout=10)


def test_the_router_serves_through_guarded_model_services(
        guarded_router: ServerProcess, slots: dict[str, ServerProcess]) -> None:
    url = guarded_router.url
    # the model services refuse anyone else
    assert predict(slots["blue"].url).status_code == 401

    state = Admin(url).state()  # each slot's GET /version, with the token
    assert {name: (s["version"], s["problem"]) for name, s in state["slots"].items()} == {
        "blue": ("v1", None), "green": ("v1", None)}
    assert requests.get(url + "/ready", timeout=10).json()["status"] == "ready"

    resp = predict(url)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model_version"] == "v1"
    # the client's own Authorization is never forwarded, and does not replace the router's
    assert predict(url, Authorization="Bearer client-token", **{"X-Route-To": "green"}
                   ).status_code == 200

    green_before = samples(slots["green"].url, METRICS)
    Admin(url).call("PATCH", "/admin/state", json={"strategy": "shadow", "shadow_percent": 100})
    assert all(predict(url).status_code == 200 for _ in range(10))

    def mirrored() -> bool:
        return total(samples(url, METRICS), "router_shadow_requests_total", outcome="ok") >= 10

    wait_until(mirrored, timeout=20, interval=0.1)
    found = samples(url, METRICS)
    assert total(found, "router_shadow_requests_total") == \
        total(found, "router_shadow_requests_total", outcome="ok")
    assert total(found, "router_shadow_comparisons_total", result="agree") >= 10
    green_after = samples(slots["green"].url, METRICS)
    assert total(green_after, "model_predictions_total") >= \
        total(green_before, "model_predictions_total") + 10
    assert total(found, "router_upstream_errors_total") == 0


def test_a_release_reloads_a_guarded_slot(guarded_router: ServerProcess,
                                          slots: dict[str, ServerProcess]) -> None:
    admin = Admin(guarded_router.url)
    admin.call("POST", "/admin/rollback")
    with Traffic(guarded_router.url, threads=2) as traffic:
        admin.start({"strategy": "blue-green", "version": "v2", "interval_s": 0.5,
                     "min_requests": 10, "thresholds": LENIENT})
        done = admin.wait_done(90)
    assert done["status"] == "promoted", done
    state = admin.state()
    assert (state["stable"], state["stable_version"]) == ("green", "v2")
    assert state["slots"]["green"]["problem"] is None
    served = requests.get(slots["green"].url + "/version", headers=bearer(ACCESS),
                          timeout=10).json()["version"]
    assert served == "v2"
    statuses = {s.status for s in traffic.sent}
    assert statuses == {200}, statuses


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer(ACCESS), AUTH],
                         ids=["none", "wrong", "access token", "admin token"])
def test_the_routers_metrics_need_the_metrics_token(guarded_router: ServerProcess,
                                                    headers: dict[str, str]) -> None:
    resp = requests.get(guarded_router.url + "/metrics", headers=headers, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"
    assert "METRICS_TOKEN" in resp.json()["error"]["message"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # the rest of the router is as open as before
    assert requests.get(guarded_router.url + "/health", timeout=10).status_code == 200
    assert requests.get(guarded_router.url + "/dashboard", timeout=10).status_code == 200


# -- a router without the right token -------------------------------------------------------------


@pytest.mark.parametrize("token, says", [("wrong", "refused the router's access token"),
                                         (None, "needs an access token")],
                         ids=["wrong token", "no token"])
def test_a_router_without_the_right_token_says_why(
        slots: dict[str, ServerProcess], tmp_path: Path, token: str | None, says: str) -> None:
    upstreams = {name: s.url for name, s in slots.items()}
    before = samples(slots["blue"].url, METRICS)
    with in_process_router(upstreams, f"sqlite:///{tmp_path / 'state.db'}",
                           model_access_token=token) as app:
        client = app.test_client()
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json["error"]["code"] == "upstream_unauthorized"
        assert says in ready.json["error"]["message"]
        assert "ROUTER_MODEL_ACCESS_TOKEN" in ready.json["error"]["message"]

        state = client.get("/admin/state", headers=AUTH).json
        for slot in state["slots"].values():
            assert slot["version"] is None
            assert says in slot["problem"] and "ROUTER_MODEL_ACCESS_TOKEN" in slot["problem"]

        resp = client.post("/predict", json={"instances": [ROW]})
        assert resp.status_code == 502
        assert resp.json["error"]["code"] == "upstream_unauthorized"
        assert "ROUTER_MODEL_ACCESS_TOKEN" in resp.json["error"]["message"]
        found = samples_of(client)
        assert total(found, "router_upstream_errors_total", reason="unauthorized") == 1
        assert total(found, "router_requests_total", code="502") == 1
    after = samples(slots["blue"].url, METRICS)
    assert total(after, "model_predictions_total") == total(before, "model_predictions_total")


def samples_of(client: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = client.get("/metrics")  # type: ignore[attr-defined]
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.get_data(as_text=True))
            for s in family.samples}


@pytest.mark.parametrize("variable", ["ROUTER_MODEL_ACCESS_TOKEN", "METRICS_TOKEN"])
@pytest.mark.parametrize("value", ["", "  ", "two words"], ids=["empty", "blank", "inner space"])
def test_an_unusable_router_token_is_refused_at_start(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        RouterConfig.from_env({"ROUTER_UPSTREAMS": "v1=http://127.0.0.1:8001", variable: value})


def test_router_tokens_are_read_from_the_environment() -> None:
    config = RouterConfig.from_env({"ROUTER_UPSTREAMS": "v1=http://127.0.0.1:8001",
                                    "ROUTER_MODEL_ACCESS_TOKEN": ACCESS,
                                    "METRICS_TOKEN": METRICS})
    assert config.model_headers == (("Authorization", f"Bearer {ACCESS}"),)
    assert config.metrics_token == METRICS
    assert RouterConfig.from_env({"ROUTER_UPSTREAMS": "v1=http://127.0.0.1:8001"}
                                 ).model_headers == ()
