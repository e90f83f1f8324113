"""Training: reproducible from source, metadata that vouches for the file, two genuinely different models."""

from __future__ import annotations

import json
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.ensemble import BaseEnsemble
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from model_service.__main__ import main
from model_service.artifacts import file_sha256, load_artifact
from model_service.training import train_version


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both versions trained a second time, into another folder."""
    root = tmp_path_factory.mktemp("retrained")
    assert main(["train", "--artifacts", str(root)]) == 0
    return root


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_two_trainings_predict_identically(
    artifacts: Path, retrained: Path, dataset: Any, version: str
) -> None:
    first = load_artifact(artifacts, version).pipeline.predict_proba(dataset.data)
    second = load_artifact(retrained, version).pipeline.predict_proba(dataset.data)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_two_trainings_write_the_same_bytes(artifacts: Path, retrained: Path, version: str) -> None:
    """Reproducible artifacts: every build of a version (each Heroku slug) has one sha256."""
    first = json.loads((artifacts / version / "metadata.json").read_text())
    second = json.loads((retrained / version / "metadata.json").read_text())

    assert first["model_file"] == second["model_file"] == "model.skops"
    assert first["sha256"] == second["sha256"] == file_sha256(retrained / version / "model.skops")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_metadata_describes_the_artifact(
    artifacts: Path, features: list[str], version: str
) -> None:
    folder = artifacts / version
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["version"] == version
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    assert meta["python_version"] == platform.python_version()
    assert meta["sklearn_version"] == sklearn.__version__
    assert meta["joblib_version"] == joblib.__version__
    assert meta["feature_names"] == features and len(features) == 30
    assert meta["classes"] == meta["class_labels"] == ["benign", "malignant"]
    assert meta["task"] == "classification" and meta["model_format"] == "skops"
    assert meta["rows"]["train"] + meta["rows"]["test"] == 569
    assert meta["rows"]["test"] == pytest.approx(569 * 0.25, abs=1)
    assert 0.9 < meta["heldout_metrics"]["accuracy"] <= 1.0
    assert 0.95 < meta["heldout_metrics"]["roc_auc"] <= 1.0
    assert meta["sha256"] == file_sha256(folder / meta["model_file"])


def test_versions_are_genuinely_different_models(artifacts: Path, dataset: Any) -> None:
    v1 = load_artifact(artifacts, "v1").pipeline
    v2 = load_artifact(artifacts, "v2").pipeline
    assert isinstance(v1, Pipeline) and isinstance(v2, Pipeline)
    assert isinstance(v1[-1], LogisticRegression)
    ensemble = v2[-1]
    assert isinstance(ensemble, BaseEnsemble)
    trees = np.ravel(ensemble.estimators_)
    assert len(trees) > 1
    assert all(isinstance(t, DecisionTreeClassifier | DecisionTreeRegressor) for t in trees)
    assert (v1.predict(dataset.data) != v2.predict(dataset.data)).any()
    assert not np.allclose(v1.predict_proba(dataset.data), v2.predict_proba(dataset.data))


def test_unknown_version_is_refused_with_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="v1, v2"):
        train_version("v9", tmp_path)
    assert main(["train", "--version", "v9", "--artifacts", str(tmp_path)]) == 2
    assert "example versions v1, v2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_train_one_version_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--version", "v1", "--artifacts", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
    assert "v1:" in capsys.readouterr().out


def test_an_artifacts_folder_that_cannot_be_written_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["train", "--version", "v1", "--artifacts", str(blocker / "artifacts")]) == 2
    assert "cannot write the artifacts" in capsys.readouterr().err
