"""Input drift on a real model service: reference distributions in the package, live PSI per column.

The built-in v1 is packaged with the breast cancer held-out split as its evaluation data; sending
exactly those rows reproduces the reference shares (PSI 0), and scaling one column moves it into
the top bin (a major shift).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from common.config import ConfigError
from model_service.__main__ import main
from model_service.config import ModelServiceConfig
from model_service.reference import MISSING, OTHER
from model_service.training import load_dataset
from tests.model_service.conftest import post, sample_sum
from tests.model_service.test_own_model import CHURN_TRUST, build_example
from tests.servers import ServerProcess, model_service, scrape

WINDOW = {"WEB_CONCURRENCY": "1", "MODEL_DRIFT_WINDOW_ROWS": "200", "MODEL_DRIFT_MIN_ROWS": "100"}
SHIFTED = "worst radius"


@pytest.fixture(scope="module")
def evaluation_rows() -> np.ndarray:
    _, _, x_test, _, _ = load_dataset()
    return np.asarray(x_test)


@pytest.fixture(scope="module")
def drift_service(artifacts: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """v1 on one worker (one window) of 200 rows, PSI from 100 rows."""
    with model_service("v1", artifacts, log_dir, **WINDOW) as server:
        yield server.wait_ready(timeout=90)


def predict_in_batches(url: str, rows: np.ndarray, batch: int = 20) -> None:
    for start in range(0, len(rows), batch):
        resp = post(url + "/predict", {"instances": rows[start:start + batch].tolist()})
        assert resp.status_code == 200, resp.text


def drift_of(url: str) -> dict[str, Any]:
    resp = requests.get(url + "/drift", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_drift_follows_the_evaluation_rows_then_a_shifted_column(
        drift_service: ServerProcess, evaluation_rows: np.ndarray, features: list[str]) -> None:
    url = drift_service.url
    before = drift_of(url)
    assert before["available"] is True and before["window"]["rows"] == 0
    assert all(c["psi"] is None and c["reading"] == "unknown" for c in before["columns"])

    predict_in_batches(url, evaluation_rows)  # the rows the reference was taken from
    same = drift_of(url)
    assert same["window"]["rows"] == len(evaluation_rows) == same["reference_rows"]
    assert {c["name"] for c in same["columns"]} == set(features)
    assert max(c["psi"] for c in same["columns"]) < 0.001
    for bin_ in same["columns"][0]["bins"]:
        assert bin_["live"] == pytest.approx(bin_["reference"], abs=1e-5)

    shifted = evaluation_rows.copy()
    shifted[:, features.index(SHIFTED)] *= 1.5
    predict_in_batches(url, np.concatenate([shifted, shifted]))
    after = drift_of(url)
    assert 180 <= after["window"]["rows"] <= 220  # about the last 200 rows: only shifted ones
    top, *rest = after["columns"]
    assert top["name"] == SHIFTED and top["psi"] > 0.25 and top["reading"] == "major"
    assert [c["psi"] for c in after["columns"]] == sorted(
        (c["psi"] for c in after["columns"]), reverse=True)
    assert max(c["psi"] for c in rest) < 0.25
    top_bin = top["bins"][-1]
    assert top_bin["bin"].startswith(">=") and top_bin["live"] > 3 * top_bin["reference"]

    metrics = scrape(url)
    psi = {labels["column"]: value for labels, value in metrics["model_input_drift_psi"]}
    assert psi[SHIFTED] == pytest.approx(top["psi"], abs=1e-6)
    sent = 3 * len(evaluation_rows)
    assert sample_sum(metrics, "model_input_drift_rows_total", column=SHIFTED, version="v1") == sent
    assert sample_sum(metrics, "model_input_drift_reference_share", column=SHIFTED) == \
        pytest.approx(1.0, abs=1e-4)
    assert sample_sum(metrics, "model_input_drift_window_rows") == after["window"]["rows"]


def test_refused_rows_are_not_counted(drift_service: ServerProcess) -> None:
    before = drift_of(drift_service.url)["window"]["rows"]
    resp = post(drift_service.url + "/predict", {"instances": [["not a number"] * 30]})
    assert resp.status_code == 422
    assert drift_of(drift_service.url)["window"]["rows"] == before


@pytest.fixture(scope="module")
def old_artifacts(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 as packaged before reference distributions were recorded."""
    root = tmp_path_factory.mktemp("old-artifacts")
    shutil.copytree(artifacts / "v1", root / "v1")
    metadata = json.loads((root / "v1" / "metadata.json").read_text())
    del metadata["input_reference"]
    (root / "v1" / "metadata.json").write_text(json.dumps(metadata))
    return root


def test_an_old_artifact_serves_and_reports_drift_unavailable(
        old_artifacts: Path, log_dir: Path, evaluation_rows: np.ndarray) -> None:
    with model_service("v1", old_artifacts, log_dir, WEB_CONCURRENCY="1") as server:
        server.wait_ready(timeout=90)
        predict_in_batches(server.url, evaluation_rows[:40])
        drift = drift_of(server.url)
        assert drift["available"] is False and drift["columns"] == []
        assert "package it again" in drift["reason"]
        metrics = scrape(server.url)
        assert "model_input_drift_psi" not in metrics
        assert sample_sum(metrics, "model_predictions_total") == 40


def test_the_package_stores_references_of_every_column_type(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    project = build_example("churn", tmp_path_factory.mktemp("churn") / "churn")
    art = tmp_path_factory.mktemp("churn-artifacts")
    assert main(["package", str(project / "model.skops"), "--version", "churn-v1", "--eval",
                 str(project / "eval.csv"), "--target", "churned", "--trust", CHURN_TRUST,
                 "--artifacts", str(art)]) == 0
    reference = json.loads((art / "churn-v1" / "metadata.json").read_text())["input_reference"]
    columns = {c["name"]: c for c in reference["columns"]}
    assert reference["rows"] == 500
    assert list(columns) == ["tenure_months", "monthly_charges", "support_calls", "plan",
                             "region", "autopay"]
    for column in columns.values():
        assert sum(column["shares"]) == pytest.approx(1.0, abs=1e-5), column["name"]
    tenure = columns["tenure_months"]
    assert tenure["type"] == "integer" and len(tenure["edges"]) == 9
    assert all(float(e).is_integer() for e in tenure["edges"])  # integer edges: no empty bins
    calls = columns["support_calls"]  # Poisson(1.5): few values, repeated deciles merged
    assert calls["edges"] == sorted(set(calls["edges"])) and len(calls["edges"]) < 9
    charges = columns["monthly_charges"]  # a number with missing values: a (missing) bin
    assert charges["type"] == "number" and charges["missing"] is True
    assert 0 < charges["shares"][-1] < 0.15
    assert columns["plan"]["categories"] == ["basic", "plus", "pro"]
    region = columns["region"]
    assert region["categories"] == ["east", "north", "south", "west"] and region["missing"]
    assert region["shares"][4] == 0.0 and 0 < region["shares"][5] < 0.2  # (other), (missing)
    assert columns["autopay"]["type"] == "boolean" and columns["autopay"]["edges"] == [0.5]
    assert OTHER and MISSING  # the bin names of the counters (see /drift)


@pytest.mark.parametrize("env, variable", [
    ({"MODEL_DRIFT_WINDOW_ROWS": "lots"}, "MODEL_DRIFT_WINDOW_ROWS"),
    ({"MODEL_DRIFT_WINDOW_ROWS": "5"}, "MODEL_DRIFT_WINDOW_ROWS"),
    ({"MODEL_DRIFT_WINDOW_ROWS": "-1"}, "MODEL_DRIFT_WINDOW_ROWS"),
    ({"MODEL_DRIFT_WINDOW_S": "1"}, "MODEL_DRIFT_WINDOW_S"),
    ({"MODEL_DRIFT_MIN_ROWS": "0"}, "MODEL_DRIFT_MIN_ROWS"),
    ({"MODEL_DRIFT_WINDOW_ROWS": "100", "MODEL_DRIFT_MIN_ROWS": "101"}, "MODEL_DRIFT_MIN_ROWS"),
])
def test_drift_settings_are_validated_naming_the_variable(env: dict[str, str],
                                                          variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ModelServiceConfig.from_env(env)


def test_drift_settings_defaults_and_off() -> None:
    default = ModelServiceConfig.from_env({}).drift
    assert (default.window_rows, default.window_s, default.min_rows) == (5000, 3600.0, 500)
    small = ModelServiceConfig.from_env({"MODEL_DRIFT_WINDOW_ROWS": "200"}).drift
    assert small.min_rows == 200  # the default minimum never exceeds the window
    assert ModelServiceConfig.from_env({"MODEL_DRIFT_WINDOW_ROWS": "0"}).drift.window_rows == 0


def test_a_busy_worker_bins_a_uniform_sample_of_its_requests(
        artifacts: Path, evaluation_rows: np.ndarray) -> None:
    """Past SAMPLE_PER_FLUSH requests in a flush, a uniform sample is binned: its shares estimate
    the traffic's. The first half of each second's requests carry a row whose shifted column is in
    the bottom bin, the second half one in the top bin (so taking the first requests would show
    no top bin at all); the binned count of the top bin stays within a 99.9 % binomial bound of
    one half, over 50 seeded flushes."""
    from prometheus_client import CollectorRegistry
    from scipy.stats import binom

    from metrics.model import ModelMetrics
    from model_service.artifacts import load_artifact
    from model_service.drift import SAMPLE_PER_FLUSH, DriftMonitor, DriftSettings

    model = load_artifact(artifacts, "v1")
    column = list(model.schema.names).index(SHIFTED)
    low, high = evaluation_rows[:1].copy(), evaluation_rows[:1].copy()
    low[0, column], high[0, column] = -1e9, 1e9
    reference = model.reference
    start = int(reference.starts[column])
    size = reference.columns[column].size
    monitor = DriftMonitor(DriftSettings(window_rows=100_000, min_rows=1),
                           ModelMetrics(CollectorRegistry()))
    monitor._rng.seed(7)
    lo, hi = binom.ppf([0.0005, 0.9995], SAMPLE_PER_FLUSH, 0.5)
    for _ in range(50):
        before, _ = monitor._tracked.window.totals() if monitor._tracked else (None, 0)
        for i in range(1000):
            monitor.observe(model, high if i >= 500 else low)
        monitor.flush()
        counts, _ = monitor._tracked.window.totals()
        added = counts if before is None else counts - before
        column_counts = added[start:start + size]
        assert column_counts.sum() == SAMPLE_PER_FLUSH  # one row a request, a sample of them
        assert lo <= column_counts[-1] <= hi and column_counts[-1] + column_counts[0] == \
            SAMPLE_PER_FLUSH
