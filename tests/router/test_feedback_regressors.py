"""Feedback for regressors: values joined to both versions under shadow, MAE and RMSE per version.

Two versions of the diabetes example (a user's regressor, packaged here) behind a one-worker
router with feedback on, mirroring every request to the candidate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from router.state import open_store
from tests.router.helpers import admin, metric, put_state
from tests.router.test_shadow_regressors import regressors  # noqa: F401  (the packaged models)
from tests.servers import ServerProcess, model_service, router, settled, wait_until

pytestmark = pytest.mark.slow
TOKEN = "feedback-secret"
ROWS = 12


@pytest.fixture(scope="module")
def feedback_stack(regressors: tuple[Path, pd.DataFrame], log_dir: Path,  # noqa: F811
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str,
                                                                                 str]]:
    art, _ = regressors
    with model_service("diabetes-v1", art, log_dir) as v1, \
            model_service("diabetes-v2", art, log_dir) as v2:
        v1.wait_ready(90)
        v2.wait_ready(90)
        state = f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
        with router({"v1": v1.url, "v2": v2.url}, log_dir, state, WEB_CONCURRENCY="1",
                    ROUTER_FEEDBACK_TOKEN=TOKEN) as front:
            yield front.wait_ready(60), state, v2.url


def test_values_give_each_regressor_its_mae_and_rmse_on_the_same_rows(
        feedback_stack: tuple[ServerProcess, str, str],
        regressors: tuple[Path, pd.DataFrame]) -> None:  # noqa: F811
    server, state_url, candidate_url = feedback_stack
    _, table = regressors
    body = {"instances": json.loads(table.iloc[:ROWS].to_json(orient="values"))}
    put_state(server.url, "shadow", shadow_percent=100)
    resp = requests.post(server.url + "/predict", json=body, timeout=10)
    assert resp.status_code == 200
    request_id, ours = resp.headers["X-Request-ID"], resp.json()["predictions"]
    theirs = requests.post(candidate_url + "/predict", json=body, timeout=10).json()["predictions"]
    store = open_store(state_url)
    try:
        assert wait_until(lambda: "shadow" in (store.recall_predictions(request_id) or {}))
    finally:
        store.close()
    truth = [100.0 + 7 * i for i in range(ROWS)]

    labels = requests.post(server.url + "/feedback", json={"request_id": request_id,
                                                            "labels": ["a"] * ROWS},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    huge = json.dumps({"request_id": request_id, "values": ["1e400"] * ROWS}).replace(
        '"1e400"', "1e400")  # a number literal that overflows to infinity
    nan = requests.post(server.url + "/feedback", data=huge, timeout=10, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    sent = requests.post(server.url + "/feedback", json={"request_id": request_id,
                                                          "values": truth},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    assert labels.status_code == 422  # a regressor takes values
    assert nan.status_code in (400, 422)  # 1e400 is no finite number
    assert sent.status_code == 200 and sent.json()["paired"], sent.text
    quality = admin("GET", server.url, "/admin/analysis").json()["quality"]
    for version, predicted in (("diabetes-v1", ours), ("diabetes-v2", theirs)):
        errors = [p - t for p, t in zip(predicted, truth, strict=True)]
        found = quality["versions"][version]
        assert found["rows"] == ROWS
        assert found["mae"] == pytest.approx(sum(map(abs, errors)) / ROWS, abs=1e-5)
        assert found["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / ROWS),
                                              abs=1e-5)
    (pair,) = quality["paired"]
    assert (pair["stable"], pair["candidate"], pair["rows"]) == ("diabetes-v1", "diabetes-v2",
                                                                 ROWS)
    assert pair["candidate_mae"] == quality["versions"]["diabetes-v2"]["mae"]
    abs_sum = settled(lambda: metric(server.url, "router_feedback_abs_error_total",
                                     version="diabetes-v1"))
    assert abs_sum == pytest.approx(sum(abs(p - t) for p, t in zip(ours, truth, strict=True)))
