"""Where the router keeps its routing state, audit log and leases; ``open_store`` picks a backend.

Example::

    from router.state import open_store

    store = open_store(os.environ.get("ROUTER_STATE_URL", "router-state.db"))
    state = store.read() or store.initialize({"strategy": "release-in-place"})
"""

from __future__ import annotations

from router.state.base import (
    StaleState,
    StateStore,
    StateStoreError,
    StoredState,
    StoreUnavailable,
)

__all__ = [
    "StaleState",
    "StateStore",
    "StateStoreError",
    "StoreUnavailable",
    "StoredState",
    "open_store",
]

_FORMS = (
    "sqlite:///path/to/state.db, a plain file path, or redis://host:port/db (rediss:// for TLS)"
)


def open_store(url: str) -> StateStore:
    """Open the state store that ``url`` (the value of ROUTER_STATE_URL) names.

    ``sqlite:///state.db`` is relative to the working directory, ``sqlite:////srv/state.db``
    absolute; a plain path means the same file as ``sqlite:///`` + path.
    """
    url = url.strip()
    if url.startswith(("redis://", "rediss://")):
        from router.state.redis import RedisStateStore

        return RedisStateStore(url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
    elif "://" in url or url.startswith("sqlite:"):
        scheme = url.split(":", 1)[0]
        raise ValueError(f"ROUTER_STATE_URL scheme {scheme!r} is not supported: use {_FORMS}")
    else:
        path = url
    if not path or path == ":memory:" or path.endswith(("/", "\\")):
        raise ValueError(f"ROUTER_STATE_URL={url!r} names no database file: use {_FORMS}")
    from router.state.sqlite import SQLiteStateStore

    return SQLiteStateStore(path)
