"""Versioned model artifacts: a pickled pipeline plus ``metadata.json`` that vouches for it.

Loading checks the file's sha256 against the metadata *before* unpickling (unpickling runs code)
and refuses an artifact written by another scikit-learn version.

    >>> model = load_artifact("artifacts", "v1")           # doctest: +SKIP
    >>> model.metadata["sha256"]                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

from model_service.fastpath import compile_predict_proba

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"


class ArtifactError(Exception):
    """An artifact that is missing, tampered with, or built for another environment."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified pipeline and its metadata, ready to predict."""

    version: str
    pipeline: Any
    metadata: dict[str, Any]
    feature_names: tuple[str, ...]
    classes: np.ndarray  # class values as the pipeline returns them
    class_labels: tuple[str, ...]
    # The pipeline's predict_proba, or a compiled equivalent checked against it at load
    # (model_service.fastpath); ``prediction`` says which.
    predict_proba: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    prediction: str = "scikit-learn"

    @property
    def sha256(self) -> str:
        return str(self.metadata["sha256"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_artifact(pipeline: Any, folder: Path, **fields: Any) -> Path:
    """Write the pipeline and its metadata into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.")
    os.close(fd)
    try:
        joblib.dump(pipeline, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_path)
    except BaseException:
        os.unlink(tmp)
        raise
    metadata = {
        "version": fields.pop("version"),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python_version": platform.python_version(),
        "sklearn_version": sklearn.__version__,
        "joblib_version": joblib.__version__,
        "numpy_version": np.__version__,
        "model_file": MODEL_FILE,
        "sha256": file_sha256(model_path),
        **fields,
    }
    _atomic_write(folder / METADATA_FILE, json.dumps(metadata, indent=2).encode() + b"\n")
    return folder


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ArtifactError(
            f"no artifact at {folder}: run `python -m model_service train` first"
        ) from None
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); retrain the version") from None


def load_artifact(root: str | Path, version: str) -> LoadedModel:
    """Verify and load ``root/<version>/``; raises ArtifactError with what to do."""
    folder = Path(root) / version
    metadata = read_metadata(folder)
    if metadata.get("version") != version:
        raise ArtifactError(
            f"{folder} holds version {metadata.get('version')!r}, not {version!r}; retrain it"
        )
    model_path = folder / str(metadata.get("model_file", MODEL_FILE))
    if not model_path.is_file():
        raise ArtifactError(f"model file {model_path} is missing; retrain the version")
    actual = file_sha256(model_path)
    if actual != metadata.get("sha256"):
        raise ArtifactError(
            f"refusing to load {model_path}: its sha256 {actual[:12]}... does not match "
            f"metadata.json ({str(metadata.get('sha256'))[:12]}...); the file was modified "
            "after training; retrain with `python -m model_service train`"
        )
    if metadata.get("sklearn_version") != sklearn.__version__:
        raise ArtifactError(
            f"artifact {version} was written by scikit-learn {metadata.get('sklearn_version')} "
            f"but {sklearn.__version__} is installed; retrain with `python -m model_service train` "
            "or install the matching scikit-learn"
        )
    pipeline = joblib.load(model_path)
    classes = np.asarray(pipeline.classes_)
    predict_proba, prediction = compile_predict_proba(pipeline)
    labels = tuple(metadata.get("class_labels") or [str(c) for c in classes])
    return LoadedModel(
        version=version,
        pipeline=pipeline,
        metadata=metadata,
        feature_names=tuple(metadata["feature_names"]),
        classes=classes,
        class_labels=labels,
        predict_proba=predict_proba,
        prediction=prediction,
    )
