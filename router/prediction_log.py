"""What the router remembers of each answered ``/predict`` so that a label can join it later.

The data path hands over the raw answer (no parsing on the request path); a background thread
parses a batch at a time and writes it to the state store with one ``remember_predictions`` call,
every ``FLUSH_INTERVAL_S`` or sooner when ``BATCH`` answers wait. The queue is bounded: when the
store falls behind, the newest answers are dropped (and counted), never the client's time.

    >>> log = PredictionLog(store, slots, metrics, retention_s=604800, max_requests=100_000)  # doctest: +SKIP
    >>> log.remember("4f1c...", "served", "v1", "blue", answer_body)                           # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

import orjson

from metrics.router import RouterMetrics
from router.slots import SlotVersions
from router.state.base import StateStore, StateStoreError

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
BATCH = 500
_LIVE: weakref.WeakSet[PredictionLog] = weakref.WeakSet()


def answer_doc(body: bytes, version: str, classes: list[Any] | None,
               at: float) -> dict[str, Any] | None:
    """The part of a model service's answer feedback needs; None when it is not one.

    ``classes`` (the version's, from its ``GET /version``) order the probability columns.
    """
    try:
        answer = orjson.loads(body)
        predictions = answer["predictions"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(predictions, list):
        return None
    doc: dict[str, Any] = {"version": version, "at": at, "predictions": predictions}
    probabilities = answer.get("probabilities")
    if isinstance(probabilities, list):
        doc["probabilities"] = probabilities
        doc["classes"] = list(classes or [])
    return doc


class PredictionLog:
    """This process's queue of answers to remember, and the thread that writes them."""

    def __init__(self, store: StateStore, slots: SlotVersions, metrics: RouterMetrics, *,
                 retention_s: float, max_requests: int, capacity: int = 10_000) -> None:
        self.store = store
        self.slots = slots
        self.metrics = metrics
        self.retention_s = retention_s
        self.max_requests = max_requests
        self.capacity = capacity
        self._pending: deque[tuple[str, str, str, str, bytes, float]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._failing = False
        _LIVE.add(self)

    def remember(self, request_id: str, part: str, version: str, slot: str, body: bytes) -> None:
        """Queue one answer (``part``: ``served``, or ``shadow`` for the candidate's copy)."""
        if self._pid != os.getpid():
            self._start()
        if len(self._pending) >= self.capacity:
            self.metrics.child(self.metrics.feedback_dropped, part).inc()
            return
        self._pending.append((request_id, part, version, slot, body, time.time()))
        if len(self._pending) >= BATCH:
            self._wake.set()

    def flush(self) -> None:
        """Write every queued answer now (raises StateStoreError when the store is down)."""
        with self._lock:
            batch = []
            try:
                while True:
                    batch.append(self._pending.popleft())
            except IndexError:
                pass
            entries = []
            asked: set[str] = set()
            for request_id, part, version, slot, body, at in batch:
                classes = self.slots.classes(slot, version)
                if classes is None and slot not in asked and b'"probabilities"' in body:
                    asked.add(slot)
                    self.slots.refresh(slot)  # a version new to this process: learn its classes
                    classes = self.slots.classes(slot, version)
                doc = answer_doc(body, version, classes, at)
                if doc is not None:
                    entries.append((request_id, part, doc))
            if entries:
                self.store.remember_predictions(entries, self.retention_s, self.max_requests)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._pending.clear()  # a forked child's copy of its parent's queue is the parent's
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self._write()

    def _write(self) -> None:
        try:
            self.flush()
            if self._failing:
                log.warning("remembering predictions for feedback again")
            self._failing = False
        except StateStoreError as exc:
            if not self._failing:
                log.warning("predictions are not remembered for feedback: %s", exc)
            self._failing = True
        except Exception:
            log.exception("remembering predictions for feedback failed")

    def close(self) -> None:
        """Stop the writer after writing what is queued."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() \
                and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self._pid == os.getpid():
            self._write()


@atexit.register
def _flush_at_exit() -> None:
    """A worker leaving writes what it still holds (gunicorn workers exit through sys.exit)."""
    for prediction_log in list(_LIVE):
        if prediction_log._pid == os.getpid() and prediction_log._pending:
            prediction_log._write()
