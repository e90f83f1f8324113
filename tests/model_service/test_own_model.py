"""A user's own models: packaged by the command line, served by a real model service.

The example projects (``python -m examples.churn``: a classifier on a DataFrame with integer,
number, category and boolean columns and missing values; ``python -m examples.diabetes``: a
regressor) are built, packaged with ``python -m model_service package`` and served over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from model_service.__main__ import main
from model_service.artifacts import load_artifact
from tests.model_service.conftest import error_of, post
from tests.servers import ROOT, ServerProcess, model_service, wait_until

CHURN_TRUST = "numpy.dtype"
DIABETES_TRUST = "sklearn.tree._tree.Tree,numpy.dtype"
GOOD = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 3, "plan": "basic",
        "region": "south", "autopay": False}


def build_example(name: str, out: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", f"examples.{name}", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("projects")
    return {name: build_example(name, root / name) for name in ("churn", "diabetes")}


@pytest.fixture(scope="module")
def registry(projects: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both examples packaged by the command line into one artifacts folder."""
    art = tmp_path_factory.mktemp("own-artifacts")
    churn, diabetes = projects["churn"], projects["diabetes"]
    assert main(["package", str(churn / "model.skops"), "--version", "churn-v1", "--eval",
                 str(churn / "eval.csv"), "--target", "churned", "--trust", CHURN_TRUST,
                 "--description", "churn, logistic regression", "--artifacts", str(art)]) == 0
    assert main(["package", str(diabetes / "model.joblib"), "--version", "diabetes-v1",
                 "--eval", str(diabetes / "eval.csv"), "--target", "progression",
                 "--trust", DIABETES_TRUST, "--artifacts", str(art)]) == 0
    return art


@pytest.fixture(scope="module")
def churn_service(registry: Path, log_dir: Path) -> Iterator[ServerProcess]:
    with model_service("churn-v1", registry, log_dir, MODEL_ADMIN_TOKEN="own-secret") as server:
        yield server.wait_ready(timeout=90)


@pytest.fixture(scope="module")
def diabetes_service(registry: Path, log_dir: Path) -> Iterator[ServerProcess]:
    with model_service("diabetes-v1", registry, log_dir) as server:
        yield server.wait_ready(timeout=90)


def eval_records(project: Path, target: str, n: int) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The first ``n`` evaluation rows as JSON records (missing values as null) and as read."""
    table = pd.read_csv(project / "eval.csv").drop(columns=[target]).iloc[:n]
    records = json.loads(table.to_json(orient="records"))
    return records, table


def test_the_package_records_task_schema_metrics_and_fingerprint(registry: Path,
                                                                 projects: dict[str, Path]) -> None:
    churn = json.loads((registry / "churn-v1" / "metadata.json").read_text())
    assert churn["task"] == "classification" and churn["classes"] == ["no", "yes"]
    assert churn["model_format"] == "skops" and churn["trusted_types"] == ["numpy.dtype"]
    columns = {c["name"]: c for c in churn["input_schema"]["columns"]}
    assert churn["input_schema"]["frame"] is True
    assert [c["name"] for c in churn["input_schema"]["columns"]] == [
        "tenure_months", "monthly_charges", "support_calls", "plan", "region", "autopay"]
    assert (columns["tenure_months"]["type"], columns["monthly_charges"]["type"]) == (
        "integer", "number")
    assert columns["plan"] == {"name": "plan", "type": "category", "nullable": True,
                               "categories": ["basic", "plus", "pro"]}
    assert columns["autopay"] == {"name": "autopay", "type": "boolean", "nullable": False}
    assert columns["region"]["nullable"] is True  # the evaluation data has missing regions
    assert set(churn["heldout_metrics"]) == {"accuracy", "log_loss", "roc_auc"}
    assert 0.75 < churn["heldout_metrics"]["accuracy"] <= 1
    eval_bytes = (projects["churn"] / "eval.csv").read_bytes()
    assert churn["evaluation"]["rows"] == 500
    assert churn["evaluation"]["sha256"] == hashlib.sha256(eval_bytes).hexdigest()

    diabetes = json.loads((registry / "diabetes-v1" / "metadata.json").read_text())
    assert diabetes["task"] == "regression" and "classes" not in diabetes
    assert set(diabetes["heldout_metrics"]) == {"mae", "rmse", "r2"}
    assert diabetes["model_format"] == "skops"
    assert {c["type"] for c in diabetes["input_schema"]["columns"]} == {"number"}


def test_typed_records_and_arrays_get_the_pipelines_own_answers(
        churn_service: ServerProcess, registry: Path, projects: dict[str, Path]) -> None:
    records, table = eval_records(projects["churn"], "churned", 40)
    assert any(None in r.values() for r in records), "the rows must include missing values"
    model = load_artifact(registry, "churn-v1")
    expected, proba = model.predict(model.schema.from_table(table))

    by_name = post(churn_service.url + "/predict", {"instances": records})
    names = list(records[0])
    as_arrays = post(churn_service.url + "/predict",
                     {"instances": [[r[n] for n in names] for r in records]})

    for resp in (by_name, as_arrays):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["predictions"] == expected.tolist()
        assert set(body["predictions"]) <= {"yes", "no"}
        np.testing.assert_allclose(body["probabilities"], proba, rtol=1e-12)
        assert resp.headers["X-Model-Version"] == body["model_version"] == "churn-v1"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"tenure_months": "twelve"}, "column 'tenure_months' must be an integer or null, got a string"),
        ({"tenure_months": 1.5}, "column 'tenure_months' must be an integer or null, got a number"),
        ({"monthly_charges": True}, "column 'monthly_charges' must be a number or null, got a boolean"),
        ({"plan": 3}, "column 'plan' must be a string (seen: 'basic', 'plus', 'pro') or null"),
        ({"autopay": "yes"}, "column 'autopay' must be true or false, got a string"),
        ({"autopay": None}, "column 'autopay' must be true or false, got null"),
        ({"autopay": 1}, "column 'autopay' must be true or false, got a number"),
        ({"extra": 1}, "unknown feature(s) ['extra']"),
    ],
)
def test_every_bad_value_names_the_row_the_column_and_what_was_expected(
        churn_service: ServerProcess, change: dict[str, Any], expected: str) -> None:
    resp = post(churn_service.url + "/predict", {"instances": [GOOD, {**GOOD, **change}]})

    assert resp.status_code == 422
    message = error_of(resp)["message"]
    assert message.startswith("instances[1]") and expected in message


def test_missing_columns_wrong_widths_and_mixed_forms_are_refused(
        churn_service: ServerProcess) -> None:
    url = churn_service.url + "/predict"
    missing = {k: v for k, v in GOOD.items() if k != "plan"}
    cases = [
        ({"instances": [missing]}, "missing feature(s) ['plan']"),
        ({"instances": [[12, 70.5, 3]]}, "must be an array of 6 values"),
        ({"instances": [list(GOOD.values()), GOOD]}, "instances[1] is an object"),
        ({"instances": [[12, 70.5, 3, "basic", "south", "false"]]}, "column 'autopay'"),
    ]
    for body, expected in cases:
        resp = post(url, body)
        assert resp.status_code == 422, body
        assert expected in error_of(resp)["message"]
    assert post(url, {"instances": [GOOD]}).status_code == 200  # nothing changed


def test_a_category_the_model_never_saw_is_answered_by_the_pipeline(
        churn_service: ServerProcess) -> None:
    resp = post(churn_service.url + "/predict", {"instances": [{**GOOD, "plan": "platinum"}]})

    assert resp.status_code == 200  # OneHotEncoder(handle_unknown="ignore") takes it


def test_a_regressor_answers_numbers_and_no_probabilities(
        diabetes_service: ServerProcess, registry: Path, projects: dict[str, Path]) -> None:
    records, table = eval_records(projects["diabetes"], "progression", 25)
    model = load_artifact(registry, "diabetes-v1")
    expected, _ = model.predict(model.schema.from_table(table))

    resp = post(diabetes_service.url + "/predict", {"instances": records})

    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"predictions", "model_version"}
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-12)
    version = requests.get(diabetes_service.url + "/version", timeout=5).json()
    assert version["task"] == "regression" and version["version"] == "diabetes-v1"
    bad = post(diabetes_service.url + "/predict", {"instances": [{**records[0], "bmi": None}]})
    assert bad.status_code == 422 and "column 'bmi'" in error_of(bad)["message"]


def test_reload_swaps_a_matrix_model_for_a_dataframe_model(
        registry: Path, artifacts: Path, log_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(artifacts / "v1", registry / "v1", dirs_exist_ok=True)
    token = {"Authorization": "Bearer own-secret"}
    with model_service("v1", registry, log_dir, MODEL_ADMIN_TOKEN="own-secret",
                       WEB_CONCURRENCY="1") as server:
        server.wait_ready(timeout=90)
        swapped = post(server.url + "/admin/reload", {"version": "churn-v1"}, headers=token)
        assert swapped.status_code == 200 and swapped.json()["previous_version"] == "v1"
        resp = post(server.url + "/predict", {"instances": [GOOD]})
        assert resp.status_code == 200 and resp.json()["model_version"] == "churn-v1"


def test_list_and_show_describe_the_registry(registry: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--artifacts", str(registry)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["VERSION", "TASK", "DESCRIPTION", "CREATED", "METRIC", "SHA256"]
    churn_line = next(line for line in table if line.startswith("churn-v1"))
    sha = json.loads((registry / "churn-v1" / "metadata.json").read_text())["sha256"]
    assert "classification" in churn_line and "accuracy 0." in churn_line
    assert sha[:12] in churn_line
    assert "regression" in next(line for line in table if line.startswith("diabetes-v1"))

    assert main(["list", "--json", "--artifacts", str(registry)]) == 0
    listed = {entry["version"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert {"churn-v1", "diabetes-v1"} <= set(listed)
    assert listed["churn-v1"]["sha256"] == sha

    assert main(["show", "churn-v1", "--artifacts", str(registry)]) == 0
    shown = capsys.readouterr().out
    assert "plan" in shown and "category or null" in shown and "basic, plus, pro" in shown
    assert main(["show", "churn-v1", "--json", "--artifacts", str(registry)]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == sha
    assert main(["show", "v404", "--artifacts", str(registry)]) == 2


def test_a_version_is_never_overwritten(registry: Path, projects: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.read_bytes() for p in (registry / "diabetes-v1").iterdir()}
    churn = projects["churn"]

    code = main(["package", str(churn / "model.skops"), "--version", "diabetes-v1", "--eval",
                 str(churn / "eval.csv"), "--target", "churned", "--trust", CHURN_TRUST,
                 "--artifacts", str(registry)])

    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (registry / "diabetes-v1").iterdir()} == before
    assert not [p for p in registry.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_tampered_version_is_refused_by_the_service(
        registry: Path, log_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(registry / "churn-v1", tmp_path / "churn-v1")
    with open(tmp_path / "churn-v1" / "model.skops", "ab") as fh:
        fh.write(b"\0")
    with model_service("churn-v1", tmp_path, log_dir, WEB_CONCURRENCY="1") as server:
        def answers() -> bool:
            try:
                return requests.get(server.url + "/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(answers, 90)
        ready = requests.get(server.url + "/ready", timeout=5)
        assert ready.status_code == 503 and "sha256" in error_of(ready)["message"]


def _a_column_the_data_lacks(frame: pd.DataFrame) -> Any:
    return frame[["no such column"]]


def _save(tmp_path: Path, name: str, estimator: Any) -> Path:
    path = tmp_path / name
    joblib.dump(estimator, path)
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("not a model file", "does not load with joblib"),
        ("not fitted", "is not fitted"),
        ("columns do not match", "missing ['plan']"),
        ("no such target", "has no target column 'label'"),
        ("fails on the evaluation rows", "the pipeline fails on the evaluation rows"),
        ("untrusted skops types", "--trust numpy.dtype"),
        ("bad version label", "is not a version label"),
        ("unknown target class", "is not one of the model's classes"),
    ],
)
def test_packaging_refusals_say_what_to_do(
        case: str, expected: str, projects: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    churn = projects["churn"]
    model, target, version = churn / "model.skops", "churned", "v9"
    evaluation = churn / "eval.csv"
    trust = ["--trust", CHURN_TRUST]
    if case == "not a model file":
        model = tmp_path / "model.joblib"
        model.write_text("not a pickle")
    elif case == "not fitted":
        model = _save(tmp_path, "m.joblib", make_pipeline(StandardScaler(), LogisticRegression()))
    elif case == "columns do not match":
        evaluation = tmp_path / "eval.csv"
        pd.read_csv(churn / "eval.csv").drop(columns=["plan"]).to_csv(evaluation, index=False)
    elif case == "no such target":
        target = "label"
    elif case == "fails on the evaluation rows":
        broken = make_pipeline(FunctionTransformer(_a_column_the_data_lacks),
                               LogisticRegression())
        data = pd.read_csv(churn / "train.csv")
        broken.steps[-1][1].fit(np.zeros((4, 1)), ["no", "yes", "no", "yes"])
        broken.steps[0][1].fit(data.drop(columns=["churned"]))
        model = _save(tmp_path, "broken.joblib", broken)
    elif case == "untrusted skops types":
        trust = []
    elif case == "bad version label":
        version = "../v9"
    elif case == "unknown target class":
        evaluation = tmp_path / "eval.csv"
        pd.read_csv(churn / "eval.csv").replace({"churned": {"yes": "maybe"}}).to_csv(
            evaluation, index=False)
    art = tmp_path / "art"

    code = main(["package", str(model), "--version", version, "--eval", str(evaluation),
                 "--target", target, *trust, "--artifacts", str(art)])

    assert code == 2
    assert expected in capsys.readouterr().err
    assert not (art / version).exists()


def test_a_row_the_pipeline_refuses_is_a_422_naming_it_and_a_broken_model_a_500(
        projects: dict[str, Path], tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    from model_service.app import create_app
    from model_service.config import ModelServiceConfig
    from model_service.packager import Evaluation, package_model

    churn = projects["churn"]
    train = pd.read_csv(churn / "train.csv").dropna()
    strict = make_pipeline(
        ColumnTransformer([("plan", OneHotEncoder(handle_unknown="error"), ["plan"]),
                           ("numbers", "passthrough", ["tenure_months", "support_calls"])]),
        LogisticRegression(max_iter=1000),
    ).fit(train[["plan", "tenure_months", "support_calls"]], train["churned"])
    table = pd.read_csv(churn / "eval.csv")[["plan", "tenure_months", "support_calls", "churned"]]
    evaluation = Evaluation.from_frame(table.dropna(), "churned", {"source": "test"})
    package_model(strict, "strict", evaluation, tmp_path, trust=["numpy.dtype"])
    good = {"plan": "basic", "tenure_months": 3, "support_calls": 1}
    client = create_app(ModelServiceConfig(version="strict", artifacts=str(tmp_path))).test_client()

    refused = client.post("/predict", json={"instances": [good, {**good, "plan": "platinum"}]})

    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "model_refused"
    assert refused.get_json()["error"]["message"].startswith(
        "instances[1]: the model refused this row: Found unknown categories")
    assert client.post("/predict", json={"instances": [good]}).status_code == 200

    from tests.router.rollout.test_release_in_place import save_broken_version

    save_broken_version(tmp_path)  # loads, but expects 5 features where its schema has 30
    broken = create_app(ModelServiceConfig(version="v3", artifacts=str(tmp_path))).test_client()
    failed = broken.post("/predict", json={"instances": [[1.0] * 30]})
    assert failed.status_code == 500 and failed.get_json()["error"]["code"] == "internal_error"
