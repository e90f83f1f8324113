"""The routing state as this process sees it: a cached copy, refreshed from the store.

The data path never touches the store: it reads ``LiveState.current`` (one reference). A
background thread re-reads the store every ``refresh_interval_s``; when the store is unreachable
the router keeps routing on the last state it saw. Changes go through :meth:`LiveState.change`,
a compare-and-set on ``config_version`` that appends an audit event in the same write.

    >>> live.change(lambda s: replace(s, canary_weight=25), actor="cli", reason="step")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
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
        return self.current.config_version > 0

    def refresh(self) -> Snapshot:
        """Read the store (initialising it on first use); on an outage keep the last state.

        The store is the truth, even at a lower config_version than ours: a Redis without
        persistence comes back empty and is re-seeded with the last state, at version 1.
        """
        with self._lock:
            try:
                stored = self.store.read()
                if stored is None:
                    stored = self.store.initialize(self.current.document() | {"rollout": None})
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

    def stop(self) -> None:
        self._stop.set()

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
            stored = self.store.read()
            if stored is None:
                stored = self.store.initialize(self.current.document())
            before = snapshot_of(stored)
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
            and rollout.get("status") not in ("running", "paused", "awaiting_promotion") \
            and before.rollout.get("status") == rollout.get("status"):
        return after  # a rollout that had ended is not counted on
    return replace(after, rollout={**rollout,
                                   "config_versions": [*written, before.config_version + 1]})


def _diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [k for k in after if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in keys}, {k: after.get(k) for k in keys}


def with_routing(snapshot: Snapshot, **changes: Any) -> Snapshot:
    """A copy of ``snapshot`` with some routing fields changed (validated by RoutingState)."""
    return replace(snapshot, routing=replace(snapshot.routing, **changes))
