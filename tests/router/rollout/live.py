"""Helpers for whole rollouts against real servers: client traffic, the admin API, /metrics.

>>> with Traffic(router.url) as traffic:          # doctest: +SKIP
...     rollout = Admin(router.url).start({"strategy": "canary", ...})
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests
from sklearn.datasets import load_breast_cancer

from tests.servers import ServerProcess, wait_until
from tests.servers import scrape as servers_scrape

TOKEN = "admin-secret"
REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/13")
ROWS: list[list[float]] = load_breast_cancer().data.tolist()
DONE = ("promoted", "rolled_back", "aborted")
ACTIVE = ("running", "paused", "awaiting_promotion")


StartRouter = Callable[..., ServerProcess]
StartService = Callable[..., ServerProcess]


def shut(server: ServerProcess) -> None:
    """Stop a server quickly (SIGINT: gunicorn's quick shutdown), by its PID."""
    server.signal(signal.SIGINT)
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    server.stop()


@dataclass(frozen=True)
class Sent:
    """One client request: when it completed (epoch seconds, like the router's decision times)."""

    at: float
    status: int
    version: str | None  # X-Model-Version: the label that answered
    model_version: str | None  # the model that predicted, from the body


class Traffic:
    """Client traffic: a few threads, each with its own keep-alive session, until stopped."""

    def __init__(
        self,
        url: str,
        threads: int = 4,
        rows: list[list[float]] = ROWS,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.rows = rows
        self.headers = headers or {}
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, index: int) -> None:
        with requests.Session() as session:
            i = index
            while not self._stop.is_set():
                row = self.rows[i % len(self.rows)]
                i += len(self._threads)
                try:
                    resp = session.post(
                        self.url + "/predict",
                        json={"instances": [row]},
                        headers=self.headers,
                        timeout=10,
                    )
                    body = resp.json() if resp.status_code == 200 else {}
                    sent = Sent(
                        time.time(),
                        resp.status_code,
                        resp.headers.get("X-Model-Version"),
                        body.get("model_version"),
                    )
                except requests.RequestException:
                    sent = Sent(time.time(), 0, None, None)
                    time.sleep(0.05)
                with self._lock:
                    self.sent.append(sent)

    def between(self, start: float, end: float = float("inf")) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if start <= s.at <= end]


def predict(url: str, n: int) -> list[requests.Response]:
    """``n`` sequential predictions, one breast-cancer row each."""
    with requests.Session() as session:
        return [
            session.post(url + "/predict", json={"instances": [ROWS[i % len(ROWS)]]}, timeout=10)
            for i in range(n)
        ]


def wait_all_answered_by(url: str, version: str) -> None:
    """Until a state change has reached every worker: batches answered only by ``version``.

    Each request takes a new connection, so the router's workers all get some.
    """

    def answered_by(i: int) -> str | None:
        resp = requests.post(
            url + "/predict",
            json={"instances": [ROWS[i]]},
            timeout=10,
            headers={"Connection": "close"},
        )
        return resp.headers.get("X-Model-Version")

    def batch() -> bool:
        with ThreadPoolExecutor(4) as pool:
            return set(pool.map(answered_by, range(24))) == {version}

    wait_until(lambda: batch() and batch(), 10)


def wait_every_worker_counts(url: str, name: str, timeout: float = 20, **labels: str) -> None:
    """Until a state change has reached every worker: each request of a batch on new connections
    (so on every worker) adds one to the metric ``name`` with ``labels`` (a mirrored copy, say)."""

    def send(i: int) -> None:
        requests.post(
            url + "/predict",
            json={"instances": [ROWS[i]]},
            timeout=10,
            headers={"Connection": "close"},
        )

    def counted() -> float:
        return metric(scrape(url), name, **labels)

    def batch_counted() -> bool:
        start = counted()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, range(16)))
        try:
            wait_until(lambda: counted() - start >= 16, 3)
        except TimeoutError:
            return False
        return True

    wait_until(batch_counted, timeout)


class Admin:
    """The router's admin API with the test token."""

    def __init__(self, url: str, token: str = TOKEN) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        # one connection per call: no idle keep-alive connection delays a server's shutdown
        resp = requests.request(method, self.url + path, headers=self.headers, timeout=10, **kwargs)
        assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def state(self) -> dict[str, Any]:
        return self.call("GET", "/admin/state")  # type: ignore[no-any-return]

    def rollout(self) -> dict[str, Any]:
        return self.call("GET", "/admin/rollout")["rollout"]  # type: ignore[no-any-return]

    def start(self, plan: dict[str, Any], expect: int = 200) -> dict[str, Any]:
        return self.call("POST", "/admin/rollout", expect, json=plan)  # type: ignore[no-any-return]

    def events(self) -> list[dict[str, Any]]:
        return self.call("GET", "/admin/events", params={"limit": 1000})["events"]  # type: ignore[no-any-return]

    def rollout_events(self) -> list[dict[str, Any]]:
        """The audit events since the latest rollout started, that start included."""
        events = self.events()
        starts = [i for i, e in enumerate(events) if e["action"] == "rollout.start"]
        return events[starts[-1] :] if starts else []

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        """Poll GET /admin/rollout until ``predicate(rollout)``; returns that rollout."""

        def check() -> dict[str, Any] | None:
            rollout = self.rollout()
            return rollout if rollout and predicate(rollout) else None

        try:
            return wait_until(check, timeout, interval=0.1)  # type: ignore[no-any-return]
        except TimeoutError:
            raise AssertionError(f"rollout never got there: {self.rollout()}") from None

    def wait_done(self, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(lambda r: r["status"] in DONE, timeout)


@dataclass
class Stack:
    """A router and its admin API."""

    router: ServerProcess
    admin: Admin

    @property
    def url(self) -> str:
        return self.router.url


def judged(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    """The decisions that were not waits."""
    return [d for d in rollout["decisions"] if d["action"] != "wait"]


def check_named(decision: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in decision["checks"] if c["name"] == name]
    return found


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``url``/metrics: (name, labels) -> value."""
    return {
        (name, frozenset(labels.items())): value
        for name, samples in servers_scrape(url).items()
        for labels, value in samples
    }


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def share(sent: Iterable[Sent], version: str) -> tuple[int, int]:
    """(answered by ``version``, answered at all) among ``sent``."""
    answered = [s for s in sent if s.status == 200]
    return sum(1 for s in answered if s.version == version), len(answered)


@contextmanager
def redis_state(name: str) -> Iterator[str]:
    """A ROUTER_STATE_URL under a key prefix of its own, whose keys are deleted afterwards.

    Without a Redis the test skips, unless CI is "true": then it fails.
    """
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        client.close()
        reason = f"no Redis answers at {REDIS_URL} ({exc}); start one or set REDIS_TEST_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true, so this test must run, not skip)")
        pytest.skip(reason)
    prefix = f"test-{name}-{uuid.uuid4().hex[:12]}:"
    try:
        yield f"{REDIS_URL}?prefix={prefix}"
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
