"""Each router instance's cumulative per-version counts, published to the shared state store.

Prometheus cannot scrape Heroku dynos one by one, and without it a router's analysis would see
only its own share of the traffic. So every router instance writes what it has counted to the
state store about every second, and ``metrics.sources.StoreSource`` adds up every instance's
document. One process per instance publishes: the instance's worker processes share its counts
(``LocalSource`` reads them all), and a short lease named after the instance picks the writer.

One instance's document::

    {"instance": "web.1", "published_at": 1700000000.0,
     "settled": {"v1": {counts}, ...},                         # runs folded away (see below)
     "runs": {"<run id>": {"at": 1700000000.0, "counts": {"v1": {counts}, ...}}, ...}}

A run is one life of the instance's counters, which start at zero with the instance. A restarted
instance (same name, new run) publishes its run beside the earlier ones, which it carries on, so
what an instance publishes never goes down and every request is counted once, also while the old
and the new run overlap. A run not published for the retention has ended: it is folded into
``settled``. The whole document expires after the retention without a publish.

    >>> publisher = CountsPublisher(store, LocalSource(registry), "web.1")  # doctest: +SKIP
    >>> publisher.start()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any, Protocol

from metrics.window import Reading, reading_from_doc, reading_to_doc, sum_readings, went_down
from router.state.base import StateStoreError

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
# Several publish intervals: a worker busy for a moment (a CPU-bound burst blocks its event loop)
# keeps publishing rather than handing over; a dead one is replaced after it.
LEASE_TTL_S = 5.0
RETENTION_S = 3600.0
_LIVE: weakref.WeakSet[CountsPublisher] = weakref.WeakSet()


class CountsStore(Protocol):
    """The part of the state store that instances' counts go through."""

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool: ...

    def release_lease(self, name: str, holder: str) -> None: ...

    def publish_counts(self, instance: str, document: dict[str, Any], ttl_s: float) -> None: ...

    def published_counts(self) -> dict[str, dict[str, Any]]: ...


class CountsReader(Protocol):
    def read(self) -> Reading: ...


def counters_run() -> str:
    """The id of this life of the counters ``LocalSource`` reads.

    With a multiprocess metrics folder that is the gunicorn run which emptied it, named in the
    environment its workers inherit (else by the master's process id); without one, the counters
    live in this process's registry, and a new id is drawn.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # SERVICE_RUN_ID: drawn by the gunicorn master where it empties the metrics folder
        return os.environ.get("SERVICE_RUN_ID") or f"{socket.gethostname()}:{os.getppid()}"
    return uuid.uuid4().hex


def document_total(document: dict[str, Any]) -> Reading:
    """Everything one instance counted: its settled counts plus each of its runs'."""
    runs = document.get("runs") or {}
    return sum_readings([
        reading_from_doc(document.get("settled") or {}),
        *(reading_from_doc(run.get("counts") or {}) for run in runs.values()),
    ])


def next_document(earlier: dict[str, Any] | None, instance: str, run: str, fresh: Reading,
                  now: float, retention_s: float, check_restart: bool = True) -> dict[str, Any]:
    """The document to publish for ``instance`` with run ``run`` at ``fresh`` counts.

    Runs of the earlier document are kept (the ended ones folded into ``settled``). With
    ``check_restart``, this run's earlier counts above ``fresh`` came from an earlier life under
    the same run id (a process id used again): they are settled too.
    """
    earlier = earlier or {}
    settled = reading_from_doc(earlier.get("settled") or {})
    runs: dict[str, Any] = dict(earlier.get("runs") or {})
    ended = [name for name, entry in runs.items()
             if name != run and now - float(entry.get("at", 0.0)) > retention_s]
    mine = runs.get(run)
    if check_restart and mine is not None:
        if went_down(fresh, reading_from_doc(mine.get("counts") or {})):
            ended.append(run)
    for name in ended:
        settled = sum_readings([settled, reading_from_doc(runs.pop(name).get("counts") or {})])
    runs[run] = {"at": now, "counts": reading_to_doc(fresh)}
    return {"instance": instance, "published_at": now, "settled": reading_to_doc(settled),
            "runs": runs}


class CountsPublisher:
    """Publishes this router instance's counts about every second, from one of its processes.

    Every process of the instance has one. The one holding the lease ``counts:<instance>`` writes;
    on taking the lease over it starts from the document in the store, so what its predecessor
    (another worker, or the instance before a restart) published is carried on.
    """

    def __init__(self, store: CountsStore, local: CountsReader, instance: str, *,
                 retention_s: float = RETENTION_S, interval_s: float = INTERVAL_S,
                 lease_ttl_s: float = LEASE_TTL_S, run: str | None = None) -> None:
        self.store = store
        self.local = local
        self.instance = instance
        self.run = run or counters_run()
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.lease_ttl_s = lease_ttl_s
        self.lease = f"counts:{instance}"
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._published: dict[str, Any] | None = None  # this process's last document, while holding
        self._held_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._finished = False
        self._failing = False
        _LIVE.add(self)

    def publish(self) -> dict[str, Any] | None:
        """Publish the instance's counts now if this process holds (or takes) the lease.

        Returns the document published, or None when another process publishes. Raises
        StateStoreError when the store cannot be reached.
        """
        with self._lock:
            if self._finished:
                return None
            if not self.store.acquire_lease(self.lease, self.holder, self.lease_ttl_s):
                self._published = None
                return None
            held_since = time.monotonic()
            if held_since - self._held_at > self.lease_ttl_s:
                self._published = None  # the lease may have lapsed meanwhile: read the store again
            self._held_at = held_since
            fresh = self.local.read()
            if self._published is None:
                earlier = self.store.published_counts().get(self.instance)
                document = next_document(earlier, self.instance, self.run, fresh, time.time(),
                                         self.retention_s)
            else:
                document = next_document(self._published, self.instance, self.run, fresh,
                                         time.time(), self.retention_s, check_restart=False)
            self.store.publish_counts(self.instance, document, self.retention_s)
            self._published = document
            return document

    def document(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        """The instance's document as stored, with this process's fresh counts for its run."""
        return next_document(stored, self.instance, self.run, self.local.read(), time.time(),
                             self.retention_s)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="counts-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing: one last document (if this process can write it), lease freed."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.finish()

    def finish(self) -> None:
        """Publish a last time and free the lease: at worker exit, the last worker out writes the
        instance's final counts."""
        if self._finished or self._pid != os.getpid():
            return
        try:
            self.publish()
            self.store.release_lease(self.lease, self.holder)
        except StateStoreError as exc:
            log.warning("the last counts of router instance %s were not published: %s",
                        self.instance, exc)
        self._finished = True

    def _run(self) -> None:
        while True:
            try:
                self.publish()
                if self._failing:
                    log.warning("publishing router instance %s's counts again", self.instance)
                self._failing = False
            except StateStoreError as exc:
                if not self._failing:
                    log.warning("router instance %s's counts are not published: %s",
                                self.instance, exc)
                self._failing = True
            except Exception:
                log.exception("publishing router instance %s's counts failed", self.instance)
            if self._stop.wait(self.interval_s):
                return


def finish_all() -> None:
    """Publish this process's last counts (a worker's exit hook calls this)."""
    for publisher in list(_LIVE):
        publisher.finish()
