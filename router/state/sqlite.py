"""The embedded state store: one SQLite file shared by the worker processes of one router.

WAL mode lets readers run while a writer commits; every write runs in a ``BEGIN IMMEDIATE``
transaction, so concurrent writers queue on the file lock (up to the busy timeout) instead of
failing half-way. Each thread of each process gets its own connection, opened on first use and
closed when the thread ends or the store closes.

Example::

    store = SQLiteStateStore("state/router.db")
    state = store.read() or store.initialize({"strategy": "release-in-place"})
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metrics.quality import flatten, unflatten
from router.state.base import (
    PREDICTION_PARTS,
    QUALITY_BUCKET_S,
    PairDisagreements,
    StaleState,
    StateStoreError,
    StoredState,
    StoreUnavailable,
    check_lease_ttl,
    check_restore_version,
    quality_bucket,
    stamp_event,
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS routing_state (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        config_version INTEGER NOT NULL,
        document TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS releases (
        id TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        record TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS disagreement_pairs (
        stable TEXT NOT NULL,
        candidate TEXT NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (stable, candidate)
    )""",
    """CREATE TABLE IF NOT EXISTS disagreement_counts (
        stable TEXT NOT NULL,
        candidate TEXT NOT NULL,
        field TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (stable, candidate, field)
    )""",
    """CREATE TABLE IF NOT EXISTS disagreement_samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        stable TEXT NOT NULL,
        candidate TEXT NOT NULL,
        sample TEXT NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS disagreement_samples_by_pair
        ON disagreement_samples (stable, candidate, id)""",
    """CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS published_counts (
        instance TEXT PRIMARY KEY,
        document TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS predictions (
        request_id TEXT PRIMARY KEY,
        at REAL NOT NULL,
        expires_at REAL NOT NULL,
        served TEXT,
        shadow TEXT,
        feedback TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS predictions_at ON predictions (at)",
    """CREATE TABLE IF NOT EXISTS quality_counts (
        bucket REAL NOT NULL,
        key TEXT NOT NULL,
        value REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (bucket, key)
    )""",
)

# The part's column is named by the caller from PREDICTION_PARTS only.
_REMEMBER = """
    INSERT INTO predictions (request_id, at, expires_at, {part}) VALUES (?, ?, ?, ?)
    ON CONFLICT (request_id) DO UPDATE SET {part} = excluded.{part}
"""

_SELECT_STATE = "SELECT config_version, document FROM routing_state WHERE singleton = 1"

_UPSERT_STATE = """
    INSERT INTO routing_state (singleton, config_version, document) VALUES (1, ?, ?)
    ON CONFLICT (singleton) DO UPDATE
    SET config_version = excluded.config_version, document = excluded.document
"""

# Lease expiry uses the wall clock because the processes sharing the file share no other clock.
_TAKE_LEASE = """
    INSERT INTO leases (name, holder, expires_at) VALUES (:name, :holder, :now + :ttl)
    ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE leases.holder = excluded.holder OR leases.expires_at <= :now
"""


class _Connection(sqlite3.Connection):
    """A connection that remembers the process that opened it (and can be weakly referenced)."""

    owner_pid: int


class _ThreadConnection:
    """A thread's hold on its connection: when the thread ends, its thread-local storage goes
    and with it this object, whose finalizer closes the connection (see ``_release``)."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn


def _release(conn: _Connection, inherited: list[_Connection]) -> None:
    """Close a connection whose thread has ended, unless another process opened it.

    A connection inherited through fork is kept, never closed: closing it in the child could
    drop the parent's file locks, and keeping a reference stops the garbage collector from
    closing it.
    """
    if conn.owner_pid == os.getpid():
        conn.close()
    else:
        inherited.append(conn)


class SQLiteStateStore:
    """State store in one SQLite file; safe across threads, worker processes and fork."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._open_connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        # Connections inherited through fork must be neither used nor closed by the child
        # (closing one could drop the parent's file locks); keeping a reference stops the
        # garbage collector from closing them.
        self._inherited: list[_Connection] = []
        with self._translate():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def __repr__(self) -> str:
        return f"SQLiteStateStore({str(self.path)!r})"

    def read(self) -> StoredState | None:
        rows = self._fetch(_SELECT_STATE)
        return StoredState(rows[0][0], json.loads(rows[0][1])) if rows else None

    def initialize(self, document: dict[str, Any]) -> StoredState:
        encoded = json.dumps(document)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO routing_state (singleton, config_version, document) "
                "VALUES (1, 1, ?)",
                (encoded,),
            )
            row = conn.execute(_SELECT_STATE).fetchone()
        return StoredState(row[0], json.loads(row[1]))

    def commit(
        self, expected_version: int, document: dict[str, Any], event: dict[str, Any]
    ) -> StoredState:
        new_version = expected_version + 1
        encoded = json.dumps(document)
        encoded_event = json.dumps(stamp_event(event, new_version))
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT config_version FROM routing_state WHERE singleton = 1"
            ).fetchone()
            current = 0 if row is None else row[0]
            if current != expected_version:
                raise StaleState(current, expected_version)
            conn.execute(_UPSERT_STATE, (new_version, encoded))
            conn.execute("INSERT INTO audit_events (event) VALUES (?)", (encoded_event,))
        return StoredState(new_version, json.loads(encoded))

    def restore(
        self, document: dict[str, Any], config_version: int, event: dict[str, Any]
    ) -> StoredState:
        version = check_restore_version(config_version)
        encoded = json.dumps(document)
        encoded_event = json.dumps(stamp_event(event, version))
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT config_version FROM routing_state WHERE singleton = 1"
            ).fetchone()
            current = 0 if row is None else row[0]
            if current >= version:
                raise StaleState(current)
            (last_id,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit_events").fetchone()
            conn.execute(
                "INSERT INTO audit_events (id, event) VALUES (?, ?)",
                (max(last_id + 1, version - 1), encoded_event),
            )
            conn.execute(_UPSERT_STATE, (version, encoded))
        return StoredState(version, json.loads(encoded))

    def events(self, limit: int = 100, after: int = 0) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        rows = self._fetch(
            "SELECT id, event FROM audit_events WHERE id > ? ORDER BY id DESC LIMIT ?",
            (after, limit),
        )
        return [{"id": event_id, **json.loads(body)} for event_id, body in reversed(rows)]

    def save_release(self, record: dict[str, Any]) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO releases (id, started_at, record) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                (str(record["id"]), float(record.get("started_at") or 0), json.dumps(record)),
            )

    def releases(self, limit: int = 100) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        rows = self._fetch(
            "SELECT record FROM releases ORDER BY started_at DESC, id DESC LIMIT ?", (limit,)
        )
        return [json.loads(body) for (body,) in reversed(rows)]

    def record_disagreements(self, stable: str, candidate: str, counts: dict[str, int],
                             samples: list[dict[str, Any]], keep: int, ttl_s: float) -> None:
        ttl = check_lease_ttl(ttl_s, "disagreement retention") / 1000
        now = time.time()
        pair = (stable, candidate)
        with self._transaction() as conn:
            expired = conn.execute(
                "SELECT stable, candidate FROM disagreement_pairs WHERE expires_at <= ?", (now,)
            ).fetchall()
            for old in expired:
                for table in ("disagreement_pairs", "disagreement_counts", "disagreement_samples"):
                    conn.execute(f"DELETE FROM {table} WHERE stable = ? AND candidate = ?", old)
            conn.execute(
                "INSERT INTO disagreement_pairs (stable, candidate, updated_at, expires_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (stable, candidate) DO UPDATE "
                "SET updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                (*pair, now, now + ttl),
            )
            conn.executemany(
                "INSERT INTO disagreement_counts (stable, candidate, field, count) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (stable, candidate, field) DO UPDATE "
                "SET count = count + excluded.count",
                [(*pair, key, int(n)) for key, n in counts.items() if n],
            )
            if samples and keep > 0:
                conn.executemany(
                    "INSERT INTO disagreement_samples (stable, candidate, sample) VALUES (?, ?, ?)",
                    [(*pair, json.dumps(sample)) for sample in samples[-keep:]],
                )
            conn.execute(
                "DELETE FROM disagreement_samples WHERE stable = ? AND candidate = ? AND id <= "
                "COALESCE((SELECT id FROM disagreement_samples WHERE stable = ? AND candidate = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?), -1)",
                (*pair, *pair, max(keep, 0)),
            )

    def disagreements(self, stable: str, candidate: str, limit: int = 100) -> PairDisagreements:
        pair = (stable, candidate)
        live = self._fetch(
            "SELECT 1 FROM disagreement_pairs WHERE stable = ? AND candidate = ? "
            "AND expires_at > ?", (*pair, time.time()),
        )
        if not live:
            return PairDisagreements({}, [])
        counts = self._fetch(
            "SELECT field, count FROM disagreement_counts WHERE stable = ? AND candidate = ?", pair
        )
        samples = self._fetch(
            "SELECT sample FROM disagreement_samples WHERE stable = ? AND candidate = ? "
            "ORDER BY id DESC LIMIT ?", (*pair, max(limit, 0)),
        )
        return PairDisagreements(dict(counts), [json.loads(body) for (body,) in samples])

    def disagreement_pairs(self) -> list[dict[str, Any]]:
        rows = self._fetch(
            "SELECT stable, candidate, updated_at FROM disagreement_pairs WHERE expires_at > ? "
            "ORDER BY updated_at DESC", (time.time(),),
        )
        return [{"stable": s, "candidate": c, "updated_at": at} for s, c, at in rows]

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        ttl = check_lease_ttl(ttl_s) / 1000
        with self._transaction() as conn:
            cursor = conn.execute(
                _TAKE_LEASE, {"name": name, "holder": holder, "now": time.time(), "ttl": ttl}
            )
            return cursor.rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def publish_counts(self, instance: str, document: dict[str, Any], ttl_s: float) -> None:
        ttl = check_lease_ttl(ttl_s, "published counts") / 1000
        now = time.time()
        with self._transaction() as conn:
            conn.execute("DELETE FROM published_counts WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO published_counts (instance, document, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (instance) DO UPDATE "
                "SET document = excluded.document, expires_at = excluded.expires_at",
                (instance, json.dumps(document), now + ttl),
            )

    def published_counts(self) -> dict[str, dict[str, Any]]:
        rows = self._fetch(
            "SELECT instance, document FROM published_counts WHERE expires_at > ? "
            "ORDER BY instance",
            (time.time(),),
        )
        return {instance: json.loads(body) for instance, body in rows}

    def remember_predictions(self, entries: Sequence[tuple[str, str, dict[str, Any]]],
                             ttl_s: float, max_requests: int) -> None:
        ttl = check_lease_ttl(ttl_s, "remembered predictions") / 1000
        now = time.time()
        with self._transaction() as conn:
            for request_id, part, answer in entries:
                if part not in PREDICTION_PARTS:
                    raise ValueError(f"prediction part must be one of {PREDICTION_PARTS}")
                conn.execute(_REMEMBER.format(part=part),
                             (request_id, now, now + ttl, json.dumps(answer)))
            conn.execute("DELETE FROM predictions WHERE expires_at <= ?", (now,))
            conn.execute(
                "DELETE FROM predictions WHERE request_id IN (SELECT request_id FROM predictions "
                "ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)", (max(0, max_requests),))

    def recall_predictions(self, request_id: str) -> dict[str, Any] | None:
        rows = self._fetch(
            "SELECT served, shadow, feedback FROM predictions WHERE request_id = ? "
            "AND expires_at > ?", (request_id, time.time()))
        if not rows or rows[0][0] is None:
            return None
        served, shadow, feedback = rows[0]
        found: dict[str, Any] = {"served": json.loads(served)}
        if shadow is not None:
            found["shadow"] = json.loads(shadow)
        if feedback is not None:
            found["feedback"] = feedback
        return found

    def record_feedback(self, request_id: str, fingerprint: str, counts: dict[str, Any],
                        at: float, keep_s: float) -> str:
        now = time.time()
        bucket = quality_bucket(at)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT feedback FROM predictions WHERE request_id = ? AND expires_at > ? "
                "AND served IS NOT NULL", (request_id, now)).fetchone()
            if row is None:
                return "unknown"
            if row[0] is not None:
                return "duplicate" if row[0] == fingerprint else "conflict"
            conn.execute("UPDATE predictions SET feedback = ? WHERE request_id = ?",
                         (fingerprint, request_id))
            conn.executemany(
                "INSERT INTO quality_counts (bucket, key, value, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (bucket, key) DO UPDATE SET value = value + excluded.value",
                [(bucket, key, value, bucket + QUALITY_BUCKET_S + keep_s)
                 for key, value in flatten(counts).items()])
            conn.execute("DELETE FROM quality_counts WHERE expires_at <= ?", (now,))
        return "recorded"

    def quality_counts(self, since: float = 0.0, until: float = math.inf) -> dict[str, Any]:
        rows = self._fetch(
            "SELECT key, SUM(value) FROM quality_counts WHERE bucket >= ? AND bucket < ? "
            "AND expires_at > ? GROUP BY key",
            (since, until if math.isfinite(until) else 1e300, time.time()))
        return unflatten(dict(rows))

    def close(self) -> None:
        """Close the connection of every thread of this process (a thread's connection is
        otherwise closed when the thread ends)."""
        pid = os.getpid()
        for conn in list(self._open_connections):
            if conn.owner_pid == pid:
                conn.close()
        self._local.__dict__.clear()

    def _connection(self) -> _Connection:
        """Return this thread's connection, opening one on first use or after a fork."""
        local = self._local
        held: _ThreadConnection | None = getattr(local, "held", None)
        if held is not None and held.conn.owner_pid == os.getpid():
            return held.conn
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        conn.owner_pid = os.getpid()
        self._use_wal(conn)
        self._open_connections.add(conn)
        # Replacing a hold inherited through fork runs its finalizer, which keeps that connection.
        local.held = _ThreadConnection(conn)
        weakref.finalize(local.held, _release, conn, self._inherited)
        return conn

    def _use_wal(self, conn: _Connection) -> None:
        """Switch the file to write-ahead logging, waiting out other processes doing the same.

        SQLite answers "database is locked" at once, without its busy timeout, while another
        connection holds the lock the switch needs: two workers opening a new file together
        would otherwise fail to start.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    conn.close()
                    raise
                time.sleep(0.01)

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one read-only query outside any transaction."""
        with self._translate():
            return self._connection().execute(sql, params).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[_Connection]:
        """Run the block in a write transaction, taking the file's write lock up front."""
        with self._translate():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn sqlite3 and file-system errors into the store's errors."""
        try:
            yield
        except (sqlite3.OperationalError, OSError) as exc:
            raise StoreUnavailable(
                f"state store {self.url} is unavailable ({exc}): check ROUTER_STATE_URL, "
                "that the directory is writable and the disk not full"
            ) from exc
        except sqlite3.Error as exc:
            raise StateStoreError(f"state store {self.url} failed: {exc}") from exc
