"""Export a packaged version to ONNX for edge runtimes, checked against scikit-learn before writing.

The pipeline is converted with skl2onnx and run with onnxruntime on the version's evaluation rows
(the CSV given to ``package``); the file is written only if the ONNX model answers what the
service answers on every row:

- classifiers: the same class for every row and every probability within 1e-5 (absolute);
- regressors: every prediction within 1e-4 + 1e-5 x |prediction| of scikit-learn's.

Inputs: a pipeline fitted on a DataFrame takes one ONNX input per column, named after it (numbers,
integers and booleans as ``float`` tensors, since skl2onnx joins columns in float32 anyway;
categories as ``string`` tensors); a pipeline fitted on a matrix takes one ``double`` tensor
(``float`` if skl2onnx or onnxruntime cannot run it in double), cast to float32 in front of tree
models, as scikit-learn's trees do. Classifiers output ``label`` and ``probabilities`` (a tensor,
one column per class). A missing number is NaN. A string tensor cannot hold a missing value: in
the exported model a missing category is the empty string ``""``, which the pipeline's string
imputers are converted to treat as missing; the check feeds the evaluation rows' missing
categories that way, so a pipeline that handles them otherwise is refused with the row. The export
is recorded in the version's ``metadata.json`` under ``exports.onnx``; the model file is untouched.

    >>> export_onnx("artifacts", "churn-v1", "churn.onnx", "eval.csv").summary()   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_service.artifacts import (
    METADATA_FILE,
    REGRESSION,
    ArtifactError,
    LoadedModel,
    atomic_write,
    load_artifact,
    read_metadata,
)
from model_service.schema import InputSchema, SchemaError, plain_value

PROBABILITY_TOLERANCE = 1e-5
REGRESSION_ABSOLUTE, REGRESSION_RELATIVE = 1e-4, 1e-5
MISSING_CATEGORY = ""
NUMBER_TYPES = {"double": np.float64, "float": np.float32}


class ExportError(Exception):
    """The version cannot be exported: not convertible, not matching, or unreadable input."""


@dataclass(frozen=True)
class OnnxExport:
    """A written ONNX file and what its check found."""

    version: str
    path: Path
    record: dict[str, Any]  # as stored under exports.onnx in metadata.json

    def summary(self) -> str:
        return (f"{self.version}: ONNX matches scikit-learn on {self.record['checked_rows']} "
                f"evaluation rows (largest difference {self.record['max_abs_diff']:.2g}); "
                f"sha256 {self.record['sha256'][:12]} -> {self.path}")


@dataclass(frozen=True)
class Check:
    """The ONNX model against the loaded model on the evaluation rows."""

    rows: int
    max_abs_diff: float
    mismatch: str | None  # what differs beyond the tolerance, at which row


def export_onnx(artifacts: str | Path, version: str, out: str | Path,
                evaluation_csv: str | Path) -> OnnxExport:
    """Convert, check and write ``out``; record it in the version's metadata. Raises ExportError."""
    try:
        model = load_artifact(artifacts, version)
    except ArtifactError as exc:
        raise ExportError(str(exc)) from None
    inputs = _evaluation_inputs(model, Path(evaluation_csv))
    onnx_model, payload, number_type = _convert(model)
    try:
        check = check_onnx(model, _session(payload), inputs, number_type)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 (the pipeline or onnxruntime can raise anything)
        raise ExportError(f"the evaluation rows do not run: {type(exc).__name__}: "
                          f"{str(exc)[:500]}; nothing written") from None
    if check.mismatch:
        raise ExportError(f"the ONNX model does not answer like scikit-learn: {check.mismatch}; "
                          "nothing written")
    out = Path(out)
    record = {
        "file": out.name,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "opset": max(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")),
        "number_type": number_type,
        "checked_rows": check.rows,
        "max_abs_diff": check.max_abs_diff,
        "tolerance": tolerance(model),
        **({"missing_category": MISSING_CATEGORY}
           if any(c.type == "category" for c in model.schema.columns) else {}),
        **{f"{name}_version": importlib.metadata.version(name)
           for name in ("skl2onnx", "onnx", "onnxruntime")},
    }
    _write(Path(artifacts) / version, model, out, payload, record)
    return OnnxExport(version, out, record)


def tolerance(model: LoadedModel) -> str:
    if model.task == REGRESSION:
        return f"|difference| <= {REGRESSION_ABSOLUTE:g} + {REGRESSION_RELATIVE:g} x |prediction|"
    return f"the same class, |probability difference| <= {PROBABILITY_TOLERANCE:g}"


def _evaluation_inputs(model: LoadedModel, path: Path) -> Any:
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise ExportError(f"evaluation file {path} does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read {path} as CSV with a header row: {exc}") from None
    if table.empty:
        raise ExportError(f"{path} has no rows: give the evaluation CSV the version was packaged with")
    try:
        return model.schema.from_table(table, label="evaluation row")
    except SchemaError as exc:
        raise ExportError(f"{path}: {exc}") from None


def _convert(model: LoadedModel) -> tuple[Any, bytes, str]:
    """The ONNX model, its bytes and its numeric tensor type: the first that converts and loads."""
    if not model.schema.frame and any(c.type == "category" for c in model.schema.columns):
        raise ExportError("the pipeline was fitted on a matrix holding strings, which one ONNX "
                          "tensor cannot carry; fit it on a DataFrame and package it again")
    candidates = ("float",) if model.schema.frame else ("double", "float")
    refusals: dict[str, str] = {}
    for number_type in candidates:
        try:
            onnx_model = _to_onnx(model, number_type)
            payload = onnx_model.SerializeToString()
            _session(payload)
        except ExportError as exc:
            refusals[number_type] = str(exc)
            continue
        return onnx_model, payload, number_type
    reasons = set(refusals.values())
    raise ExportError((reasons.pop() if len(reasons) == 1 else
                       "; ".join(f"as {t}: {r}" for t, r in refusals.items())) + "; nothing written")


def _to_onnx(model: LoadedModel, number_type: str) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    tensor = DoubleTensorType if number_type == "double" else FloatTensorType
    if model.schema.frame:
        initial_types = [(c.name, StringTensorType([None, 1]) if c.type == "category"
                          else tensor([None, 1])) for c in model.schema.columns]
    else:
        initial_types = [("input", tensor([None, len(model.schema.columns)]))]
    pipeline = _convertible_copy(model.pipeline, model.schema, number_type)
    options = None if model.task == REGRESSION else {id(pipeline): {"zipmap": False}}
    try:
        return convert_sklearn(pipeline, initial_types=initial_types, options=options)
    except Exception as exc:  # noqa: BLE001 (skl2onnx raises RuntimeError, TypeError, ...)
        raise ExportError(_conversion_refusal(model.pipeline, exc)) from None


def _convertible_copy(pipeline: Any, schema: InputSchema, number_type: str) -> Any:
    """A copy skl2onnx converts as the service computes (the loaded pipeline is not changed).

    String imputers take ``""`` as missing (a string tensor has no NaN). Numeric columns of a
    DataFrame go through an identity step first unless a ColumnTransformer picks them by name
    (skl2onnx's estimators take one tensor). With double inputs, tree models get a float32 cast in
    front: scikit-learn's trees compare float32 features, and skl2onnx's gradient-boosting
    converters run only in float.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from skl2onnx.sklapi import CastTransformer

    pipeline = copy.deepcopy(pipeline)
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline([("model", pipeline)])
    cast_trees = number_type == "double"
    if (schema.frame and len(schema.columns) > 1 and not isinstance(pipeline[0], ColumnTransformer)
            and all(c.type != "category" for c in schema.columns)):
        pipeline.steps.insert(0, ("columns", FunctionTransformer()))
    for _, step in _named_steps(pipeline):
        if (isinstance(step, SimpleImputer) and getattr(step, "statistics_", None) is not None
                and step.statistics_.dtype == object and not isinstance(step.missing_values, str)
                and pd.isna(step.missing_values)):
            step.missing_values = MISSING_CATEGORY
        if cast_trees and isinstance(step, Pipeline):
            for i in reversed(range(len(step.steps))):
                if _is_tree_model(step.steps[i][1]):
                    step.steps.insert(i, (f"float32_{i}", CastTransformer(dtype=np.float32)))
    return pipeline


def _is_tree_model(estimator: Any) -> bool:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import BaseDecisionTree

    return isinstance(estimator, (BaseDecisionTree, ExtraTreesClassifier, ExtraTreesRegressor,
                                  GradientBoostingClassifier, GradientBoostingRegressor,
                                  RandomForestClassifier, RandomForestRegressor))


def _named_steps(estimator: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every step of a pipeline, column transformer or feature union, with its path of names."""
    yield path, estimator
    for attribute in ("steps", "transformers_", "transformer_list"):
        for item in list(getattr(estimator, attribute, None) or ()):
            name, child = item[0], item[1]
            if not isinstance(child, str):  # "drop", "passthrough"
                yield from _named_steps(child, f"{path}/{name}" if path else str(name))


def _conversion_refusal(pipeline: Any, exc: Exception) -> str:
    """skl2onnx's error, first line, with the step it is about when a step's type is named."""
    reason = str(exc).strip().split("\n", 1)[0].split(" You may raise an issue", 1)[0].rstrip(".")
    named = re.search(r"type '<class '(?:[\w.]+\.)?(\w+)'>'", reason)
    culprit = named.group(1) if named else None
    steps = [(path, type(step).__name__) for path, step in _named_steps(pipeline)]
    for path, name in reversed(steps):
        if name == culprit or (culprit is None
                               and re.search(rf"\b(?:Sklearn)?{re.escape(name)}\b", reason)):
            where = f"step {path!r} ({name})" if path else name
            break
    else:
        where = "the pipeline"
    if isinstance(exc, RuntimeError) and "shape calculator" in reason:
        reason = ("skl2onnx has no converter for it (register one with skl2onnx's "
                  "update_registered_converter, or export a pipeline without that step)")
    return f"cannot convert {where} to ONNX: {type(exc).__name__}: {reason}"


def _session(payload: bytes) -> Any:
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 (onnxruntime's errors are its own pybind types)
        raise ExportError(f"onnxruntime cannot load the converted model: {exc}") from None


def onnx_feed(model: LoadedModel, inputs: Any, number_type: str) -> dict[str, np.ndarray]:
    """The pipeline's input (what ``InputSchema.from_table`` built) as the ONNX model's inputs."""
    dtype = NUMBER_TYPES[number_type]
    if not model.schema.frame:
        return {"input": np.asarray(inputs, dtype=dtype)}
    feed = {}
    for column in model.schema.columns:
        values = np.asarray(inputs[column.name])
        if column.type == "category":
            values = np.array([v if isinstance(v, str) else MISSING_CATEGORY for v in values],
                              dtype=object)
        else:
            values = values.astype(dtype)
        feed[column.name] = values.reshape(-1, 1)
    return feed


def check_onnx(model: LoadedModel, session: Any, inputs: Any, number_type: str) -> Check:
    """Run the ONNX model on ``inputs`` and compare with the loaded model's own predictions."""
    feed = onnx_feed(model, inputs, number_type)
    outputs = session.run(None, feed)
    predictions, probabilities = model.predict(inputs)
    rows = len(predictions)
    if model.task == REGRESSION:
        got = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        diff = np.abs(got - predictions)
        excess = diff / (REGRESSION_ABSOLUTE + REGRESSION_RELATIVE * np.abs(predictions))
        row = int(np.argmax(excess))
        mismatch = None
        if excess[row] > 1:
            mismatch = (f"largest difference {diff[row]:.3g} at evaluation row {row} (ONNX "
                        f"{got[row]:.8g}, scikit-learn {predictions[row]:.8g}), beyond "
                        f"{tolerance(model)}{_missing_note(model, feed, row)}")
        return Check(rows, float(diff.max()), mismatch)
    assert probabilities is not None
    labels, proba = np.asarray(outputs[0]).reshape(-1), np.asarray(outputs[1], dtype=np.float64)
    diff = np.abs(proba - probabilities)
    worst = int(np.argmax(diff.max(axis=1)))
    other = [i for i in range(rows) if _label_key(labels[i]) != _label_key(predictions[i])]
    mismatch = None
    if other:
        i = other[0]
        mismatch = (f"{len(other)} of {rows} evaluation rows get another class, first row {i} "
                    f"(ONNX {plain_value(labels[i])!r}, scikit-learn {plain_value(predictions[i])!r})"
                    f"{_missing_note(model, feed, i)}")
    elif diff[worst].max() > PROBABILITY_TOLERANCE:
        mismatch = (f"largest probability difference {diff[worst].max():.3g} at evaluation row "
                    f"{worst} (ONNX {np.round(proba[worst], 8).tolist()}, scikit-learn "
                    f"{np.round(probabilities[worst], 8).tolist()}), beyond {tolerance(model)}"
                    f"{_missing_note(model, feed, worst)}")
    return Check(rows, float(diff.max()), mismatch)


def _missing_note(model: LoadedModel, feed: dict[str, np.ndarray], row: int) -> str:
    """Which missing categories the row gave the ONNX model as ``""``, if any."""
    names = [c.name for c in model.schema.columns
             if c.type == "category" and feed[c.name][row, 0] == MISSING_CATEGORY]
    if not names:
        return ""
    return (f"; that row has no value in {', '.join(map(repr, names))}, which the ONNX model "
            f"takes as {MISSING_CATEGORY!r}: the pipeline must impute missing categories "
            "(a SimpleImputer) for them to match")


def _label_key(value: Any) -> Any:
    """A class as ONNX and scikit-learn both give it (ONNX turns booleans and integers into int64)."""
    value = plain_value(value)
    return value if isinstance(value, str) else float(value)


def _write(folder: Path, model: LoadedModel, out: Path, payload: bytes,
           record: dict[str, Any]) -> None:
    """``out``, then the version's metadata.json with the export recorded; both atomically."""
    try:
        metadata = read_metadata(folder)
    except ArtifactError as exc:
        raise ExportError(str(exc)) from None
    if metadata.get("sha256") != model.sha256:
        raise ExportError(f"version {model.version} changed while it was exported; export again")
    metadata["exports"] = {**(metadata.get("exports") or {}), "onnx": record}
    try:
        atomic_write(out, payload)
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        atomic_write(folder / METADATA_FILE, json.dumps(metadata, indent=2).encode() + b"\n")
    except OSError as exc:
        os.unlink(out)
        raise ExportError(f"cannot record the export in {folder / METADATA_FILE}: "
                          f"{exc.strerror or exc}; {out} removed") from None
