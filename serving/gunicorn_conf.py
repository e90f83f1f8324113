"""gunicorn settings shared by the router and the model service (``-c python:serving.gunicorn_conf``).

Workers are ``serving.worker.ServingWorker``, gevent's WSGI server: they keep client
connections alive (the router pools connections to the model services; gunicorn's sync worker
would close every one), cost about a third of the CPU per request of the threaded worker, and let
one router process wait on many slow upstreams at once. Timeouts fit Heroku: the dyno gets
SIGKILL 30 s after SIGTERM, so in-flight requests get 25 s to finish.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from serving.options import optimisations

optimisations(os.environ)  # checked here, so a mistake stops the server before any worker starts

wsgi_app = None
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "serving.worker.ServingWorker")
worker_connections = 1000
# the role's own default (serving.process.exec_server: the router 1, a model service 2) arrives
# as --workers, which wins over this
workers = int(os.environ.get("WEB_CONCURRENCY") or "2")
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
keepalive = 75
timeout = 30
graceful_timeout = 25
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
proc_name = os.environ.get("GUNICORN_PROC_NAME", "model-router")
# Restart a worker after this many requests (0: never), e.g. to bound a slow leak; the jitter
# (default a tenth of it) keeps the workers from restarting all at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", str(max_requests // 10)))


def on_starting(server):  # type: ignore[no-untyped-def]
    """Wipe the Prometheus multiprocess folder: stale worker files would skew every counter.

    The counters start again here, so this run gets a new id, which the workers inherit: a
    router publishes its counts under it (``metrics.published``).
    """
    import uuid

    os.environ["SERVICE_RUN_ID"] = uuid.uuid4().hex
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for item in path.iterdir():
            if item.suffix == ".db":
                item.unlink()


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """In the exiting worker: close what the app registered (the router: its controller,
    mirror, refreshers, pools and store), write the request tallies not written yet, then
    publish the router instance's counts if no other worker does (the last one out does)."""
    import sys

    from serving.lifecycle import run_worker_exit

    run_worker_exit()

    router_metrics = sys.modules.get("metrics.router")
    if router_metrics is not None:
        router_metrics.flush_all()
    published = sys.modules.get("metrics.published")
    if published is not None:
        published.finish_all()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Fold a dead worker's metric files into the archive: its counts stay, its files go.

    Without this every restarted worker (GUNICORN_MAX_REQUESTS, a crash, a timeout) would leave
    its files behind, and the folder would grow without bound.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from metrics.multiprocess import archive_dead_worker

        archive_dead_worker(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the runtime folder this server created for itself."""
    runtime = os.environ.get("SERVICE_RUNTIME_DIR")
    if runtime and os.environ.get("SERVICE_RUNTIME_OWNED") == "1":
        shutil.rmtree(runtime, ignore_errors=True)
control_socket_disable = True
