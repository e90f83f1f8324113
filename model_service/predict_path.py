"""``POST /predict`` as a bare WSGI callable in front of the Flask app (which serves the rest).

A prediction is the request the service exists for, and on one row the model itself takes tens
of microseconds: the hot path does only what a prediction needs (read, validate, predict, count,
answer), in the same JSON shapes and errors as every other endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from common.body import read_environ_json_object
from common.last_resort import request_id
from common.errors import (
    INTERNAL_ERROR,
    APIError,
    ServiceUnavailable,
    Unprocessable,
    post_only,
    status_line,
)
from model_service.inputs import to_model_input

if TYPE_CHECKING:
    from model_service.app import ServiceState
    from model_service.artifacts import LoadedModel

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]
_INTERNAL = orjson.dumps(INTERNAL_ERROR.body())


class PredictPath:
    """WSGI middleware: answers ``POST /predict`` itself, passes everything else to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], state: ServiceState) -> None:
        self.app = app
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/predict":
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return post_only(start_response)
        state = self.state
        model = state.holder.current
        version = model.version if model is not None else state.config.version
        headers = [("Content-Type", "application/json")]
        if model is not None:  # errors too: the router counts them against the served version
            headers.append(("X-Model-Version", version))
        try:
            payload = self._predict(environ)
            status = 200
        except APIError as err:
            status, payload = err.status, orjson.dumps(err.body())
            headers += err.headers
        except Exception:  # the contract's JSON 500, never a bare traceback page
            log.exception("unhandled error in POST /predict (request id %s)", request_id(environ))
            status, payload = 500, _INTERNAL
            headers += [("Connection", "close"), ("X-Request-ID", request_id(environ))]
        headers.append(("Content-Length", str(len(payload))))
        state.metrics.request(version, status)
        start_response(status_line(status), headers)
        return [payload]

    def _predict(self, environ: dict[str, Any]) -> bytes:
        state = self.state
        cfg = state.config
        model = state.holder.current
        if model is None:
            raise ServiceUnavailable(f"model not loaded: {state.holder.load_error}", code="not_ready")
        doc = read_environ_json_object(environ, cfg.max_body_bytes)
        inputs = to_model_input(doc, model.schema, cfg.max_rows)
        if cfg.fault_latency_ms:
            time.sleep(cfg.fault_latency_ms / 1000.0)
        if cfg.fault_error_rate and state.rng.random() < cfg.fault_error_rate:
            raise APIError("injected fault (FAULT_ERROR_RATE)", code="injected_fault")
        started = time.perf_counter()
        predictions, proba = predict_checked(model, inputs)
        elapsed = time.perf_counter() - started
        state.metrics.predicted(model.version, len(predictions), elapsed)
        state.drift.observe(model, inputs)
        # orjson writes numeric arrays itself; class names (strings, objects) go as a list
        body: dict[str, Any] = {
            "predictions": predictions if predictions.dtype.kind in "biuf" else predictions.tolist()
        }
        if proba is not None:
            body["probabilities"] = proba
        body["model_version"] = model.version
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def predict_checked(model: LoadedModel, inputs: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``model.predict``, with a row the pipeline refuses or overflows on named in a JSON 422.

    A model that fails even on a plain row of its schema is broken: its failures propagate, and
    are answered as the contract's JSON 500 (they are the service's errors, not the client's).
    """
    try:
        predictions, proba = model.predict(inputs)
    except (ValueError, TypeError) as exc:
        if not model.answers_probe:
            raise
        raise Unprocessable(_refused_row(model, inputs, exc), code="model_refused") from None
    out = proba if proba is not None else predictions
    finite = np.isfinite(out) if out.ndim == 1 else np.isfinite(out).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise Unprocessable(
            f"instances[{row}]: values this far out of range overflow the model; "
            "send values on the scale of the training data",
            code="out_of_range",
        )
    return predictions, proba


def _refused_row(model: LoadedModel, inputs: Any, exc: Exception) -> str:
    """Which row the pipeline refuses (only on this error path: one row at a time)."""
    for i in range(min(len(inputs), 1000)):
        one = inputs.iloc[i : i + 1] if hasattr(inputs, "iloc") else inputs[i : i + 1]
        try:
            model.predict(one)
        except (ValueError, TypeError) as row_exc:
            return f"instances[{i}]: the model refused this row: {_first_line(row_exc)}"
    return f"the model refused these rows: {_first_line(exc)}"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
