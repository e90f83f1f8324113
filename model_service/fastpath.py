"""Class probabilities without scikit-learn's per-call input checks, for pipelines it knows.

On one row, ``Pipeline.predict_proba`` spends most of its time checking its input (types,
feature names, finiteness, fitted state) in every step; the arithmetic itself takes microseconds.
The service checks every request once (``model_service.inputs``: a 2-D float64 matrix of the
right width, all finite), so for a pipeline made only of steps listed here it computes the same
numbers directly, in the same order of operations:

- ``StandardScaler``: ``(x - mean_) / scale_``;
- ``LogisticRegression`` with two classes: the logistic function of ``x @ coef_.T + intercept_``;
- ``GradientBoostingClassifier`` with two classes and a constant initial estimator: the trees'
  sum through scikit-learn's own compiled ``predict_stages``, then the logistic function.

A compiled plan is only used after it has given the same probabilities as the pipeline itself on
probe rows when the model loads; any other step, any difference, and the pipeline's own
``predict_proba`` is used. Artifacts are refused under another scikit-learn version (see
``model_service.artifacts``), so the attributes read here are those of the version that fitted them.

    >>> proba = compile_predict_proba(pipeline)(matrix)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import sklearn
from scipy.special import expit

if TYPE_CHECKING:
    from model_service.schema import InputSchema

log = logging.getLogger(__name__)

Proba = Callable[[np.ndarray], np.ndarray]
Step = Callable[[np.ndarray], np.ndarray]
PROBE_ROWS = 64


def _scaler(step: Any) -> Step | None:
    from sklearn.preprocessing import StandardScaler

    if type(step) is not StandardScaler:
        return None
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None

    def transform(x: np.ndarray) -> np.ndarray:
        out = x - mean if mean is not None else x.copy()
        if scale is not None:
            out /= scale
        return out

    return transform


def _logistic(step: Any) -> Step | None:
    from sklearn.linear_model import LogisticRegression

    if type(step) is not LogisticRegression or len(step.classes_) != 2 or step.coef_.shape[0] != 1:
        return None
    coef_t, intercept = step.coef_.T, step.intercept_

    def proba(x: np.ndarray) -> np.ndarray:
        p = (x @ coef_t + intercept).reshape(-1)
        expit(p, out=p)
        return np.stack([1 - p, p], axis=1)

    return proba


def _boosting(step: Any) -> Step | None:
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.ensemble._gradient_boosting import predict_stages

    if type(step) is not GradientBoostingClassifier or step.n_trees_per_iteration_ != 1:
        return None
    if not isinstance(step.init_, DummyClassifier) or step.init_.strategy != "prior":
        return None  # only a constant starting point can be computed once
    width = step.n_features_in_
    start = step._raw_predict_init(np.zeros((1, width), dtype=np.float32))[0].copy()
    estimators, rate, loss = step.estimators_, step.learning_rate, step._loss

    def proba(x: np.ndarray) -> np.ndarray:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        raw = np.tile(start, (len(x32), 1))
        predict_stages(estimators, x32, rate, raw)
        return np.asarray(loss.predict_proba(raw.ravel()))

    return proba


def _compile(pipeline: Any) -> Proba | None:
    from sklearn.pipeline import Pipeline

    if type(pipeline) is not Pipeline or not pipeline.steps:
        return None
    *transforms, (_, final) = pipeline.steps
    steps: list[Step] = []
    for _, step in transforms:
        compiled = _scaler(step)
        if compiled is None:
            return None
        steps.append(compiled)
    last = _logistic(final) or _boosting(final)
    if last is None:
        return None

    def predict_proba(x: np.ndarray) -> np.ndarray:
        for step in steps:
            x = step(x)
        return last(x)

    return predict_proba


def _probe_rows(pipeline: Any) -> np.ndarray:
    """Rows around the training data's scale (from the scaler when there is one), seeded."""
    first = pipeline.steps[0][1]
    width = int(pipeline.n_features_in_)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((PROBE_ROWS, width)) * 2
    mean = getattr(first, "mean_", None)
    scale = getattr(first, "scale_", None)
    if mean is not None and scale is not None:
        return np.asarray(mean + noise * scale, dtype=np.float64)
    return noise


def compile_predict_proba(pipeline: Any, schema: InputSchema | None = None) -> tuple[Proba, str]:
    """The fastest ``predict_proba`` that agrees with ``pipeline`` and how it was chosen.

    Only a pipeline fed a plain float matrix (every column a number, not fitted on a DataFrame)
    is compiled; any other gets its own ``predict_proba``.
    """

    def reference(x: Any) -> np.ndarray:
        with sklearn.config_context(assume_finite=True):
            return np.asarray(pipeline.predict_proba(x))

    if schema is not None and (schema.frame or not schema.all_numbers):
        return reference, "scikit-learn"
    try:
        compiled = _compile(pipeline)
    except (AttributeError, ImportError, TypeError, ValueError) as exc:
        log.info("no compiled prediction for this pipeline (%s); using scikit-learn's", exc)
        compiled = None
    if compiled is None:
        return reference, "scikit-learn"
    probe = _probe_rows(pipeline)
    try:
        agrees = all(
            np.array_equal(compiled(rows), reference(rows)) for rows in (probe, probe[:1])
        )
    except (ValueError, TypeError) as exc:
        log.warning("compiled prediction failed on probe rows (%s); using scikit-learn's", exc)
        agrees = False
    if not agrees:
        log.warning("compiled prediction differs from the pipeline's; using scikit-learn's")
        return reference, "scikit-learn"
    return compiled, "compiled"
