"""Shadow traffic between two regressors: agreement within a tolerance, differences recorded.

Two versions of the diabetes example (a user's regressor) are served by real model services; the
router mirrors every request to the candidate and counts each row as agreeing when
``|candidate - stable| <= abs_tol + rel_tol * |stable|``, as computed here offline.
"""

from __future__ import annotations

import json
import time
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_service.artifacts import load_artifact
from model_service.packager import Evaluation, load_user_model, package_model
from router.shadow import DEFAULT_TOLERANCE
from tests.router.helpers import metric, put_state
from tests.servers import ROOT, ServerProcess, model_service, router, settled, wait_until

pytestmark = pytest.mark.slow
TRUST = ["sklearn.tree._tree.Tree", "numpy.dtype"]
REQUESTS = 40
PROPAGATION_S = 1.0  # every router worker routes by a state change within 1 s


@pytest.fixture(scope="module")
def regressors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """diabetes-v1 (boosted trees, the example) and diabetes-v2 (ridge), and evaluation rows."""
    root = tmp_path_factory.mktemp("regressors")
    subprocess.run([sys.executable, "-m", "examples.diabetes", str(root / "project")], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    evaluation = Evaluation.from_csv(root / "project" / "eval.csv", "progression")
    art = root / "artifacts"
    package_model(load_user_model(root / "project" / "model.joblib"), "diabetes-v1", evaluation,
                  art, trust=TRUST)
    table = pd.read_csv(root / "project" / "eval.csv")
    ridge = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(
        table.drop(columns=["progression"]), table["progression"])
    package_model(ridge, "diabetes-v2", evaluation, art, trust=TRUST)
    return art, table.drop(columns=["progression"])


@pytest.fixture(scope="module")
def shadow_router(regressors: tuple[Path, pd.DataFrame], log_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    art, _ = regressors
    with model_service("diabetes-v1", art, log_dir) as v1, \
            model_service("diabetes-v2", art, log_dir) as v2:
        v1.wait_ready(90)
        v2.wait_ready(90)
        state = tmp_path_factory.mktemp("state") / "state.db"
        with router({"v1": v1.url, "v2": v2.url}, log_dir, str(state)) as front:
            yield front.wait_ready(60)


def test_mirrored_regressor_rows_agree_within_the_tolerance_as_computed_offline(
        shadow_router: ServerProcess, regressors: tuple[Path, pd.DataFrame]) -> None:
    art, table = regressors
    rows = json.loads(table.iloc[:REQUESTS].to_json(orient="values"))
    stable, _ = load_artifact(art, "diabetes-v1").predict(table.iloc[:REQUESTS])
    candidate, _ = load_artifact(art, "diabetes-v2").predict(table.iloc[:REQUESTS])
    tol = DEFAULT_TOLERANCE
    agree = int(np.count_nonzero(np.abs(candidate - stable)
                                 <= tol.abs_tol + tol.rel_tol * np.abs(stable)))
    assert 0 < agree < REQUESTS  # two genuinely different regressors
    put_state(shadow_router.url, "shadow", shadow_percent=100)
    time.sleep(PROPAGATION_S)  # until every router worker mirrors

    for row in rows:
        resp = requests.post(shadow_router.url + "/predict", json={"instances": [row]}, timeout=10)
        # slots v1 and v2 serve diabetes-v1 and diabetes-v2: answers and metrics name those
        assert resp.status_code == 200 and resp.headers["X-Model-Version"] == "diabetes-v1"
        assert set(resp.json()) == {"predictions", "model_version"}

    def compared() -> float:
        return metric(shadow_router.url, "router_shadow_value_diff_count",
                      stable="diabetes-v1", candidate="diabetes-v2")

    def mirrored() -> float:
        return metric(shadow_router.url, "router_shadow_requests_total", version="diabetes-v2")

    wait_until(lambda: mirrored() >= REQUESTS, timeout=30)
    assert mirrored() == REQUESTS
    counts = settled(lambda: (
        metric(shadow_router.url, "router_shadow_comparisons_total", result="agree"),
        metric(shadow_router.url, "router_shadow_comparisons_total", result="disagree"),
        compared()))
    assert counts == (agree, REQUESTS - agree, REQUESTS)
    assert metric(shadow_router.url, "router_shadow_requests_total", version="diabetes-v2",
                  outcome="invalid") == 0
