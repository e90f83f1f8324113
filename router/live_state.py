"""The routing state as this process sees it: a cached copy, refreshed from the store.

The data path never touches the store: it reads ``LiveState.current`` (one reference). A
background thread re-reads the store every ``refresh_interval_s``; when the store is unreachable
the router keeps routing on the last state it saw. Changes go through :meth:`LiveState.change`,
a compare-and-set on ``config_version`` that appends an audit event in the same write. A store
that comes back without the state this process last read from it (a Redis without persistence
after a restart: empty, or at a lower config_version) gets that state written back, rollout
included, at the next config_version, so config_version never goes down.

    >>> live.change(lambda s: replace(s, canary_weight=25), actor="cli", reason="step")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from router.config import RouterConfig
from router.releases import log_event, log_release, release_record
from router.state import StaleState, StateStore, StateStoreError, StoredState, StoreUnavailable
from strategies import RoutingState

log = logging.getLogger(__name__)
STATE_FIELDS = ("strategy", "stable", "candidate", "canary_weight", "shadow_percent", "previous_stable")
ACTIVE = ("running", "paused", "awaiting_promotion")


@dataclass(frozen=True)
class Snapshot:
    """One consistent view: the routing state, its version, and the rollout document."""

    config_version: int
    routing: RoutingState
    rollout: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        return {**asdict(self.routing), "rollout": self.rollout}


def snapshot_of(stored: StoredState) -> Snapshot:
    doc = stored.document
    routing = RoutingState(**{k: doc[k] for k in STATE_FIELDS if k in doc})
    return Snapshot(stored.config_version, routing, doc.get("rollout"))


class LiveState:
    """The process's view of the shared routing state, and the only way to change it."""

    def __init__(self, config: RouterConfig, store: StateStore,
                 on_change: Callable[[Snapshot], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.on_change = on_change
        self.store_ok = False
        self.last_error: str | None = None
        initial = RoutingState(config.strategy, config.stable, config.candidate)
        self.current = Snapshot(0, initial)  # provisional until the store answers
        # A read and the publish of what it read, or a commit and its publish, run alone: so a
        # read never publishes a state older than one already published by this process.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.refresh()

    @property
    def loaded(self) -> bool:
        """Whether ``current`` came from the store (only what the store answered is published)."""
        return self.current.config_version > 0

    def refresh(self) -> Snapshot:
        """Read the store (initialising it on first use); on an outage keep the last state.

        A store that lost what this process last read from it is given it back (``_recover``).
        """
        with self._lock:
            try:
                stored = self._read_or_recover()
            except StoreUnavailable as exc:
                if self.store_ok:
                    log.warning("state store unreachable, routing on config_version %d: %s",
                                self.current.config_version, exc)
                self.store_ok, self.last_error = False, str(exc)
                return self.current
            self.store_ok, self.last_error = True, None
            snapshot = snapshot_of(stored)
            if snapshot != self.current:
                self._publish(snapshot)
            return self.current

    def _publish(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        if self.on_change is not None:
            self.on_change(snapshot)

    def start(self) -> None:
        """Start the refresher thread (once per process; safe after fork)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="state-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop refreshing and wait for a read under way (it holds the store)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid() \
                and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.config.refresh_interval_s):
            try:
                self.refresh()
            except Exception:  # the refresher must outlive any single bad read
                log.exception("state refresh failed")

    def change(
        self,
        mutate: Callable[[Snapshot], Snapshot],
        *,
        actor: str,
        action: str,
        reason: str | None,
        if_match: int | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> Snapshot:
        """Apply ``mutate`` to the stored state as one compare-and-set, with an audit event.

        With ``if_match`` a concurrent change raises StaleState; without it the change is
        re-applied to the newer state (a few attempts). StoreUnavailable propagates.
        """
        for _ in range(5):
            before = snapshot_of(self._read_or_recover())
            if if_match is not None and if_match != before.config_version:
                raise StaleState(before.config_version, if_match)
            after = _count_config_version(before, mutate(before))
            old, new = _diff(before.document(), after.document())
            event = {"actor": actor, "action": action, "reason": reason, "old": old, "new": new}
            if evidence is not None:
                event["evidence"] = evidence
            try:
                with self._lock:
                    committed = self.store.commit(before.config_version, after.document(), event)
                    self.store_ok = True
                    self._publish(snapshot_of(committed))
                    current = self.current
            except StaleState:
                if if_match is not None:
                    raise
                continue
            log_event(committed.config_version, event)
            if current.rollout is not None and current.rollout != before.rollout:
                self._save_release(current)
            return current
        raise StaleState(self.current.config_version)

    def _read_or_recover(self) -> StoredState:
        """The stored state; a new store initialised, a store that lost our snapshot given it back.

        Before this process has read anything from the store (``loaded`` is false) its routing
        state is only the configured default, which never overwrites a stored one.
        """
        for _ in range(5):
            stored = self.store.read()
            snapshot = self.current
            if not snapshot.config_version:
                return stored or self.store.initialize(snapshot.document() | {"rollout": None})
            if stored is not None and stored.config_version >= snapshot.config_version:
                return stored
            try:
                return self._recover(snapshot, stored)
            except StaleState:
                continue  # another router or worker restored first: read what it wrote
        raise StaleState(self.current.config_version)

    def _recover(self, snapshot: Snapshot, stored: StoredState | None) -> StoredState:
        """Write ``snapshot`` back over a store that lost it, at the next config_version.

        Of several processes doing this at once exactly one wins (the store refuses a restore at
        a version it already holds); the others get StaleState. The history the store lost is in
        the log (logger ``router.audit``); the rollout's release record is saved again.
        """
        held = 0 if stored is None else stored.config_version
        version = snapshot.config_version + 1
        restored = _count_restore(snapshot, version)
        old, new = _diff(stored.document if stored is not None else {}, restored.document())
        came_back = "empty" if stored is None else "older"
        event = {
            "actor": "router",
            "action": "state.restored",
            "reason": f"the state store came back {came_back} (config_version {held} < "
                      f"{snapshot.config_version}): restored this router's last snapshot",
            "old": old,
            "new": new,
            "evidence": {"store_config_version": held,
                         "snapshot_config_version": snapshot.config_version,
                         "router": f"{socket.gethostname()}:{os.getpid()}"},
        }
        committed = self.store.restore(restored.document(), version, event)
        log.warning("state store %r came back %s (config_version %d, ours %d): restored our last "
                    "state as config_version %d", self.store, came_back, held,
                    snapshot.config_version, version)
        log_event(committed.config_version, event)
        self._save_release(snapshot_of(committed))
        return committed

    def _save_release(self, snapshot: Snapshot) -> None:
        record = release_record(snapshot)
        if record is None:
            return
        log_release(record)
        try:
            self.store.save_release(record)
        except StateStoreError as exc:  # the change itself is committed; the log line keeps this
            log.warning("release %s not saved to the store: %s", record["id"], exc)


def _count_config_version(before: Snapshot, after: Snapshot) -> Snapshot:
    """A change made during a rollout is counted in it: the config_version it is about to get."""
    rollout = after.rollout
    if rollout is None or (rollout == before.rollout and after.routing == before.routing):
        return after
    if before.rollout is not None and before.rollout.get("id") != rollout.get("id"):
        written: list[int] = []
    else:
        written = list(rollout.get("config_versions") or [])
    if before.rollout is not None and before.rollout.get("id") == rollout.get("id") \
            and rollout.get("status") not in ACTIVE \
            and before.rollout.get("status") == rollout.get("status"):
        return after  # a rollout that had ended is not counted on
    return replace(after, rollout={**rollout,
                                   "config_versions": [*written, before.config_version + 1]})


def _count_restore(snapshot: Snapshot, version: int) -> Snapshot:
    """A running rollout counts the config_version its restored state is written at."""
    rollout = snapshot.rollout
    if rollout is None or rollout.get("status") not in ACTIVE:
        return snapshot
    written = list(rollout.get("config_versions") or [])
    return replace(snapshot, rollout={**rollout, "config_versions": [*written, version]})


def _diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [k for k in after if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in keys}, {k: after.get(k) for k in keys}


def with_routing(snapshot: Snapshot, **changes: Any) -> Snapshot:
    """A copy of ``snapshot`` with some routing fields changed (validated by RoutingState)."""
    return replace(snapshot, routing=replace(snapshot.routing, **changes))
