"""Training every model version from source into a versioned artifact.

Each version is a whole scikit-learn ``Pipeline`` (preprocessing and model together), trained on the
breast cancer data that ships inside scikit-learn, scored on a fixed held-out split, and written by
:func:`model_service.artifacts.save_artifact`.

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
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model_service.artifacts import save_artifact

SPLIT_SEED = 42
TEST_SIZE = 0.25


@dataclass(frozen=True)
class VersionSpec:
    """How one model version is built."""

    version: str
    description: str
    build: Callable[[], Pipeline]


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


VERSIONS: dict[str, VersionSpec] = {
    "v1": VersionSpec("v1", "standardised logistic regression", _v1),
    "v2": VersionSpec("v2", "gradient-boosted trees (150 x depth 3)", _v2),
}


def load_dataset():  # type: ignore[no-untyped-def]
    """The breast cancer data (569 rows, 30 named features) and its fixed train/test split."""
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=data.target
    )
    return data, x_train, x_test, y_train, y_test


def train_version(version: str, out_dir: str | Path) -> Path:
    """Train one version and write ``out_dir/<version>/``; returns the artifact folder."""
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; known versions: {', '.join(VERSIONS)}")
    spec = VERSIONS[version]
    data, x_train, x_test, y_train, y_test = load_dataset()
    pipeline = spec.build().fit(x_train, y_train)
    proba = pipeline.predict_proba(x_test)[:, 1]
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, pipeline.predict(x_test))), 6),
        "roc_auc": round(float(roc_auc_score(y_test, proba)), 6),
    }
    return save_artifact(
        pipeline,
        Path(out_dir) / version,
        version=version,
        description=spec.description,
        feature_names=[str(n) for n in data.feature_names],
        class_labels=[str(n) for n in data.target_names],
        heldout_metrics=metrics,
        rows={"train": int(len(x_train)), "test": int(len(x_test))},
        split={"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratified": True},
    )


def train_all(out_dir: str | Path, versions: list[str] | None = None) -> list[Path]:
    """Train the given versions (default: every known version)."""
    return [train_version(v, out_dir) for v in (versions or list(VERSIONS))]
