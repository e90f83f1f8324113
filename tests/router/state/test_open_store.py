"""open_store: which ROUTER_STATE_URL values pick which backend, and which are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.state import open_store
from router.state.redis import RedisStateStore
from router.state.sqlite import SQLiteStateStore


def test_sqlite_url_with_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///state/router.db")
    assert isinstance(store, SQLiteStateStore)
    store.initialize({"strategy": "canary"})
    store.close()
    assert (tmp_path / "state" / "router.db").is_file()


def test_sqlite_url_with_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "abs" / "router.db"
    store = open_store(f"sqlite:///{path}")
    assert isinstance(store, SQLiteStateStore)
    store.initialize({"strategy": "canary"})
    store.close()
    assert path.is_file()


def test_plain_path_is_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    store = open_store(str(path))
    assert isinstance(store, SQLiteStateStore)
    store.close()
    assert path.is_file()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_redis_urls_pick_redis(scheme: str) -> None:
    store = open_store(f"{scheme}://127.0.0.1:6379/3?prefix=router-eu:")
    assert isinstance(store, RedisStateStore)
    assert store.prefix == "router-eu:"
    assert store.url == f"{scheme}://127.0.0.1:6379/3"
    store.close()


def test_redis_prefix_defaults_to_router() -> None:
    store = open_store("redis://127.0.0.1:6379/0")
    assert isinstance(store, RedisStateStore)
    assert store.prefix == "router:"
    store.close()


@pytest.mark.parametrize(
    "url", ["postgres://user:secret@db/state", "sqlite://router.db", "", "sqlite:///", ":memory:"]
)
def test_other_urls_are_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ValueError, match="ROUTER_STATE_URL") as raised:
        open_store(url)
    assert "redis://" in str(raised.value) and "sqlite:///" in str(raised.value)
    assert "secret" not in str(raised.value)
