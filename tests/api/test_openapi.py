"""Both services describe their API at ``GET /openapi.json``, and hold to it under fuzzing.

The documents are checked against the OpenAPI 3.0 schema and for what a client relies on
(feature names, row limit, error shape, bearer security, router headers). Then schemathesis
fuzzes real services, with and without the admin token: every answer must be a documented
status with a documented body, content type and headers, and none may be a server error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from sklearn.datasets import load_breast_cancer

from model_service.app import create_app as create_model_app
from model_service.config import ModelServiceConfig
from router.app import create_app as create_router_app
from router.config import RouterConfig
from tests.api.fuzz import FuzzRun, fuzz, openapi_document
from tests.servers import ServerProcess, free_port, model_service, router

MODEL_TOKEN = "model-secret"  # what the session's model services are started with
ADMIN_TOKEN = "fuzz-admin-secret"
ERROR_REF = "#/components/schemas/Error"
ROW = load_breast_cancer().data[0].tolist()
ADMIN_OPERATIONS = [
    ("/admin/state", "get"), ("/admin/state", "patch"), ("/admin/promote", "post"),
    ("/admin/rollback", "post"), ("/admin/rollout", "get"), ("/admin/rollout", "post"),
    ("/admin/rollout/pause", "post"), ("/admin/rollout/resume", "post"),
    ("/admin/analysis", "get"), ("/admin/events", "get"), ("/admin/drift", "get"),
]


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def assert_valid_openapi(doc: dict[str, Any]) -> None:
    """Valid against the OpenAPI 3.0 schema, and every error answer uses the one Error shape."""
    assert doc["openapi"].startswith("3.0.")
    schemathesis.openapi.from_dict(doc).validate()
    for path, method, operation in _operations(doc):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (method, path, status)
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]


def _body_schema(operation: dict[str, Any]) -> dict[str, Any]:
    return dict(operation["requestBody"]["content"]["application/json"]["schema"])


@contextmanager
def in_process_router(upstreams: dict[str, str], tmp_path: Path,
                      **settings: Any) -> Iterator[Flask]:
    labels = list(upstreams)
    settings.setdefault("admin_token", ADMIN_TOKEN)
    config = RouterConfig(upstreams=upstreams, stable=labels[0], candidate=labels[1],
                          state_url=f"sqlite:///{tmp_path / f'state-{uuid.uuid4().hex[:8]}.db'}",
                          **settings)
    app = create_router_app(config)
    ctx = app.extensions["router"]
    try:
        yield app
    finally:
        ctx.close()


# -- the documents -----------------------------------------------------------------------------


def test_model_service_document_names_the_loaded_model(v1_service: ServerProcess) -> None:
    doc = openapi_document(v1_service.url)
    assert_valid_openapi(doc)
    features = requests.get(v1_service.url + "/version", timeout=10).json()["feature_names"]
    instances = _body_schema(doc["paths"]["/predict"]["post"])["properties"]["instances"]
    as_arrays, as_objects = instances["oneOf"]
    assert as_arrays["items"]["minItems"] == as_arrays["items"]["maxItems"] == len(features) == 30
    assert as_objects["items"]["required"] == features
    assert as_objects["items"]["additionalProperties"] is False
    assert as_arrays["minItems"] == as_objects["minItems"] == 1
    assert as_arrays["maxItems"] == as_objects["maxItems"] == ModelServiceConfig().max_rows


def test_model_service_document_follows_the_configured_limits(artifacts: Path) -> None:
    plain = create_model_app(ModelServiceConfig(version="v2", artifacts=str(artifacts), max_rows=7))
    doc = plain.test_client().get("/openapi.json").get_json()
    assert_valid_openapi(doc)
    predict = doc["paths"]["/predict"]["post"]
    instances = _body_schema(predict)["properties"]["instances"]
    assert [rows["maxItems"] for rows in instances["oneOf"]] == [7, 7]
    assert "500" not in predict["responses"]
    assert set(predict["responses"]) == {"200", "400", "413", "415", "422", "503"}
    assert predict["responses"]["200"]["headers"]["X-Model-Version"]["required"] is True

    faulty = create_model_app(ModelServiceConfig(version="v2", artifacts=str(artifacts),
                                                 fault_error_rate=0.5))
    doc = faulty.test_client().get("/openapi.json").get_json()
    assert "500" in doc["paths"]["/predict"]["post"]["responses"]


def test_model_service_admin_and_metrics_are_described(v1_service: ServerProcess) -> None:
    doc = openapi_document(v1_service.url)
    reload = doc["paths"]["/admin/reload"]["post"]
    assert reload["security"] == [{"bearer": []}]
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert {"401", "503"} <= set(reload["responses"])
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert set(doc["paths"]) == {"/predict", "/health", "/ready", "/version", "/metrics", "/drift",
                                 "/admin/reload", "/openapi.json"}


def test_router_document_describes_the_data_path_and_admin_api(
        v1_service: ServerProcess, v2_service: ServerProcess, tmp_path: Path) -> None:
    upstreams = {"v1": v1_service.url, "v2": v2_service.url}
    with in_process_router(upstreams, tmp_path) as app:
        doc = app.test_client().get("/openapi.json").get_json()
    assert_valid_openapi(doc)
    predict = doc["paths"]["/predict"]["post"]
    # The body is the stable model service's own description: its features, its row limit.
    assert predict["requestBody"] == openapi_document(v1_service.url)["paths"]["/predict"]["post"][
        "requestBody"]
    for status, response in predict["responses"].items():
        assert {"X-Model-Version", "X-Request-ID"} <= set(response["headers"]), status
        assert all(h["required"] for h in response["headers"].values()), status
    route_to = next(p for p in predict["parameters"] if p["name"] == "X-Route-To")
    assert route_to["in"] == "header" and route_to["schema"]["enum"] == ["v1", "v2"]
    for path, method in ADMIN_OPERATIONS:
        operation = doc["paths"][path][method]
        assert operation["security"] == [{"bearer": []}], (method, path)
        assert {"200", "401", "503"} <= set(operation["responses"]), (method, path)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    assert set(doc["paths"]["/admin/state"]["get"]["responses"]["200"]["headers"]) == {"ETag"}
    assert "412" in doc["paths"]["/admin/state"]["patch"]["responses"]
    assert list(doc["paths"]["/dashboard"]["get"]["responses"]["200"]["content"]) == ["text/html"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    documented = {(path, method) for path, method, _ in _operations(doc)}
    assert documented >= {(path, method) for path, method in ADMIN_OPERATIONS} | {
        ("/predict", "post"), ("/health", "get"), ("/ready", "get"), ("/metrics", "get"),
        ("/dashboard", "get"), ("/openapi.json", "get")}


def test_router_document_without_a_reachable_stable_describes_generic_rows(
        tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with in_process_router({"v1": down, "v2": down}, tmp_path, allow_route_to=False) as app:
        doc = app.test_client().get("/openapi.json").get_json()
    assert_valid_openapi(doc)
    predict = doc["paths"]["/predict"]["post"]
    as_arrays, as_objects = _body_schema(predict)["properties"]["instances"]["oneOf"]
    # any values: models take numbers, integers, booleans, strings and nulls; the service checks
    assert as_arrays["items"] == {"type": "array", "minItems": 1, "items": {}}
    assert "X-Route-To" not in {p["name"] for p in predict["parameters"]}
    assert "404" not in predict["responses"]


def _assert_documented(doc: dict[str, Any], path: str, method: str, resp: Any) -> None:
    """The answer's status is documented for the operation, and the answer conforms to it."""
    assert str(resp.status_code) in doc["paths"][path][method]["responses"], (method, path)
    schemathesis.openapi.from_dict(doc)[path][method.upper()].validate_response(resp)


def test_disabled_admin_apis_answer_the_documented_503(artifacts: Path, tmp_path: Path) -> None:
    model = create_model_app(ModelServiceConfig(version="v1", artifacts=str(artifacts)))
    client = model.test_client()
    doc = client.get("/openapi.json").get_json()
    resp = client.post("/admin/reload", json={"version": "v2"},
                       headers={"Authorization": f"Bearer {MODEL_TOKEN}"})
    assert resp.status_code == 503 and resp.json["error"]["code"] == "admin_disabled"
    _assert_documented(doc, "/admin/reload", "post", resp)

    down = f"http://127.0.0.1:{free_port()}"
    with in_process_router({"v1": down, "v2": down}, tmp_path, admin_token=None) as app:
        client = app.test_client()
        doc = client.get("/openapi.json").get_json()
        for path, method in ADMIN_OPERATIONS:
            resp = client.open(path, method=method.upper(), json={},
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert resp.status_code == 503 and resp.json["error"]["code"] == "admin_disabled"
            assert "ROUTER_ADMIN_TOKEN" in resp.json["error"]["message"]
            _assert_documented(doc, path, method, resp)


# -- fuzzing -----------------------------------------------------------------------------------


@pytest.fixture
def reloadable_service(artifacts: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """A model service of the test's own: a fuzzed reload may swap its model."""
    with model_service("v1", artifacts, log_dir, MODEL_ADMIN_TOKEN=MODEL_TOKEN,
                       WEB_CONCURRENCY="1") as server:
        yield server.wait_ready()


@contextmanager
def fuzz_router(v1: ServerProcess, v2: ServerProcess, log_dir: Path,
                tmp_path: Path) -> Iterator[ServerProcess]:
    """A router of the run's own, on fresh state: what a fuzzed admin call changes dies with it."""
    server = router({"v1": v1.url, "v2": v2.url}, log_dir,
                    f"sqlite:///{tmp_path / f'state-{uuid.uuid4().hex[:8]}.db'}",
                    token=ADMIN_TOKEN, WEB_CONCURRENCY="1")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def assert_predicts(base_url: str) -> None:
    resp = requests.post(base_url + "/predict", json={"instances": [ROW]}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model_version"] == resp.headers["X-Model-Version"]


def assert_clean(run: FuzzRun) -> None:
    report = run.report
    clean = report["exit_code"] == 0 and not report["failures"] and not report["errors"]
    assert clean, run.explain()
    assert report["operations"]["tested"] == report["operations"]["selected"] > 0, run.explain()
    assert report["test_cases"]["generated"] > 0


@pytest.mark.slow
def test_fuzzing_the_model_service_with_the_admin_token(reloadable_service: ServerProcess,
                                                        tmp_path: Path) -> None:
    run = fuzz(reloadable_service.url, tmp_path, token=MODEL_TOKEN)
    assert_clean(run)
    assert run.answers("POST /admin/reload", "accepted") > 0  # the token was taken
    assert run.answers("POST /predict", "accepted") > 0
    assert_predicts(reloadable_service.url)


@pytest.mark.slow
def test_fuzzing_the_model_service_without_the_admin_token(v1_service: ServerProcess,
                                                           tmp_path: Path) -> None:
    served = requests.get(v1_service.url + "/version", timeout=10).json()["sha256"]
    run = fuzz(v1_service.url, tmp_path)
    assert_clean(run)
    assert run.answers("POST /admin/reload", "accepted") == 0
    assert run.answers("POST /predict", "accepted") > 0
    assert requests.get(v1_service.url + "/version", timeout=10).json()["sha256"] == served


@pytest.mark.slow
def test_fuzzing_the_router_with_the_admin_token(v1_service: ServerProcess,
                                                 v2_service: ServerProcess, log_dir: Path,
                                                 tmp_path: Path) -> None:
    with fuzz_router(v1_service, v2_service, log_dir, tmp_path) as server:
        run = fuzz(server.url, tmp_path / "run", token=ADMIN_TOKEN)
        assert_clean(run)
        for operation in ("GET /admin/state", "PATCH /admin/state", "POST /admin/rollout",
                          "POST /admin/rollback", "GET /admin/events", "POST /predict"):
            assert run.answers(operation, "accepted") > 0, operation
        # Whatever the fuzzed admin calls did, the router still answers predictions.
        assert_predicts(server.url)


@pytest.mark.slow
def test_fuzzing_the_router_without_the_admin_token(v1_service: ServerProcess,
                                                    v2_service: ServerProcess, log_dir: Path,
                                                    tmp_path: Path) -> None:
    with fuzz_router(v1_service, v2_service, log_dir, tmp_path) as server:
        run = fuzz(server.url, tmp_path / "run")
        assert_clean(run)
        for path, method in ADMIN_OPERATIONS:
            assert run.answers(f"{method.upper()} {path}", "accepted") == 0, (method, path)
        assert run.answers("POST /predict", "accepted") > 0
        state = requests.get(server.url + "/admin/state", timeout=10,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert state["config_version"] == 1  # nothing changed without the token



# -- MODEL_ACCESS_TOKEN and METRICS_TOKEN ------------------------------------------------------


def test_a_guarded_model_service_documents_its_tokens_and_its_401s(artifacts: Path) -> None:
    app = create_model_app(ModelServiceConfig(version="v1", artifacts=str(artifacts),
                                              admin_token=MODEL_TOKEN, access_token="access",
                                              metrics_token="metrics"))
    client = app.test_client()
    assert client.get("/openapi.json").status_code == 401  # the document is behind the token too
    doc = client.get("/openapi.json", headers={"Authorization": "Bearer access"}).get_json()
    assert_valid_openapi(doc)
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == {"bearer", "access", "metrics"}
    assert all((s["type"], s["scheme"]) == ("http", "bearer") for s in schemes.values())
    wanted = {"/health": None, "/admin/reload": "bearer", "/metrics": "metrics"}
    for path, method, operation in _operations(doc):
        scheme = wanted.get(path, "access")
        assert operation.get("security") == ([{scheme: []}] if scheme else None), (method, path)
        if scheme is None:
            continue
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (method, path)
        refused = client.open(path, method=method.upper(), json={"instances": [ROW]})
        assert refused.status_code == 401, (method, path)
        _assert_documented(doc, path, method, refused)


def test_the_router_documents_its_metrics_token(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with in_process_router({"v1": down, "v2": down}, tmp_path, metrics_token="metrics") as app:
        client = app.test_client()
        doc = client.get("/openapi.json").get_json()
        assert_valid_openapi(doc)
        assert doc["paths"]["/metrics"]["get"]["security"] == [{"metrics": []}]
        assert "security" not in doc["paths"]["/health"]["get"]
        refused = client.get("/metrics")
        assert refused.status_code == 401
        _assert_documented(doc, "/metrics", "get", refused)
        assert client.get("/metrics", headers={"Authorization": "Bearer metrics"}).status_code == 200


@pytest.mark.slow
def test_fuzzing_a_guarded_model_service_with_the_access_token(artifacts: Path, log_dir: Path,
                                                               tmp_path: Path) -> None:
    with model_service("v1", artifacts, log_dir, MODEL_ADMIN_TOKEN=MODEL_TOKEN,
                       MODEL_ACCESS_TOKEN="access", METRICS_TOKEN="metrics",
                       WEB_CONCURRENCY="1") as server:
        server.wait_ready()
        run = fuzz(server.url, tmp_path, token="access", max_examples=10)
        assert_clean(run)  # ignored_auth: every guarded operation refuses a request without it
        assert run.answers("POST /predict", "accepted") > 0
        assert run.answers("POST /admin/reload", "accepted") == 0  # the admin token opens it
