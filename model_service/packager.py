"""Packaging a user's fitted scikit-learn pipeline as an immutable, versioned artifact.

``package_model`` checks the pipeline (it loads, it is fitted, it predicts every evaluation row),
infers the task and the input schema, scores it on the evaluation data, records the evaluation
data's distribution of every input column (the reference live inputs are compared with, see
``model_service.reference``) and writes ``artifacts/<version>/``: the model file (skops by default, joblib on request) and
``metadata.json``. A version that exists is never overwritten. ``python -m model_service train``
packages the built-in example project through the same function.

    >>> package_model(pipeline, "v3", evaluation, target="churned",          # doctest: +SKIP
    ...               artifacts="artifacts", trust=["numpy.dtype"])
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.utils.validation import check_is_fitted

from model_service.artifacts import (
    CLASSIFICATION,
    FORMATS,
        REGRESSION,
    dump_model,
    load_folder,
    save_artifact,
)
from model_service.config import VERSION_LABEL
from model_service.reference import build_reference
from model_service.schema import Column, InputSchema, SchemaError, infer_column


class PackageError(Exception):
    """The pipeline, the evaluation data or the version cannot be packaged; says what to do."""


@dataclass(frozen=True)
class Evaluation:
    """Evaluation rows as read from CSV, the target column and a fingerprint of the file."""

    features: pd.DataFrame
    target: pd.Series
    fingerprint: dict[str, Any]

    @classmethod
    def from_csv(cls, path: str | Path, target: str) -> Evaluation:
        path = Path(path)
        try:
            raw = path.read_bytes()
            table = pd.read_csv(path)
        except FileNotFoundError:
            raise PackageError(f"evaluation file {path} does not exist") from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise PackageError(f"cannot read {path} as CSV with a header row: {exc}") from None
        if target not in table.columns:
            raise PackageError(f"{path} has no target column {target!r}; its columns are "
                               f"{list(table.columns)[:20]}; name the right one with --target")
        return cls.from_frame(table, target, {"file": path.name,
                                              "sha256": hashlib.sha256(raw).hexdigest()})

    @classmethod
    def from_frame(cls, table: pd.DataFrame, target: str, source: dict[str, Any]) -> Evaluation:
        if table[target].isna().any():
            row = int(np.flatnonzero(table[target].isna().to_numpy())[0])
            raise PackageError(f"evaluation row {row} has no value in the target column {target!r}")
        if len(table) < 2:
            raise PackageError("the evaluation data needs at least 2 rows to score the model")
        fingerprint = {**source, "rows": len(table), "columns": [str(c) for c in table.columns],
                       "target": target}
        return cls(table.drop(columns=[target]), table[target], fingerprint)


def load_user_model(path: str | Path, trust: Sequence[str] = ()) -> Any:
    """A fitted estimator saved with skops (``.skops``) or joblib/pickle (any other name)."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"model file {path} does not exist")
    if path.suffix == ".skops":
        import skops.io

        try:
            untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(trust))
            if untrusted:
                raise PackageError(
                    f"{path} holds types skops does not trust by default: {', '.join(untrusted)}; "
                    "check them, then confirm with --trust " + ",".join(untrusted))
            return skops.io.load(path, trusted=list(trust))
        except PackageError:
            raise
        except Exception as exc:  # noqa: BLE001 (any failure to read the file is the same refusal)
            raise PackageError(f"{path} does not load with skops: {exc}") from None
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # noqa: BLE001 (unpickling can raise anything)
        raise PackageError(f"{path} does not load with joblib ({type(exc).__name__}: {exc}); "
                           "save the fitted pipeline with joblib.dump or skops.io.dump") from None


def task_of(estimator: Any) -> str:
    if is_classifier(estimator):
        return CLASSIFICATION
    if is_regressor(estimator):
        return REGRESSION
    raise PackageError(f"{type(estimator).__name__} is neither a classifier nor a regressor; "
                       "package a scikit-learn estimator or a Pipeline ending in one")


def infer_schema(estimator: Any, evaluation: Evaluation) -> InputSchema:
    """Columns from what the pipeline was fitted on, types from the evaluation data."""
    given = [str(c) for c in evaluation.features.columns]
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is not None:
        names = [str(n) for n in fitted_names]
        missing = [n for n in names if n not in given]
        extra = [n for n in given if n not in names]
        if missing or extra:
            raise PackageError(
                "the evaluation columns do not match what the pipeline was fitted on: "
                + "; ".join(part for part in (
                    f"missing {missing}" if missing else "",
                    f"not used by the model {extra}" if extra else "") if part)
                + f"; the pipeline takes {names}")
    else:
        names = given
        width = getattr(estimator, "n_features_in_", None)
        if width is not None and width != len(names):
            raise PackageError(f"the pipeline takes {width} columns but the evaluation data has "
                               f"{len(names)} besides the target: {names[:20]}")
    columns = [infer_column(n, evaluation.features[n]) for n in names]
    return InputSchema(tuple(columns), frame=fitted_names is not None)


def _accepts_missing(estimator: Any, schema: InputSchema, sample: pd.DataFrame,
                     column: Column) -> bool:
    """Whether the pipeline predicts a row whose ``column`` is missing."""
    probe = sample.iloc[:1].copy()
    probe[column.name] = None
    try:
        probe_input = _as_nullable(schema, column).from_table(probe)
        estimator.predict(probe_input)
    except (ValueError, TypeError, SchemaError):
        return False
    return True


def _as_nullable(schema: InputSchema, column: Column) -> InputSchema:
    return InputSchema(tuple(Column(c.name, c.type, True, c.categories) if c == column else c
                             for c in schema.columns), schema.frame)


def with_missing_values(estimator: Any, schema: InputSchema, evaluation: Evaluation) -> InputSchema:
    """Mark nullable each column with missing values in the data, or that the pipeline accepts."""
    columns = []
    for column in schema.columns:
        if not column.nullable and _accepts_missing(estimator, schema, evaluation.features, column):
            column = Column(column.name, column.type, True, column.categories)
        columns.append(column)
    return InputSchema(tuple(columns), schema.frame)


def evaluate(estimator: Any, task: str, schema: InputSchema,
             evaluation: Evaluation) -> dict[str, float]:
    """Metrics on the evaluation rows: every row must predict."""
    try:
        inputs = schema.from_table(evaluation.features, label="evaluation row")
        predictions = np.asarray(estimator.predict(inputs))
        proba = np.asarray(estimator.predict_proba(inputs)) if task == CLASSIFICATION else None
    except SchemaError as exc:
        raise PackageError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 (the user's pipeline can raise anything)
        raise PackageError(f"the pipeline fails on the evaluation rows: {type(exc).__name__}: "
                           f"{str(exc)[:500]}") from None
    truth = evaluation.target.to_numpy()
    if task == REGRESSION:
        truth = truth.astype(np.float64)
        return {"mae": _r(mean_absolute_error(truth, predictions)),
                "rmse": _r(np.sqrt(mean_squared_error(truth, predictions))),
                "r2": _r(r2_score(truth, predictions))}
    classes = np.asarray(estimator.classes_)
    truth = _as_classes(truth, classes)
    assert proba is not None
    metrics = {"accuracy": _r(accuracy_score(truth, predictions)),
               "log_loss": _r(log_loss(truth, proba, labels=classes))}
    present = set(truth.tolist())
    if len(classes) == 2 and len(present) == 2:
        metrics["roc_auc"] = _r(roc_auc_score(truth == classes[1], proba[:, 1]))
    elif len(classes) > 2 and present == set(classes.tolist()):
        metrics["roc_auc"] = _r(roc_auc_score(truth, proba, multi_class="ovr", labels=classes))
    return metrics


def reference_of(schema: InputSchema, evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation data's distribution of every input column, binned as live inputs will be."""
    try:
        inputs = schema.from_table(evaluation.features, label="evaluation row")
        return build_reference(schema, inputs).to_json()
    except (SchemaError, ValueError) as exc:
        raise PackageError(f"cannot take reference distributions from the evaluation data: "
                           f"{exc}") from None


def _as_classes(truth: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The target column's values as values of ``classes`` (CSV gives numbers or strings)."""
    by_text = {str(c): c for c in classes.tolist()}
    converted = []
    for i, value in enumerate(truth.tolist()):
        key = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        if key not in by_text:
            raise PackageError(f"evaluation row {i}: target {value!r} is not one of the model's "
                               f"classes {list(by_text)}")
        converted.append(by_text[key])
    return np.asarray(converted, dtype=classes.dtype)


def _r(value: Any) -> float:
    return round(float(value), 6)


def _json_values(values: Iterable[Any]) -> list[Any]:
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def package_model(estimator: Any, version: str, evaluation: Evaluation, artifacts: str | Path,
                  description: str = "", model_format: str = "skops",
                  trust: Sequence[str] = (), **extra: Any) -> Path:
    """Check ``estimator`` and write ``artifacts/<version>/``; raises PackageError with what to do."""
    if not VERSION_LABEL.fullmatch(version):
        raise PackageError(f"{version!r} is not a version label: 1 to 64 of A-Z a-z 0-9 . _ -, "
                           "starting with a letter or digit (e.g. v3)")
    if model_format not in FORMATS:
        raise PackageError(f"unknown format {model_format!r}; use one of {', '.join(FORMATS)}")
    folder = Path(artifacts) / version
    if folder.exists():
        raise PackageError(f"version {version} already exists in {artifacts}; versions are "
                           "immutable: package under a new version")
    task = task_of(estimator)
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise PackageError(f"the {type(estimator).__name__} is not fitted; call fit() on your "
                           "training data, save it, and package that file") from None
    schema = infer_schema(estimator, evaluation)
    metrics = evaluate(estimator, task, schema, evaluation)
    schema = with_missing_values(estimator, schema, evaluation)
    fields: dict[str, Any] = {
        "version": version, "description": description, "task": task,
        "input_schema": schema.to_json(), "feature_names": list(schema.names),
        "heldout_metrics": metrics, "evaluation": evaluation.fingerprint,
        "input_reference": reference_of(schema, evaluation), **extra,
    }
    if task == CLASSIFICATION:
        fields["classes"] = _json_values(np.asarray(estimator.classes_).tolist())
        fields["class_labels"] = [str(c) for c in fields["classes"]]
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=artifacts, prefix=f".{version}."))
    try:
        model_file = staging / FORMATS[model_format]
        try:
            dump_model(estimator, model_file, model_format)
        except Exception as exc:  # noqa: BLE001 (a serialiser's refusal, whatever its type)
            raise PackageError(f"{model_format} cannot save this pipeline ({type(exc).__name__}: "
                               f"{exc}); package it with --format joblib") from None
        if model_format == "skops":
            fields["trusted_types"] = _confirmed_types(model_file, trust)
        save_artifact(estimator, staging, model_format, model_file=model_file, **fields)
        try:
            load_folder(staging, version)  # as the service will load it
        except Exception as exc:  # noqa: BLE001
            raise PackageError(f"the packaged version does not load back: {exc}") from None
        try:
            os.rename(staging, folder)  # fails if the version appeared meanwhile
        except OSError:
            raise PackageError(f"version {version} already exists in {artifacts}; versions are "
                               "immutable: package under a new version") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _confirmed_types(model_file: Path, trust: Sequence[str]) -> list[str]:
    """The types skops needs trusted to load the file: each must be confirmed with --trust."""
    import skops.io

    needed = sorted(skops.io.get_untrusted_types(file=model_file))
    unconfirmed = [t for t in needed if t not in set(trust)]
    if unconfirmed:
        raise PackageError(
            "loading this pipeline with skops needs these types trusted: "
            f"{', '.join(unconfirmed)}; check that each is one you expect in your pipeline, then "
            f"confirm with --trust {','.join(unconfirmed)} (or package with --format joblib)")
    return needed
