"""The edge export: ``python -m model_service export --version V --format onnx OUT.onnx --eval E``.

Real artifacts (the built-in v1 and v2, the churn and diabetes example projects packaged by the
command line) are exported, and the written ONNX files are run here with onnxruntime against
the loaded model's own predictions; pipelines skl2onnx cannot convert, or that it converts into
something that answers differently, are refused with nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from examples.churn.__main__ import main as make_churn
from examples.diabetes.__main__ import main as make_diabetes
from model_service.__main__ import main
from model_service.artifacts import file_sha256, load_artifact
from model_service.training import TARGET, load_dataset

ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}
PROBABILITY_TOLERANCE = 1e-5  # what the export promises for classifiers


class Clip(TransformerMixin, BaseEstimator):
    """A user's own transformer: skl2onnx has no converter for it."""

    def fit(self, x: object, y: object = None) -> Clip:
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0.0, 1.0)


@pytest.fixture(scope="module")
def registry(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each version: (its artifacts root, its evaluation CSV); the examples packaged by the CLI."""
    root = tmp_path_factory.mktemp("export-projects")
    data, _, x_test, _, y_test = load_dataset()
    bc_eval = root / "breast-cancer-eval.csv"
    pd.DataFrame(x_test, columns=[str(n) for n in data.feature_names]).assign(
        **{TARGET: y_test}).to_csv(bc_eval, index=False)
    make_churn(root / "churn")
    make_diabetes(root / "diabetes")
    art = root / "artifacts"
    assert main(["package", str(root / "churn" / "model.skops"), "--version", "churn-v1",
                 "--eval", str(root / "churn" / "eval.csv"), "--target", "churned",
                 "--trust", "numpy.dtype", "--artifacts", str(art)]) == 0
    assert main(["package", str(root / "diabetes" / "model.joblib"), "--version", "diabetes-v1",
                 "--eval", str(root / "diabetes" / "eval.csv"), "--target", "progression",
                 "--trust", "sklearn.tree._tree.Tree,numpy.dtype", "--artifacts", str(art)]) == 0
    return {"v1": (artifacts, bc_eval), "v2": (artifacts, bc_eval),
            "churn-v1": (art, root / "churn" / "eval.csv"),
            "diabetes-v1": (art, root / "diabetes" / "eval.csv")}


def private_copy(root: Path, version: str, tmp_path: Path) -> Path:
    """An artifacts folder holding a copy of ``version`` (export rewrites its metadata.json)."""
    shutil.copytree(root / version, tmp_path / "artifacts" / version)
    return tmp_path / "artifacts"


def onnx_inputs(session: onnxruntime.InferenceSession, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """CSV rows as the ONNX model's declared inputs: one per column, or one matrix."""
    declared = session.get_inputs()
    if len(declared) == 1 and declared[0].name not in table.columns:
        return {declared[0].name: table.to_numpy(dtype=ONNX_DTYPES[declared[0].type])}
    feed = {}
    for arg in declared:
        values = table[arg.name]
        if arg.type == "tensor(string)":  # a missing category is "" in the exported model
            array = np.array([v if isinstance(v, str) else "" for v in values], dtype=object)
        else:
            array = values.to_numpy(dtype=ONNX_DTYPES[arg.type], na_value=np.nan)
        feed[arg.name] = array.reshape(-1, 1)
    return feed


@pytest.mark.parametrize("version", ["v1", "v2", "churn-v1", "diabetes-v1"])
def test_an_export_answers_like_the_service_and_is_recorded(
    registry: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    version: str,
) -> None:
    source, evaluation = registry[version]
    art = private_copy(source, version, tmp_path)
    model_sha = json.loads((art / version / "metadata.json").read_text())["sha256"]
    out = tmp_path / f"{version}.onnx"

    code = main(["export", "--version", version, "--format", "onnx", str(out), "--eval",
                 str(evaluation), "--artifacts", str(art)])

    assert code == 0, capsys.readouterr().err
    line = capsys.readouterr().out.strip()
    table = pd.read_csv(evaluation)
    assert line.startswith(f"{version}: ") and line.endswith(str(out)) and "\n" not in line
    assert f"on {len(table)} evaluation rows" in line
    record = json.loads((art / version / "metadata.json").read_text())["exports"]["onnx"]
    assert record["file"] == out.name and record["sha256"] == file_sha256(out)
    assert record["sha256"][:12] in line
    assert record["checked_rows"] == len(table)
    assert record["opset"] == max(o.version for o in onnx.load(out).opset_import if o.domain == "")
    assert {"skl2onnx_version", "onnxruntime_version", "created_at"} <= set(record)
    model = load_artifact(art, version)  # the model file still matches its sha256
    assert model.sha256 == model_sha

    rows = table.sample(n=12, random_state=0)
    if version == "churn-v1":  # missing categories and numbers among the rows checked here
        missing = table[table["region"].isna() | table["monthly_charges"].isna()].head(6)
        assert len(missing) == 6
        rows = pd.concat([rows, missing])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outputs = session.run(None, onnx_inputs(session, rows[list(model.schema.names)]))
    predictions, probabilities = model.predict(model.schema.from_table(rows))
    if model.task == "regression":
        np.testing.assert_allclose(outputs[0].reshape(-1), predictions, rtol=1e-5, atol=1e-4)
        assert record["max_abs_diff"] <= 1e-4 + 1e-5 * np.abs(predictions).max()
    else:
        assert outputs[0].tolist() == predictions.tolist()
        np.testing.assert_allclose(outputs[1], probabilities, rtol=0, atol=PROBABILITY_TOLERANCE)
        assert record["max_abs_diff"] <= PROBABILITY_TOLERANCE


def test_show_lists_the_export(registry: dict[str, tuple[Path, Path]], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    source, evaluation = registry["v1"]
    art = private_copy(source, "v1", tmp_path)
    assert main(["export", "--version", "v1", str(tmp_path / "edge.onnx"), "--eval",
                 str(evaluation), "--artifacts", str(art)]) == 0
    capsys.readouterr()

    assert main(["show", "v1", "--artifacts", str(art)]) == 0

    shown = capsys.readouterr().out
    assert f"export       onnx: edge.onnx, sha256 {file_sha256(tmp_path / 'edge.onnx')[:12]}" in shown


def package_own(pipeline: object, table: pd.DataFrame, tmp_path: Path) -> tuple[Path, Path]:
    """``pipeline`` saved with joblib and packaged as version ``own``; (artifacts, eval CSV)."""
    joblib.dump(pipeline, tmp_path / "own.joblib")
    evaluation = tmp_path / "eval.csv"
    table.to_csv(evaluation, index=False)
    art = tmp_path / "artifacts"
    assert main(["package", str(tmp_path / "own.joblib"), "--version", "own", "--eval",
                 str(evaluation), "--target", "target", "--format", "joblib",
                 "--artifacts", str(art)]) == 0
    return art, evaluation


def mixed_rows(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame({"a": rng.random(200), "b": rng.random(200),
                             "c": rng.choice(np.array(["x", "y", None], dtype=object), 200)})
    return features.assign(target=np.where(features["a"] + (features["c"] == "y") > 0.8,
                                           "yes", "no"))


def log_then_scale() -> Pipeline:
    return Pipeline([("prepare", ColumnTransformer([
        ("log", FunctionTransformer(np.log1p), ["a", "b"]),
        ("categories", OneHotEncoder(handle_unknown="ignore"), ["c"])])),
        ("model", LogisticRegression())])


def clipped_matrix() -> Pipeline:
    return Pipeline([("clip", Clip()), ("scale", StandardScaler()), ("model", LogisticRegression())])


@pytest.mark.parametrize(("build", "named"), [
    (log_then_scale, "step 'prepare/log' (FunctionTransformer)"),
    (clipped_matrix, "step 'clip' (Clip)"),
])
def test_a_pipeline_skl2onnx_cannot_convert_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], build: object, named: str,
) -> None:
    table = mixed_rows()
    if build is clipped_matrix:
        pipeline = clipped_matrix().fit(table[["a", "b"]].to_numpy(), table["target"])
        table = table[["a", "b", "target"]]
    else:
        pipeline = log_then_scale().fit(table.drop(columns=["target"]), table["target"])
    art, evaluation = package_own(pipeline, table, tmp_path)
    metadata = (art / "own" / "metadata.json").read_bytes()
    capsys.readouterr()

    code = main(["export", "--version", "own", str(tmp_path / "own.onnx"), "--eval",
                 str(evaluation), "--artifacts", str(art)])

    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot convert {named} to ONNX" in err and "nothing written" in err
    assert not (tmp_path / "own.onnx").exists()
    assert (art / "own" / "metadata.json").read_bytes() == metadata


def test_a_conversion_that_answers_differently_is_refused_with_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # No imputer: scikit-learn one-hot encodes a missing category as a category of its own,
    # while the exported model takes it as "", an unknown category.
    table = mixed_rows()
    pipeline = Pipeline([("prepare", ColumnTransformer([
        ("numbers", StandardScaler(), ["a", "b"]),
        ("categories", OneHotEncoder(handle_unknown="ignore"), ["c"])])),
        ("model", LogisticRegression())]).fit(table.drop(columns=["target"]), table["target"])
    art, evaluation = package_own(pipeline, table, tmp_path)
    metadata = (art / "own" / "metadata.json").read_bytes()
    capsys.readouterr()

    code = main(["export", "--version", "own", str(tmp_path / "own.onnx"), "--eval",
                 str(evaluation), "--artifacts", str(art)])

    err = capsys.readouterr().err
    assert code == 2
    assert "does not answer like scikit-learn" in err and "evaluation row" in err
    assert "that row has no value in 'c'" in err and "nothing written" in err
    assert not (tmp_path / "own.onnx").exists()
    assert (art / "own" / "metadata.json").read_bytes() == metadata


def own_cases() -> dict[str, tuple[object, pd.DataFrame, str]]:
    """Pipelines of other shapes: (fitted estimator, evaluation table, numeric ONNX type)."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(150, 3)) * [1.0, 10.0, 1000.0], columns=["a", "b", "c"])
    frame["n"] = rng.integers(0, 5, 150)
    target = (frame["a"] + frame["b"] / 10 + frame["n"] > 1).astype(int)
    holes = frame[["a", "b", "c"]].to_numpy(copy=True)
    holes[rng.random(holes.shape) < 0.1] = np.nan
    return {
        # one estimator on DataFrame columns: skl2onnx's estimators take a single tensor
        "trees on a frame": (GradientBoostingClassifier(n_estimators=20, random_state=0).fit(
            frame, target), frame.assign(target=target), "float"),
        # onnxruntime has no double Imputer: the matrix export falls back to float
        "imputer on a matrix": (make_pipeline(SimpleImputer(), LogisticRegression()).fit(
            holes, target), pd.DataFrame(holes, columns=["a", "b", "c"]).assign(target=target),
            "float"),
        "integer classes on a matrix": (make_pipeline(StandardScaler(), LogisticRegression()).fit(
            frame.to_numpy(float), target), frame.assign(target=target), "double"),
    }


@pytest.mark.parametrize("case", ["trees on a frame", "imputer on a matrix",
                                  "integer classes on a matrix"])
def test_pipelines_of_other_shapes_export_and_match(tmp_path: Path, case: str) -> None:
    estimator, table, number_type = own_cases()[case]
    art, evaluation = package_own(estimator, table, tmp_path)

    assert main(["export", "--version", "own", str(tmp_path / "own.onnx"), "--eval",
                 str(evaluation), "--artifacts", str(art)]) == 0

    record = json.loads((art / "own" / "metadata.json").read_text())["exports"]["onnx"]
    assert record["number_type"] == number_type
    model = load_artifact(art, "own")
    rows = table.drop(columns=["target"]).sample(n=20, random_state=1)
    session = onnxruntime.InferenceSession(str(tmp_path / "own.onnx"),
                                           providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, onnx_inputs(session, rows))
    predictions, expected = model.predict(model.schema.from_table(rows))
    assert labels.tolist() == predictions.tolist()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=PROBABILITY_TOLERANCE)


def test_an_evaluation_file_that_does_not_exist_is_refused(
    registry: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    source, _ = registry["v1"]

    code = main(["export", "--version", "v1", str(tmp_path / "v1.onnx"), "--eval",
                 str(tmp_path / "missing.csv"), "--artifacts", str(source)])

    assert code == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "v1.onnx").exists()
