"""gunicorn settings shared by the router and the model service (``-c python:common.gunicorn_conf``).

Workers run gevent's WSGI server: they keep client connections alive (the router pools
connections to the model services; gunicorn's sync worker would close every one), cost about a
third of the CPU per request of the threaded worker, and let one router process wait on many
slow upstreams at once. Timeouts fit Heroku: the dyno gets SIGKILL 30 s after SIGTERM, so
in-flight requests get 25 s to finish.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

wsgi_app = None
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent_pywsgi")
worker_connections = 1000
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
keepalive = 75
timeout = 30
graceful_timeout = 25
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
proc_name = os.environ.get("GUNICORN_PROC_NAME", "model-router")


def on_starting(server):  # type: ignore[no-untyped-def]
    """Wipe the Prometheus multiprocess folder: stale worker files would skew every counter."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for item in path.iterdir():
            if item.suffix == ".db":
                item.unlink()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Mark a dead worker so its live gauges leave the exposition."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the runtime folder this server created for itself."""
    runtime = os.environ.get("SERVICE_RUNTIME_DIR")
    if runtime and os.environ.get("SERVICE_RUNTIME_OWNED") == "1":
        shutil.rmtree(runtime, ignore_errors=True)
control_socket_disable = True
