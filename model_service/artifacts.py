"""Versioned model artifacts: a saved pipeline plus ``metadata.json`` that vouches for it.

A model file is written with skops (``model.skops``: its loader builds only the types the
metadata lists as trusted, and runs no other code) or joblib (``model.joblib``, for pipelines
skops cannot hold: unpickling runs code). Loading checks the file's sha256 against the metadata
*before* reading it and refuses an artifact written by another scikit-learn version.

    >>> model = load_artifact("artifacts", "v1")           # doctest: +SKIP
    >>> model.metadata["sha256"]                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

from model_service.fastpath import compile_predict_proba
from model_service.reference import Reference
from model_service.schema import InputSchema

log = logging.getLogger(__name__)
MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
FORMATS = {"skops": "model.skops", "joblib": "model.joblib"}
CLASSIFICATION, REGRESSION = "classification", "regression"


class ArtifactError(Exception):
    """An artifact that is missing, tampered with, or built for another environment."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified pipeline and its metadata, ready to predict."""

    version: str
    pipeline: Any
    metadata: dict[str, Any]
    schema: InputSchema
    task: str  # "classification" or "regression"
    classes: np.ndarray | None  # class values as the pipeline returns them (classifiers)
    class_labels: tuple[str, ...]
    # The pipeline's predict_proba (classifiers) or predict (regressors), or a compiled equivalent
    # checked against it at load (model_service.fastpath); ``prediction`` says which.
    estimate: Callable[[Any], np.ndarray] = field(repr=False)
    prediction: str = "scikit-learn"
    # Whether the pipeline predicts a plain row of its schema (zeros, false, the first category
    # seen). When it does, a row it refuses is the row's fault (a 422); when it does not, the
    # model itself is broken and its failures are server errors.
    answers_probe: bool = True
    # The evaluation data's input distributions (None: packaged before they were recorded).
    reference: Reference | None = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        return str(self.metadata["sha256"])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.schema.names

    def predict(self, inputs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (class values, or numbers for a regressor) and class probabilities.

        ``inputs`` is what :mod:`model_service.inputs` or :meth:`InputSchema.from_table` built.

            >>> predictions, probabilities = model.predict(matrix)   # doctest: +SKIP
        """
        out = self.estimate(inputs)
        if self.classes is None:
            return np.asarray(out, dtype=np.float64).reshape(-1), None
        return self.classes[out.argmax(axis=1)], out

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Class probabilities of a classifier (one column per value of ``classes``)."""
        if self.classes is None:
            raise TypeError(f"{self.version} is a regressor: it has no class probabilities")
        return self.estimate(inputs)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` in one step: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def dump_model(pipeline: Any, path: str | Path, model_format: str) -> None:
    """Write ``pipeline`` to ``path`` with skops or joblib; the same pipeline, the same bytes."""
    if model_format == "skops":
        import skops.io

        Path(path).write_bytes(_reproducible(skops.io.dumps(pipeline)))
    elif model_format == "joblib":
        joblib.dump(pipeline, path)
    else:
        raise ArtifactError(f"unknown model format {model_format!r}; use one of {sorted(FORMATS)}")


def _reproducible(archive: bytes) -> bytes:
    """A skops file (a zip archive) whose bytes depend only on the pipeline.

    skops names array members and memo keys after Python object ids and dates each member with
    the time of writing, so two packagings of one pipeline would differ in bytes and in sha256.
    Here the ids are renumbered in the order the schema first names them, and every member is
    dated 1980-01-01, as reproducible builds do; what the loader reads is otherwise unchanged.
    """
    source = zipfile.ZipFile(io.BytesIO(archive))
    schema = json.loads(source.read("schema.json"))
    renumbered: dict[int, int] = {}

    def number(old: int) -> int:
        return renumbered.setdefault(old, len(renumbered) + 1)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "__id__" and isinstance(value, int):
                    out[key] = number(value)
                elif key == "file" and isinstance(value, str) and value.removesuffix(".npy").isdigit():
                    out[key] = f"{number(int(value.removesuffix('.npy')))}.npy"
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    members = {"schema.json": json.dumps(walk(schema), indent=2).encode()}
    for member in source.infolist():
        stem = member.filename.removesuffix(".npy")
        if member.filename != "schema.json" and stem.isdigit() and int(stem) in renumbered:
            members[f"{renumbered[int(stem)]}.npy"] = source.read(member)
        elif member.filename != "schema.json":
            members[member.filename] = source.read(member)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name in sorted(members):
            target.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), members[name],
                            compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def library_versions() -> dict[str, str]:
    import pandas
    import skops

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "pandas": pandas.__version__, "joblib": joblib.__version__,
            "skops": skops.__version__}


def save_artifact(pipeline: Any, folder: Path, model_format: str = "joblib",
                  model_file: Path | None = None, **fields: Any) -> Path:
    """Write the pipeline (or move the already written ``model_file``) and its metadata.

    ``folder`` is created if needed; ``metadata.json`` is written last, so a folder without it
    is no version.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / FORMATS[model_format]
    if model_file is None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.")
        os.close(fd)
        try:
            dump_model(pipeline, tmp, model_format)
        except BaseException:
            os.unlink(tmp)
            raise
        model_file = Path(tmp)
    os.chmod(model_file, 0o644)
    os.replace(model_file, model_path)
    versions = library_versions()
    metadata = {
        "version": fields.pop("version"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python_version": versions["python"],
        "sklearn_version": sklearn.__version__,
        "joblib_version": joblib.__version__,
        "numpy_version": np.__version__,
        "library_versions": versions,
        "model_file": model_path.name,
        "model_format": model_format,
        "sha256": file_sha256(model_path),
        **fields,
    }
    atomic_write(folder / METADATA_FILE, json.dumps(metadata, indent=2).encode() + b"\n")
    return folder


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ArtifactError(
            f"no artifact at {folder}: package the version there with `python -m model_service "
            "package` (the built-in examples: `python -m model_service train`)"
        ) from None
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); package the version again") from None


def load_artifact(root: str | Path, version: str) -> LoadedModel:
    """Verify and load ``root/<version>/``; raises ArtifactError with what to do."""
    return load_folder(Path(root) / version, version)


def load_folder(folder: Path, version: str) -> LoadedModel:
    """Verify and load the artifact in ``folder``, which must hold ``version``."""
    metadata = read_metadata(folder)
    if metadata.get("version") != version:
        raise ArtifactError(
            f"{folder} holds version {metadata.get('version')!r}, not {version!r}; retrain it"
        )
    model_path = folder / str(metadata.get("model_file", MODEL_FILE))
    if not model_path.is_file():
        raise ArtifactError(f"model file {model_path} is missing; package the version again")
    actual = file_sha256(model_path)
    if actual != metadata.get("sha256"):
        raise ArtifactError(
            f"refusing to load {model_path}: its sha256 {actual[:12]}... does not match "
            f"metadata.json ({str(metadata.get('sha256'))[:12]}...); the file was modified "
            "after it was packaged; package the version again (versions are immutable: "
            "under a new name)"
        )
    if metadata.get("sklearn_version") != sklearn.__version__:
        raise ArtifactError(
            f"artifact {version} was written by scikit-learn {metadata.get('sklearn_version')} "
            f"but {sklearn.__version__} is installed; retrain with `python -m model_service train` "
            "or install the matching scikit-learn"
        )
    pipeline = _read_model(model_path, metadata)
    schema = (InputSchema.from_json(metadata["input_schema"]) if "input_schema" in metadata
              else InputSchema.numbers(metadata["feature_names"]))
    task = str(metadata.get("task", CLASSIFICATION))
    if task == CLASSIFICATION:
        classes: np.ndarray | None = np.asarray(pipeline.classes_)
        estimate, prediction = compile_predict_proba(pipeline, schema)
        labels = tuple(str(c) for c in classes)  # type: ignore[union-attr]
    else:
        classes, labels = None, ()
        estimate, prediction = reference_predict(pipeline), "scikit-learn"
    return LoadedModel(
        version=version,
        pipeline=pipeline,
        metadata=metadata,
        schema=schema,
        task=task,
        classes=classes,
        class_labels=labels,
        estimate=estimate,
        prediction=prediction,
        answers_probe=_answers_probe(version, schema, estimate),
        reference=_reference(version, metadata, schema),
    )


def _reference(version: str, metadata: dict[str, Any], schema: InputSchema) -> Reference | None:
    """The stored reference distributions; one that does not fit only turns drift off."""
    doc = metadata.get("input_reference")
    if doc is None:
        return None
    try:
        return Reference.from_json(doc, schema)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("version %s: reference distributions not usable (%s); input drift is not "
                    "measured for it", version, exc)
        return None


def _answers_probe(version: str, schema: InputSchema, estimate: Callable[[Any], np.ndarray]) -> bool:
    """Whether the model predicts one plain row of its schema without failing."""
    plain = {"number": 0.0, "integer": 0, "boolean": False, "category": ""}
    columns = {c.name: c.array([c.categories[0] if c.categories else plain[c.type]], str)
               for c in schema.columns}
    try:
        with np.errstate(all="ignore"):
            estimate(schema.frame_of(columns))
    except Exception as exc:  # noqa: BLE001 (whatever the pipeline raises, it fails the probe)
        log.warning("version %s fails on a plain row of its schema (%s: %s); its prediction "
                    "failures will be answered as server errors", version, type(exc).__name__, exc)
        return False
    return True


def _read_model(path: Path, metadata: dict[str, Any]) -> Any:
    """The pipeline in a file whose sha256 was checked; skops builds only the trusted types."""
    model_format = metadata.get("model_format", "joblib")
    if model_format == "joblib":
        return joblib.load(path)
    if model_format != "skops":
        raise ArtifactError(f"{path}: unknown model format {model_format!r}; repackage the version")
    import skops.io

    trusted = list(metadata.get("trusted_types", []))
    untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(trusted))
    if untrusted:
        raise ArtifactError(
            f"{path} needs types its metadata does not trust: {', '.join(untrusted)}; "
            "repackage the version and confirm them with --trust"
        )
    return skops.io.load(path, trusted=trusted)


def reference_predict(pipeline: Any) -> Callable[[Any], np.ndarray]:
    """A regressor's own predict."""

    def predict(x: Any) -> np.ndarray:
        with sklearn.config_context(assume_finite=True):
            return np.asarray(pipeline.predict(x))

    return predict
