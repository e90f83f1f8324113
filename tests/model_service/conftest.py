"""Helpers for the model service tests: the data set, JSON posts, metric parsing, extra servers."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sklearn.datasets import load_breast_cancer

from tests.servers import ServerProcess, model_service

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="session")
def dataset() -> Any:
    """The breast cancer data the models are trained on (569 rows, 30 named features)."""
    return load_breast_cancer()


@pytest.fixture(scope="session")
def features(dataset: Any) -> list[str]:
    return [str(name) for name in dataset.feature_names]


def post(
    url: str,
    body: Any = None,
    *,
    data: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> requests.Response:
    """POST ``body`` as JSON (or raw ``data``) and return the response."""
    if body is not None:
        return requests.post(url, json=body, headers=headers, timeout=timeout)
    return requests.post(url, data=data, headers={**JSON, **(headers or {})}, timeout=timeout)


def error_of(resp: requests.Response) -> dict[str, str]:
    """The ``error`` object of a contract-shaped JSON error response (asserts the shape)."""
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:200]
    body = resp.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def sample_sum(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for got, value in samples.get(name, [])
        if all(got.get(k) == v for k, v in labels.items())
    )


def worker_pids(server: ServerProcess) -> list[int]:
    return sorted(child.pid for child in psutil.Process(server.proc.pid).children())


def requests_counted_by_worker(server: ServerProcess, pid: int) -> float:
    """``model_requests_total`` as one worker's own metric file holds it (0 before its first)."""
    folder = Path(psutil.Process(server.proc.pid).environ()["PROMETHEUS_MULTIPROC_DIR"])
    source = folder / f"counter_{pid}.db"
    if not source.exists():
        return 0.0
    with tempfile.TemporaryDirectory() as alone:
        shutil.copy(source, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=alone)
        return sum(
            sample.value
            for family in registry.collect()
            if family.name == "model_requests"
            for sample in family.samples
            if sample.name == "model_requests_total"
        )


@contextmanager
def started(*specs: tuple[str, Path, Path, dict[str, str]]) -> Iterator[list[ServerProcess]]:
    """Start several model services at once (their start-ups overlap) and stop them after."""
    with ExitStack() as stack:
        servers = [
            stack.enter_context(model_service(v, art, logs, **env)) for v, art, logs, env in specs
        ]
        for server in servers:
            server.wait_ready(timeout=90)
        yield servers
        for server in servers:  # let them all shut down at once; the stack then waits for each
            server.signal(signal.SIGTERM)


def rows_of(dataset: Any, n: int, start: int = 0) -> np.ndarray:
    """``n`` rows of the data set, wrapping around, starting at ``start``."""
    index = (np.arange(n) + start) % len(dataset.data)
    return np.asarray(dataset.data[index])
