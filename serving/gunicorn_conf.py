"""gunicorn settings shared by the router and the model service (``-c python:serving.gunicorn_conf``).

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
    """In the exiting worker: write the request tallies it has not written yet, then publish the
    router instance's counts if no other worker does (the last one out does)."""
    import sys

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


IDLE_GRACE_S = 1.0  # after the signal, before idle keep-alive connections are ended


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """gevent WSGI workers: at shutdown, close connections that sit idle between requests.

    The worker waits up to graceful_timeout for every open connection, and a kept-alive idle
    one (a client's connection pool always holds some) never ends by itself, so a restart took
    the whole 25 s and ended in SIGKILL. Requests in flight, or already sent, still get answers.
    """
    handler = getattr(worker, "wsgi_handler", None)
    if handler is None:
        return
    _count_requests(worker)
    import fcntl
    import struct
    import termios
    from typing import Any

    import gevent

    from serving.handler import (
        JSONClientErrorsMixin,
        OneWriteMixin,
        QuietMixin,
        RequestHeaders,
        install_cached_date,
    )

    install_cached_date()

    # handler -> its greenlet, while it waits for the next request line of its connection
    waiting: dict[Any, Any] = {}

    def pending(conn: Any) -> int:
        """Bytes the client has sent that this connection has not read yet."""
        try:
            raw = fcntl.ioctl(conn.socket.fileno(), termios.FIONREAD, b"\0\0\0\0")
            return int(struct.unpack("i", raw)[0])
        except (AttributeError, OSError, ValueError):
            return 0

    def end_if_idle(conn: Any) -> None:
        """Run by the event loop: end a connection still waiting with nothing received.

        Its greenlet is stopped where it waits, before it has read a byte of a next request,
        so no request is ever half read: one whose first bytes are already here is served,
        and a request sent after this point finds the connection closed, unanswered (safe to
        send again), as with any server that ends idle keep-alive connections.
        """
        glet = waiting.get(conn)
        if glet is not None and not pending(conn):
            glet.throw(gevent.GreenletExit)

    class ClosingWhenStopped(JSONClientErrorsMixin, QuietMixin, OneWriteMixin, handler):  # type: ignore[misc, valid-type]
        served = False  # a connection is idle only between requests, never before its first
        MessageClass = RequestHeaders  # header parsing without the email package

        def read_requestline(self):  # type: ignore[no-untyped-def]
            if not self.served:  # accepted, so its request is coming: serve it (as gunicorn does)
                self.served = True
                return super().read_requestline()
            if cutting and not pending(self):
                return b""  # ends the connection: nothing of a next request has arrived
            waiting[self] = gevent.getcurrent()
            try:
                return super().read_requestline()
            finally:
                waiting.pop(self, None)

    cutting: list[bool] = []  # true once idle connections are being ended

    def close_idle_on_shutdown() -> None:
        while worker.alive:
            gevent.sleep(0.1)
        # A request a client began before the signal may still be on its way (a busy client
        # can be descheduled between connecting and sending): give it time to arrive and be
        # served before idle connections are ended.
        gevent.sleep(IDLE_GRACE_S)
        cutting.append(True)
        loop = gevent.get_hub().loop
        for conn in list(waiting):
            loop.run_callback(end_if_idle, conn)

    worker.wsgi_handler = ClosingWhenStopped
    gevent.spawn(close_idle_on_shutdown)


def _count_requests(worker):  # type: ignore[no-untyped-def]
    """Restart a gevent WSGI worker after max_requests requests.

    gunicorn counts requests only in the request loops of its other worker classes: for this
    one the setting would do nothing.
    """
    import sys

    if worker.max_requests >= sys.maxsize:  # not configured
        return
    app = worker.wsgi

    def counting(environ, start_response):  # type: ignore[no-untyped-def]
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            worker.log.info("Autorestarting worker after current request.")
            worker.alive = False
        return app(environ, start_response)

    worker.wsgi = counting


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the runtime folder this server created for itself."""
    runtime = os.environ.get("SERVICE_RUNTIME_DIR")
    if runtime and os.environ.get("SERVICE_RUNTIME_OWNED") == "1":
        shutil.rmtree(runtime, ignore_errors=True)
control_socket_disable = True
