"""Compiled prediction: the same probabilities as the pipeline, or the pipeline itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from model_service import fastpath
from model_service.artifacts import load_artifact
from model_service.fastpath import compile_predict_proba


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_trained_versions_compile_to_identical_probabilities(
    artifacts: Path, dataset: Any, version: str
) -> None:
    model = load_artifact(artifacts, version)
    assert model.prediction == "compiled"
    rows = dataset.data
    assert np.array_equal(model.predict_proba(rows), model.pipeline.predict_proba(rows))
    for i in (0, 17, 568):  # one row at a time, as most requests come
        one = rows[i : i + 1]
        assert np.array_equal(model.predict_proba(one), model.pipeline.predict_proba(one))


def _fit(steps: list[tuple[str, Any]], dataset: Any, target: Any = None) -> Pipeline:
    return Pipeline(steps).fit(dataset.data, dataset.target if target is None else target)


@pytest.mark.parametrize(
    "steps",
    [
        [("scale", MinMaxScaler()), ("model", LogisticRegression(max_iter=2000))],
        [("scale", StandardScaler()), ("model", RandomForestClassifier(n_estimators=5))],
        [("model", GradientBoostingClassifier(n_estimators=5, init="zero"))],
    ],
    ids=["unknown-scaler", "unknown-model", "non-constant-start"],
)
def test_pipelines_it_does_not_know_use_scikit_learn(dataset: Any, steps: list[Any]) -> None:
    pipeline = _fit(steps, dataset)
    proba, how = compile_predict_proba(pipeline)
    assert how == "scikit-learn"
    assert np.array_equal(proba(dataset.data[:5]), pipeline.predict_proba(dataset.data[:5]))


def test_three_classes_use_scikit_learn(dataset: Any) -> None:
    three = np.digitize(dataset.data[:, 0], [12, 16])
    pipeline = _fit([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))],
                    dataset, three)
    assert compile_predict_proba(pipeline)[1] == "scikit-learn"


def test_a_boosting_pipeline_without_a_scaler_compiles(dataset: Any) -> None:
    pipeline = _fit([("model", GradientBoostingClassifier(n_estimators=20, random_state=0))], dataset)
    proba, how = compile_predict_proba(pipeline)
    assert how == "compiled"
    assert np.array_equal(proba(dataset.data), pipeline.predict_proba(dataset.data))


def test_a_compiled_plan_that_disagrees_is_not_used(
    dataset: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = _fit([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))],
                    dataset)
    right = fastpath._compile(pipeline)
    assert right is not None
    monkeypatch.setattr(fastpath, "_compile", lambda _: lambda x: right(x) + 1e-15)
    proba, how = compile_predict_proba(pipeline)
    assert how == "scikit-learn"
    assert np.array_equal(proba(dataset.data), pipeline.predict_proba(dataset.data))
