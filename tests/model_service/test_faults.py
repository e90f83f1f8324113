"""Fault injection (FAULT_ERROR_RATE, FAULT_LATENCY_MS) in real services, for demos and rollouts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from scipy.stats import binom

from tests.model_service.conftest import error_of, post, rows_of, sample_sum, started
from tests.servers import ServerProcess, scrape

CONFIDENCE = 0.999


@pytest.fixture(scope="module")
def faulty(artifacts: Path, log_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    """Three one-worker v1 services: always failing, failing half the time, slow."""
    settings = {
        "always": {"FAULT_ERROR_RATE": "1"},
        "half": {"FAULT_ERROR_RATE": "0.5"},
        "slow": {"FAULT_LATENCY_MS": "200"},
    }
    specs = [
        ("v1", artifacts, log_dir, {"WEB_CONCURRENCY": "1", **env}) for env in settings.values()
    ]
    with started(*specs) as servers:
        yield dict(zip(settings, servers, strict=True))


def test_error_rate_1_fails_every_prediction_as_json(
    faulty: dict[str, ServerProcess], dataset: Any
) -> None:
    url = faulty["always"].url
    before = scrape(url)
    body = {"instances": rows_of(dataset, 2).tolist()}
    for _ in range(10):
        resp = post(url + "/predict", body)
        assert resp.status_code == 500
        error = error_of(resp)
        assert error["code"] == "injected_fault" and "FAULT_ERROR_RATE" in error["message"]
    after = scrape(url)
    assert (
        sample_sum(after, "model_requests_total", version="v1", code="500")
        - sample_sum(before, "model_requests_total", version="v1", code="500")
    ) == 10
    assert sample_sum(after, "model_predictions_total", version="v1") == sample_sum(
        before, "model_predictions_total", version="v1"
    )


def test_faults_leave_validation_and_probes_alone(faulty: dict[str, ServerProcess]) -> None:
    url = faulty["always"].url
    resp = post(url + "/predict", {"instances": [[1.0] * 29]})
    assert resp.status_code == 422
    assert requests.get(url + "/health", timeout=5).status_code == 200
    assert requests.get(url + "/ready", timeout=5).status_code == 200


def test_error_rate_half_fails_about_half(faulty: dict[str, ServerProcess], dataset: Any) -> None:
    n, rate = 400, 0.5
    tail = (1 - CONFIDENCE) / 2
    low, high = int(binom.ppf(tail, n, rate)), int(binom.ppf(1 - tail, n, rate))
    body = {"instances": rows_of(dataset, 1).tolist()}
    codes = []
    with requests.Session() as session:
        for _ in range(n):
            resp = session.post(faulty["half"].url + "/predict", json=body, timeout=10)
            codes.append(resp.status_code)
            if resp.status_code == 500:
                assert resp.json()["error"]["code"] == "injected_fault"
    assert set(codes) == {200, 500}
    assert low <= codes.count(500) <= high, (codes.count(500), (low, high))


def test_latency_delays_the_answer(faulty: dict[str, ServerProcess], dataset: Any) -> None:
    resp = post(faulty["slow"].url + "/predict", {"instances": rows_of(dataset, 1).tolist()})
    assert resp.status_code == 200
    assert resp.elapsed.total_seconds() >= 0.2
