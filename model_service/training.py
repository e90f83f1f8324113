"""The built-in example project: two versions trained from source and packaged like any model.

Each version is a whole scikit-learn ``Pipeline`` (preprocessing and model together), trained on the
breast cancer data that ships inside scikit-learn to predict the diagnosis by name (``malignant`` or
``benign``), and packaged by :func:`model_service.packager.package_model` with the fixed held-out
split as its evaluation data, exactly as ``python -m model_service package`` packages a user's own.

    >>> from model_service.training import train_all
    >>> paths = train_all("artifacts")          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import numpy as np
import pandas as pd

from model_service.packager import Evaluation, package_model

SPLIT_SEED = 42
TEST_SIZE = 0.25
TARGET = "diagnosis"
# What skops must be told to trust to load these pipelines (the project's own, so confirmed here).
TRUSTED_TYPES = ("numpy.dtype", "sklearn.tree._tree.Tree")


@dataclass(frozen=True)
class VersionSpec:
    """How one model version is built (``training_labels`` may alter the labels it learns from)."""

    version: str
    description: str
    build: Callable[[], Pipeline]
    training_labels: Callable[[np.ndarray], np.ndarray] | None = None


def _v1() -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000, C=1.0))]
    )


def _v2() -> Pipeline:
    # Shallow boosted trees: a genuinely different model whose single-row predict stays sub-ms.
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("model", GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=0)),
        ]
    )


def _v3() -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000, C=0.1))]
    )


def _v4() -> Pipeline:
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("model", GradientBoostingClassifier(n_estimators=100, max_depth=2,
                                                 learning_rate=0.2, random_state=0)),
        ]
    )


# v3 and v4 are later releases of the same project, for walking through continuous releases.
VERSIONS: dict[str, VersionSpec] = {
    "v1": VersionSpec("v1", "standardised logistic regression", _v1),
    "v2": VersionSpec("v2", "gradient-boosted trees (150 x depth 3)", _v2),
    "v3": VersionSpec("v3", "standardised logistic regression, stronger regularisation (C=0.1)",
                      _v3),
    "v4": VersionSpec("v4", "gradient-boosted trees (100 x depth 2, learning rate 0.2)", _v4),
}


def load_dataset():  # type: ignore[no-untyped-def]
    """The breast cancer data (569 rows, 30 named features), diagnoses by name, fixed split."""
    data = load_breast_cancer()
    names = np.asarray(data.target_names)[data.target]
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, names, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=data.target
    )
    return data, x_train, x_test, y_train, y_test


def train_version(version: str, out_dir: str | Path) -> Path:
    """Train one version and package it as ``out_dir/<version>/``; returns the artifact folder."""
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; known versions: {', '.join(VERSIONS)}")
    return train_spec(VERSIONS[version], out_dir)


def train_spec(spec: VersionSpec, out_dir: str | Path) -> Path:
    """Train ``spec`` on the fixed split and package it as ``out_dir/<spec.version>/``.

    The evaluation data is the held-out split with its true labels, whatever ``spec`` trained on.
    """
    data, x_train, x_test, y_train, y_test = load_dataset()
    labels = y_train if spec.training_labels is None else spec.training_labels(y_train)
    pipeline = spec.build().fit(x_train, labels)
    table = pd.DataFrame(x_test, columns=[str(n) for n in data.feature_names])
    table[TARGET] = y_test
    evaluation = Evaluation.from_frame(table, TARGET, {"source": "scikit-learn breast cancer "
                                                       "data, held-out split"})
    return package_model(
        pipeline, spec.version, evaluation, out_dir, description=spec.description,
        trust=TRUSTED_TYPES,
        rows={"train": int(len(x_train)), "test": int(len(x_test))},
        split={"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratified": True},
    )


def train_all(out_dir: str | Path, versions: list[str] | None = None) -> list[Path]:
    """Train the given versions (default: every known version)."""
    return [train_version(v, out_dir) for v in (versions or list(VERSIONS))]
