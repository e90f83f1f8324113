"""Shared pieces of the benchmarks: starting servers, CPU accounting, latency loops, tables."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_artifacts() -> Path:
    root = ROOT / "artifacts"
    if not (root / "v1" / "metadata.json").exists() or not (root / "v2" / "metadata.json").exists():
        subprocess.run([sys.executable, "-m", "model_service", "train"], cwd=ROOT, check=True)
    return root


DEGRADED_ARTIFACTS = ROOT / "artifacts-degraded"
DEGRADED_SEED = 0
DEGRADED_SHARE = 0.5  # of the malignant training rows, labelled benign


def missed_diagnoses(labels: Any, share: float = DEGRADED_SHARE, seed: int = DEGRADED_SEED) -> Any:
    """``labels`` with a seeded random ``share`` of the malignant ones turned benign.

    A model trained on them has learned from a systematic labelling error (missed diagnoses):
    same type and size as one trained on the true labels, clearly worse predictions.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    malignant = np.flatnonzero(labels == "malignant")
    relabelled = labels.copy()
    relabelled[rng.choice(malignant, round(share * len(malignant)), replace=False)] = "benign"
    return relabelled


def ensure_degraded_artifacts(root: Path = DEGRADED_ARTIFACTS) -> Path:
    """An artifacts folder of v1 as trained and a deliberately degraded v2, built once.

    v2 is v1's pipeline (standardised logistic regression, so the same latency) trained with
    half of the malignant training rows labelled benign: on the whole data set it is right about
    22 points less often than v1. Both are packaged like any version (``train_spec``).
    """
    from model_service.packager import PackageError
    from model_service.training import VERSIONS, VersionSpec, train_spec

    stable = VERSIONS["v1"]
    degraded = VersionSpec(
        "v2", f"{stable.description} trained with {DEGRADED_SHARE:.0%} of the malignant "
        f"training rows labelled benign (seed {DEGRADED_SEED}): deliberately degraded",
        stable.build, missed_diagnoses)
    for spec in (stable, degraded):
        if not (root / spec.version / "metadata.json").exists():
            try:
                train_spec(spec, root)
            except PackageError:  # another process packaged it meanwhile
                if not (root / spec.version).exists():
                    raise
    return root


def sample_body(rows: int = 1) -> bytes:
    from sklearn.datasets import load_breast_cancer

    import orjson

    data = load_breast_cancer().data
    return orjson.dumps({"instances": [data[i % len(data)].tolist() for i in range(rows)]})


class Proc:
    """A server subprocess we started and stop by PID."""

    def __init__(self, argv: list[str], env: dict[str, str], url: str, ready: str = "/ready") -> None:
        full = {k: v for k, v in os.environ.items()
                if k not in ("PROMETHEUS_MULTIPROC_DIR", "SERVICE_RUNTIME_DIR")}
        full.update(env)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = url
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{argv} exited:\n{self.log.read().decode()[-3000:]}")
            try:
                if requests.get(url + ready, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{argv} not ready at {url}")

    def pids(self) -> list[int]:
        """This process and its descendants."""
        out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
        children: dict[int, list[int]] = {}
        for line in out.splitlines()[1:]:
            pid, ppid = map(int, line.split())
            children.setdefault(ppid, []).append(pid)
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> dict[int, float]:
        """CPU seconds (user and system) of this process and each descendant, by PID."""
        spent = {}
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            spent[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        return spent

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def model_service(version: str, port: int, workers: int = 1, **env: str) -> Proc:
    return Proc(
        [sys.executable, "-m", "model_service", "serve", "--version", version,
         "--port", str(port), "--workers", str(workers)],
        {"MODEL_ARTIFACTS": str(ROOT / "artifacts"), **env}, f"http://127.0.0.1:{port}",
    )


def router(port: int, upstreams: dict[str, str], workers: int = 1, **env: str) -> Proc:
    state = tempfile.mkdtemp(prefix="bench-router-")
    return Proc(
        [sys.executable, "-m", "router", "serve", "--port", str(port), "--workers", str(workers)],
        {"ROUTER_UPSTREAMS": ",".join(f"{k}={v}" for k, v in upstreams.items()),
         "ROUTER_STATE_URL": f"{state}/state.db", "ROUTER_ADMIN_TOKEN": "bench", **env},
        f"http://127.0.0.1:{port}",
    )


def nginx(port: int, upstream_port: int) -> Proc | None:
    """nginx from the system package as a reverse-proxy reference; None when not installed."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    (prefix / "logs").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  upstream model {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://model; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    return Proc([binary, "-p", str(prefix), "-c", str(conf)], {}, f"http://127.0.0.1:{port}",
                ready="/health")


def wrk(url: str, body: bytes, seconds: float, connections: int = 4) -> float:
    """Requests per second measured by wrk (POST /predict with ``body``)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    escaped = body.decode().replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.body = "{escaped}"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url + "/predict"],
        capture_output=True, text=True, check=True,
    ).stdout
    script.unlink()
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
        if "Non-2xx" in line:
            raise RuntimeError(f"wrk saw errors: {line}")
    raise RuntimeError(f"wrk output not understood:\n{out}")


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk_latency(url: str, path: str, body: bytes | None, seconds: float) -> tuple[float, float]:
    """(p50, p99) in seconds of ``path`` at concurrency 1 on one keep-alive connection, by wrk.

    wrk is a C client: what it measures is the server and the network, not the client's own
    request building and response parsing. ``body`` None sends GET, else POST with JSON.
    """
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    if body is None:
        script.write_text('wrk.method = "GET"\n')
    else:
        escaped = body.decode().replace("\\", "\\\\").replace('"', '\\"')
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.body = "{escaped}"\n'
        )
    try:
        out = subprocess.run(
            ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-s", str(script), url + path],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        script.unlink()
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors from {url}{path}:\n{out}")
    found: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            number = parts[1].rstrip("usm")
            unit = parts[1][len(number):]
            found[parts[0]] = float(number) * _UNITS[unit]
    if len(found) != 2:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return found["50%"], found["99%"]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["measure", "value", "target", "verdict"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def start_together(*starters: Callable[[], Proc]) -> list[Proc]:
    """Start several servers at once (each starter returns a ready Proc); stops them all on failure."""
    with ThreadPoolExecutor(len(starters)) as pool:
        futures = [pool.submit(start) for start in starters]
        wait(futures)
    procs = [f.result() for f in futures if f.exception() is None]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        stop_together(procs)
        raise errors[0]  # type: ignore[misc]
    return procs


def stop_together(procs: list[Proc], quick: bool = False) -> None:
    """Signal every server at once, then wait for each (see Proc.stop).

    SIGTERM lets gunicorn finish in-flight requests; ``quick`` sends SIGINT, its fast shutdown,
    for servers nobody is talking to any more.
    """
    for proc in procs:
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGINT if quick else signal.SIGTERM)
    for proc in procs:
        proc.stop()
