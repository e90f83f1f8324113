"""The state store interface: one versioned routing-state document, an audit log, the release
history, named leases, the counts each router instance publishes, and the predictions kept for
delayed labels with the quality counts those labels add up to.

Every backend keeps the same three things and offers the same few methods, so the router never
knows which one it talks to. Changes are compare-and-set on ``config_version``: a writer reads
the state, builds the next document and commits it against the version it read; if somebody
else committed first, it gets ``StaleState`` and starts again from a fresh read. A store that
lost its state (emptied, or older than what a router last read) is written back with
``restore``, at a higher config_version than any it had handed out.

Errors::

    StateStoreError           anything the store cannot do
    ├── StaleState            compare-and-set lost: the stored config_version moved on
    └── StoreUnavailable      the backend cannot be reached (server down, file locked)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable


QUALITY_BUCKET_S = 60.0  # quality counts are kept per minute of serving, for windowed reads
PREDICTION_PARTS = ("served", "shadow")


def quality_bucket(at: float) -> float:
    """The start of the quality bucket a request served at ``at`` (Unix time) counts in."""
    return math.floor(at / QUALITY_BUCKET_S) * QUALITY_BUCKET_S


class StateStoreError(Exception):
    """The state store could not carry out a request."""


class StaleState(StateStoreError):
    """A commit named a config_version that is no longer the stored one; re-read and retry."""

    def __init__(self, current_version: int, expected_version: int | None = None) -> None:
        self.current_version = current_version
        self.expected_version = expected_version
        expected = "" if expected_version is None else f"expected {expected_version}, "
        super().__init__(
            f"routing state changed concurrently ({expected}stored config_version is "
            f"{current_version}): re-read the state and apply the change again"
        )


class StoreUnavailable(StateStoreError):
    """The backend holding the state cannot be reached right now."""


@dataclass(frozen=True)
class StoredState:
    """The routing-state document together with the config_version it was stored under."""

    config_version: int
    document: dict[str, Any]


@dataclass(frozen=True)
class PairDisagreements:
    """What the store holds for one pair of versions compared under shadow."""

    counts: dict[str, int]  # metrics.disagreement's fields
    samples: list[dict[str, Any]]  # newest first


@runtime_checkable
class StateStore(Protocol):
    """Where a router keeps its routing state, its audit log and its leases.

    Example::

        store = open_store("sqlite:///var/router-state.db")
        state = store.read() or store.initialize({"strategy": "release-in-place"})
        store.commit(state.config_version, {**state.document, "strategy": "canary"},
                     {"actor": "admin", "reason": "start canary"})
    """

    def read(self) -> StoredState | None:
        """Return the current state, or None when nothing has been stored yet."""
        ...

    def initialize(self, document: dict[str, Any]) -> StoredState:
        """Store ``document`` as config_version 1 unless a state exists; return the stored one."""
        ...

    def commit(
        self, expected_version: int, document: dict[str, Any], event: dict[str, Any]
    ) -> StoredState:
        """Replace the state and append ``event`` atomically, if still at ``expected_version``."""
        ...

    def restore(
        self, document: dict[str, Any], config_version: int, event: dict[str, Any]
    ) -> StoredState:
        """Write back a state the store lost, at ``config_version``, with ``event``, atomically.

        For a store that came back empty or older (a Redis without persistence after a restart):
        refused with StaleState when it already holds ``config_version`` or newer, so of several
        routers restoring at once exactly one wins. The event's id is at least
        ``config_version - 1``, the id the store would have reached had it lost nothing (each
        change adds one version and one event), so event ids keep growing too.
        """
        ...

    def events(self, limit: int = 100, after: int = 0) -> list[dict[str, Any]]:
        """Return the newest ``limit`` audit events with id > ``after``, oldest first."""
        ...

    def save_release(self, record: dict[str, Any]) -> None:
        """Insert or replace the release record with ``record["id"]`` (one per rollout)."""
        ...

    def releases(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` release records, oldest first (by ``started_at``)."""
        ...

    def record_disagreements(self, stable: str, candidate: str, counts: dict[str, int],
                             samples: list[dict[str, Any]], keep: int, ttl_s: float) -> None:
        """Add ``counts`` to the pair's tallies and push ``samples`` onto its samples, atomically.

        Only the newest ``keep`` samples of a pair are kept (the oldest are dropped first); a pair
        nothing was recorded for in ``ttl_s`` seconds is forgotten, tallies and samples.
        """
        ...

    def disagreements(self, stable: str, candidate: str, limit: int = 100) -> PairDisagreements:
        """The pair's tallies and its newest ``limit`` samples, newest first (empty if unknown)."""
        ...

    def disagreement_pairs(self) -> list[dict[str, Any]]:
        """Every unexpired pair recorded: ``stable``, ``candidate``, ``updated_at`` (Unix time),
        the most recently updated first."""
        ...

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds; False if another holds it."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        """Free the lease ``name`` if ``holder`` holds it."""
        ...

    def publish_counts(self, instance: str, document: dict[str, Any], ttl_s: float) -> None:
        """Store ``document`` as router ``instance``'s counts, replacing its last, for ``ttl_s`` s.

        Each router instance publishes its cumulative per-version counts here; an instance that
        stops publishing is forgotten ``ttl_s`` seconds after its last document.
        """
        ...

    def published_counts(self) -> dict[str, dict[str, Any]]:
        """The latest unexpired document of every instance that published counts, by instance."""
        ...

    def remember_predictions(self, entries: Sequence[tuple[str, str, dict[str, Any]]],
                             ttl_s: float, max_requests: int) -> None:
        """Keep each ``(request id, part, answer)`` for feedback, ``ttl_s`` seconds from the
        request's first part; ``part`` is ``served`` or ``shadow`` (the candidate's copy).

        Beyond ``max_requests`` requests, the oldest are dropped first.
        """
        ...

    def recall_predictions(self, request_id: str) -> dict[str, Any] | None:
        """``{"served": answer, "shadow": answer?, "feedback": fingerprint?}``; None when the
        request id is unknown or expired."""
        ...

    def record_feedback(self, request_id: str, fingerprint: str, counts: dict[str, Any],
                        at: float, keep_s: float) -> str:
        """Add ``counts`` (``metrics.quality``'s shape) to the time bucket of ``at`` (when the
        request was served), once per request id, atomically.

        Returns ``recorded``; ``duplicate`` when this fingerprint was recorded before (nothing
        added); ``conflict`` when a different one was; ``unknown`` when the request id expired
        meanwhile. Buckets are kept ``keep_s`` seconds past their end.
        """
        ...

    def quality_counts(self, since: float = 0.0, until: float = math.inf) -> dict[str, Any]:
        """The summed quality counts of the requests served in ``[since, until)`` (to within
        ``QUALITY_BUCKET_S``: a bucket counts when it starts in the range)."""
        ...

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def stamp_event(event: dict[str, Any], config_version: int) -> dict[str, Any]:
    """Copy ``event`` for the audit log: the store's config_version, a UTC time, no caller id."""
    stamped = {key: value for key, value in event.items() if key != "id"}
    stamped["config_version"] = config_version
    if "time" not in stamped:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        stamped["time"] = now.replace("+00:00", "Z")
    return stamped


def check_lease_ttl(ttl_s: float, what: str = "lease") -> int:
    """Return a lease's (or ``what``'s) TTL in whole milliseconds (at least 1), refusing
    non-positive ones."""
    if not ttl_s > 0:
        raise ValueError(f"{what} ttl_s must be a positive number of seconds, got {ttl_s!r}")
    return max(1, round(ttl_s * 1000))


def check_restore_version(config_version: int) -> int:
    """Return ``config_version`` for a restore, refusing one no store could have handed out."""
    if config_version < 1:
        raise ValueError(
            f"a restored state needs a config_version of 1 or more, got {config_version!r}"
        )
    return config_version
