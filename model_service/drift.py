"""Live input drift: each worker's sliding window of binned inputs, scored against the reference.

A ``/predict`` request only queues its rows (the inputs as the pipeline got them): the answer
does not wait for any of this. At most every ``FLUSH_INTERVAL_S``, and before ``/metrics`` or
``/drift`` answer, the queued rows are binned together
(:meth:`model_service.reference.Reference.counts`, one call per batch of requests) and added to a
window of the last ``MODEL_DRIFT_WINDOW_ROWS`` rows, none older than ``MODEL_DRIFT_WINDOW_S``
seconds; then the counts are written to the metrics and each column's PSI (:mod:`metrics.drift`)
is computed once for the whole window. The window is kept in ``SLICES`` slices, so old rows leave
it a slice at a time. When more than ``SAMPLE_PER_FLUSH`` requests wait to be binned, a uniform
sample of them is (the window then holds a sample of the traffic, and its shares estimate the
same distributions); past ``MAX_QUEUED`` waiting requests, further ones are not queued at all.

The window is this worker's: with several workers each sees its share of the traffic, and
``GET /drift`` answers from the worker that takes the request.

    >>> monitor = DriftMonitor(DriftSettings(), metrics)   # doctest: +SKIP
    >>> monitor.observe(model, inputs)                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from metrics.drift import EPSILON, MAJOR, STABLE, psi_by_block, reading

if TYPE_CHECKING:
    from metrics.model import ModelMetrics
    from model_service.artifacts import LoadedModel
    from model_service.reference import Reference

log = logging.getLogger(__name__)
SLICES = 10
FLUSH_INTERVAL_S = 1.0
MAX_QUEUED = 20_000
# Requests binned per flush at most: past it, a uniform sample of them. Binning a one-row
# DataFrame costs about a third of a millisecond, so binning every request of a busy worker
# would cost it several percent of its CPU for no better estimate of the distributions.
SAMPLE_PER_FLUSH = 64
YIELD_EVERY = 8  # binned parts between two chances for requests to run


@dataclass(frozen=True)
class DriftSettings:
    """The window: the last ``window_rows`` rows (0: drift not tracked), at most ``window_s``
    seconds old; a column's PSI is reported once ``min_rows`` rows are in it."""

    window_rows: int = 5000
    window_s: float = 3600.0
    min_rows: int = 500


class DriftWindow:
    """Bin counts of the most recent rows, in slices: at least ``window_rows`` rows while
    traffic allows, less one slice's worth at most; slices older than ``window_s`` drop out."""

    def __init__(self, bins: int, window_rows: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bins = bins
        self.window_rows = window_rows
        self.window_s = window_s
        self.clock = clock
        self._slice_rows = max(1, window_rows // SLICES)
        self._slice_s = window_s / SLICES
        self._slices: deque[list[Any]] = deque()  # [started, rows, counts], oldest first
        self._rows = 0
        self._counts = np.zeros(bins, dtype=np.int64)

    def add(self, counts: np.ndarray, rows: int) -> None:
        now = self.clock()
        self._expire(now)
        last = self._slices[-1] if self._slices else None
        if last is None or last[1] >= self._slice_rows or now - last[0] >= self._slice_s:
            last = [now, 0, np.zeros(self.bins, dtype=np.int64)]
            self._slices.append(last)
        last[1] += rows
        last[2] += counts
        self._rows += rows
        self._counts += counts
        # the oldest slice leaves once the newer ones hold a whole window without it
        while len(self._slices) > 1 and self._rows - self._slices[0][1] >= self.window_rows:
            self._drop_oldest()

    @property
    def slice_rows(self) -> int:
        """Rows a slice holds before the next one starts."""
        return self._slice_rows

    def totals(self) -> tuple[np.ndarray, int]:
        """The window's counts per bin and its rows."""
        self._expire(self.clock())
        return self._counts.copy(), self._rows

    def _expire(self, now: float) -> None:
        while self._slices and now - self._slices[0][0] >= self.window_s:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, rows, counts = self._slices.popleft()
        self._rows -= rows
        self._counts -= counts


class _Tracked:
    """The window of one served model (a reload starts a new one)."""

    def __init__(self, model: LoadedModel, settings: DriftSettings) -> None:
        self.model = model
        self.reference: Reference | None = model.reference
        bins = self.reference.bins if self.reference is not None else 0
        self.window = DriftWindow(bins, settings.window_rows, settings.window_s)
        self.pending = np.zeros(bins, dtype=np.int64)
        self.psi = np.full(len(self.reference.columns) if self.reference else 0, np.nan)


class DriftMonitor:
    """The live window of the served model's inputs, its metrics and its report."""

    def __init__(self, settings: DriftSettings, metrics: ModelMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._tracked: _Tracked | None = None
        self._lock = threading.Lock()
        self._flusher_pid: int | None = None
        self._queued: list[tuple[LoadedModel, Any]] = []
        self._rng = random.Random()

    @property
    def enabled(self) -> bool:
        return self.settings.window_rows > 0

    def observe(self, model: LoadedModel, inputs: Any) -> None:
        """Add one request's rows (``inputs`` as the pipeline got them) to the window."""
        if not self.enabled or model.reference is None or len(self._queued) >= MAX_QUEUED:
            return
        self._queued.append((model, inputs))
        if self._flusher_pid != os.getpid():
            self._start_flusher()

    def _bin_queued(self) -> None:
        """Bin the queued requests' rows, a batch per served model, into its window (call with
        the lock)."""
        queued, self._queued = self._queued, []
        if len(queued) > SAMPLE_PER_FLUSH:  # a uniform sample of the requests, in arrival order
            keep = sorted(self._rng.sample(range(len(queued)), SAMPLE_PER_FLUSH))
            queued = [queued[i] for i in keep]
        start = 0
        while start < len(queued):
            model = queued[start][0]
            end = start
            while end < len(queued) and queued[end][0] is model:
                end += 1
            batch = [inputs for _, inputs in queued[start:end]]
            reference = model.reference
            assert reference is not None  # observe() queues only models with one
            tracked = self._track(model)
            step = tracked.window.slice_rows  # a slice at a time, so old rows still leave in slices
            if all(isinstance(inputs, np.ndarray) for inputs in batch):
                joined = np.concatenate(batch) if len(batch) > 1 else batch[0]
                parts: list[Any] = [joined[first:first + step]
                                    for first in range(0, len(joined), step)]
            else:  # DataFrames: their binned columns joined, cheaper than a frame at a time
                columns = reference.columns_of(batch)
                parts = [columns[first:first + step] for first in range(0, len(columns), step)]
            for n, part in enumerate(parts, 1):
                counts = reference.counts(part)
                tracked.window.add(counts, len(part))
                tracked.pending += counts
                if n % YIELD_EVERY == 0:
                    time.sleep(0.001)  # under gevent: requests run in between, no long stall
            start = end

    def flush(self) -> None:
        """Bin the queued rows, write pending counts to the counters and this window's PSI to
        the gauges."""
        with self._lock:
            self._bin_queued()
            tracked = self._tracked
            if tracked is None or tracked.reference is None:
                return
            pending, tracked.pending = tracked.pending, np.zeros_like(tracked.pending)
            counts, rows = tracked.window.totals()
        reference = tracked.reference
        if rows >= self.settings.min_rows:
            tracked.psi = psi_by_block(reference.shares, counts, reference.starts,
                                       np.full(len(reference.columns), rows))
        else:
            tracked.psi = np.full(len(reference.columns), np.nan)
        self.metrics.drift(tracked.model.version, reference, pending, tracked.psi, rows)

    def report(self, model: LoadedModel) -> dict[str, Any]:
        """What ``GET /drift`` answers: per column the PSI, the window's rows, the shares per bin."""
        head: dict[str, Any] = {
            "model_version": model.version, "worker": os.getpid(),
            "window": {"rows": 0, "max_rows": self.settings.window_rows,
                       "max_age_s": self.settings.window_s, "min_rows": self.settings.min_rows},
            "thresholds": {"stable_below": STABLE, "major_above": MAJOR}, "epsilon": EPSILON,
        }
        if not self.enabled:
            return {**head, "available": False, "columns": [],
                    "reason": "input drift is not tracked: MODEL_DRIFT_WINDOW_ROWS is 0"}
        reference = model.reference
        if reference is None:
            return {**head, "available": False, "columns": [],
                    "reason": f"version {model.version} has no reference distributions (packaged "
                              "before they were recorded): package it again to measure drift"}
        self.flush()
        with self._lock:
            tracked = self._track(model)
        counts, rows = tracked.window.totals()
        columns = []
        for k, column in enumerate(reference.columns):
            start = int(reference.starts[k])
            live = counts[start:start + column.size]
            value = float(tracked.psi[k])
            value_or_none = None if value != value else round(value, 6)
            columns.append({
                "name": column.name, "type": column.type, "psi": value_or_none,
                "reading": reading(value_or_none), "rows": rows,
                "bins": [{"bin": label, "reference": share,
                          "live": round(int(n) / rows, 6) if rows else None, "live_rows": int(n)}
                         for label, share, n in zip(column.labels, column.shares, live, strict=True)],
            })
        columns.sort(key=lambda c: -1.0 if c["psi"] is None else -c["psi"])
        head["window"]["rows"] = rows
        return {**head, "available": True, "reference_rows": reference.rows, "columns": columns}

    def _track(self, model: LoadedModel) -> _Tracked:
        """The window of ``model``: a new one when the served model changed (call with the lock)."""
        tracked = self._tracked
        if tracked is None or tracked.model is not model:
            if tracked is not None and tracked.reference is not None:
                self.metrics.drift_ended(tracked.model.version, tracked.reference, tracked.pending)
            tracked = self._tracked = _Tracked(model, self.settings)
            if tracked.reference is not None:
                self.metrics.drift_reference(model.version, tracked.reference)
        return tracked

    def _start_flusher(self) -> None:
        """One flusher thread per process (a forked worker starts its own)."""
        with self._lock:
            if self._flusher_pid == os.getpid():
                return
            self._flusher_pid = os.getpid()
        ref = weakref.ref(self)

        def run() -> None:
            while True:
                time.sleep(FLUSH_INTERVAL_S)
                monitor = ref()
                if monitor is None:
                    return
                try:
                    monitor.flush()
                except Exception:  # the flusher must outlive one bad round
                    log.exception("drift flush failed")
                del monitor

        threading.Thread(target=run, name="drift-flush", daemon=True).start()
