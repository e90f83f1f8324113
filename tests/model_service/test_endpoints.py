"""Every endpoint of a real model service (gunicorn, two workers), answered as the contract says."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from model_service.artifacts import load_artifact
from tests.model_service.conftest import (
    post,
    requests_counted_by_worker,
    rows_of,
    sample_sum,
    worker_pids,
)
from tests.servers import ServerProcess, scrape, serving_pids, wait_until


@pytest.fixture(params=["v1", "v2"])
def service(request: pytest.FixtureRequest) -> tuple[str, ServerProcess]:
    return request.param, request.getfixturevalue(f"{request.param}_service")


def test_predict_matches_the_model(
    service: tuple[str, ServerProcess], artifacts: Path, dataset: Any
) -> None:
    version, server = service
    rows = rows_of(dataset, 25, start=100)
    resp = post(server.url + "/predict", {"instances": rows.tolist()})
    assert resp.status_code == 200
    assert resp.headers["X-Model-Version"] == version
    body = resp.json()
    assert set(body) == {"predictions", "probabilities", "model_version"}
    assert body["model_version"] == version
    pipeline = load_artifact(artifacts, version).pipeline
    assert body["predictions"] == pipeline.predict(rows).tolist()
    np.testing.assert_allclose(body["probabilities"], pipeline.predict_proba(rows), rtol=1e-12)


def test_records_by_feature_name_give_the_same_answer(
    service: tuple[str, ServerProcess], dataset: Any, features: list[str]
) -> None:
    _, server = service
    rows = rows_of(dataset, 10, start=7)
    records = [dict(zip(reversed(features), reversed(row.tolist()), strict=True)) for row in rows]
    as_lists = post(server.url + "/predict", {"instances": rows.tolist()})
    as_records = post(server.url + "/predict", {"instances": records})
    assert as_lists.status_code == as_records.status_code == 200
    assert as_records.json() == as_lists.json()


def test_batch_of_500_rows(v1_service: ServerProcess, artifacts: Path, dataset: Any) -> None:
    rows = rows_of(dataset, 500)
    resp = post(v1_service.url + "/predict", {"instances": rows.tolist()})
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["predictions"]) == len(body["probabilities"]) == 500
    assert body["predictions"] == load_artifact(artifacts, "v1").pipeline.predict(rows).tolist()
    np.testing.assert_allclose(np.sum(body["probabilities"], axis=1), 1.0)


def test_charset_in_content_type_is_accepted(v1_service: ServerProcess, dataset: Any) -> None:
    resp = post(
        v1_service.url + "/predict",
        data=json.dumps({"instances": [dataset.data[0].tolist()]}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status_code == 200


def test_health_and_ready(service: tuple[str, ServerProcess]) -> None:
    version, server = service
    health = requests.get(server.url + "/health", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(server.url + "/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model_version": version}


def test_version_is_the_artifact_metadata(
    service: tuple[str, ServerProcess], artifacts: Path
) -> None:
    version, server = service
    resp = requests.get(server.url + "/version", timeout=5)
    assert resp.status_code == 200
    meta = resp.json()
    assert meta == json.loads((artifacts / version / "metadata.json").read_text())
    for field in (
        "version",
        "created_at",
        "task",
        "input_schema",
        "library_versions",
        "sklearn_version",
        "feature_names",
        "heldout_metrics",
        "sha256",
    ):
        assert field in meta
    assert meta["version"] == version


def test_metrics_add_up_across_workers(
    v1_service: ServerProcess, artifacts: Path, dataset: Any
) -> None:
    url = v1_service.url
    sha256 = load_artifact(artifacts, "v1").sha256
    wait_until(lambda: len(serving_pids(url, "v1")) == 2, timeout=30)
    pids = worker_pids(v1_service)
    assert len(pids) == 2
    before = scrape(url)
    counted_before = {pid: requests_counted_by_worker(v1_service, pid) for pid in pids}
    good = {"instances": rows_of(dataset, 3).tolist()}
    bad = {"instances": [[1.0] * 29]}

    def one(i: int) -> int:
        return post(url + "/predict", bad if i % 5 == 4 else good).status_code  # fresh connection

    codes: list[int] = []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(25):  # until both workers have answered some of them
            codes += pool.map(one, range(20))
            if all(
                requests_counted_by_worker(v1_service, pid) > counted_before[pid] for pid in pids
            ):
                break
    assert all(requests_counted_by_worker(v1_service, pid) > counted_before[pid] for pid in pids)
    ok, unprocessable = codes.count(200), codes.count(422)
    assert ok + unprocessable == len(codes) and unprocessable == len(codes) // 5

    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return sample_sum(after, name, **labels) - sample_sum(before, name, **labels)

    assert delta("model_requests_total", version="v1", code="200") == ok
    assert delta("model_requests_total", version="v1", code="422") == unprocessable
    assert delta("model_predictions_total", version="v1") == 3 * ok
    assert delta("model_inference_duration_seconds_count", version="v1") == ok
    assert delta("model_inference_duration_seconds_sum", version="v1") > 0
    buckets = sorted(
        (float(labels["le"]), value)
        for labels, value in after["model_inference_duration_seconds_bucket"]
        if labels["version"] == "v1"
    )
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")
    assert counts[-1] == sample_sum(after, "model_inference_duration_seconds_count", version="v1")
    info = {
        (labels["pid"], labels["sha256"]): value
        for labels, value in after["model_info"]
        if labels["version"] == "v1"
    }
    assert info == {(str(pid), sha256): 1.0 for pid in pids}


def test_metrics_of_a_single_process_app(
    artifacts: Path, dataset: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR (one process), /metrics shows the app's own registry."""
    from model_service.app import create_app
    from model_service.config import ModelServiceConfig

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    client = create_app(ModelServiceConfig(version="v2", artifacts=str(artifacts))).test_client()
    for _ in range(3):
        assert (
            client.post("/predict", json={"instances": rows_of(dataset, 4).tolist()}).status_code
            == 200
        )
    text = client.get("/metrics").get_data(as_text=True)
    assert 'model_requests_total{code="200",version="v2"} 3.0' in text
    assert 'model_predictions_total{version="v2"} 12.0' in text
    assert 'model_inference_duration_seconds_count{version="v2"} 3.0' in text
