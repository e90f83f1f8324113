"""The bad-quality scenario's v2: v1's model type, trained on mislabelled rows, clearly worse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from loadtest.harness import ensure_degraded_artifacts, missed_diagnoses
from model_service.artifacts import load_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return (ensure_degraded_artifacts(tmp_path_factory.mktemp("first")),
            ensure_degraded_artifacts(tmp_path_factory.mktemp("second")))


def _predict(root: Path, version: str) -> np.ndarray:
    loaded = load_folder(root / version, version)
    return np.asarray(loaded.pipeline.predict(load_breast_cancer().data))


def test_degraded_v2_is_v1s_model_type_and_clearly_worse_on_the_data_locust_sends(built: tuple[Path, Path]) -> None:
    data = load_breast_cancer()
    truth = np.asarray(data.target_names)[data.target]
    root = built[0]
    v1, v2 = load_folder(root / "v1", "v1"), load_folder(root / "v2", "v2")
    assert [type(s).__name__ for _, s in v1.pipeline.steps] == [type(s).__name__ for _, s in v2.pipeline.steps]
    accuracy = {v: float((_predict(root, v) == truth).mean()) for v in ("v1", "v2")}
    assert accuracy["v1"] > 0.95
    assert accuracy["v1"] - accuracy["v2"] >= 0.15, accuracy
    assert v2.metadata["heldout_metrics"]["accuracy"] < v1.metadata["heldout_metrics"]["accuracy"] - 0.15


def test_degraded_v2_is_built_the_same_every_time(built: tuple[Path, Path]) -> None:
    first, second = built
    for version in ("v1", "v2"):
        assert (_predict(first, version) == _predict(second, version)).all(), version


def test_missed_diagnoses_relabels_only_a_seeded_share_of_the_malignant_rows() -> None:
    labels = np.array(["malignant"] * 10 + ["benign"] * 10)
    relabelled = missed_diagnoses(labels, share=0.5, seed=3)
    assert (relabelled[10:] == "benign").all()
    assert (relabelled[:10] == "benign").sum() == 5
    assert (missed_diagnoses(labels, share=0.5, seed=3) == relabelled).all()
    assert (labels[:10] == "malignant").all()  # the input is left as it was
