"""The gunicorn worker class both services run on (``worker_class`` in ``serving.gunicorn_conf``).

gunicorn's gevent WSGI worker, plus:

- its handler is :func:`serving.handler.handler_class`: JSON errors for invalid HTTP and the
  optimisations ``SERVING_OPTIMISATIONS`` leaves on;
- ``max_requests`` works: gunicorn counts requests only in the request loops of its other
  worker classes, so for this one the setting did nothing;
- at shutdown, connections idle between requests are ended after :data:`IDLE_GRACE_S`, so a
  restart does not wait the whole ``graceful_timeout`` (and end in SIGKILL) for a client's
  pooled connections; requests in flight, or already sent, still get answers.

    gunicorn -k serving.worker.ServingWorker model_service.wsgi:app  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker

from serving.handler import IdleConnections, handler_class
from serving.options import optimisations

IDLE_GRACE_S = 1.0  # after the signal, before idle keep-alive connections are ended


class ServingWorker(GeventPyWSGIWorker):  # type: ignore[misc]
    """gevent's WSGI server with the product's handler, request counting and idle closing."""

    def init_process(self) -> None:
        self.idle_connections = IdleConnections()
        self.wsgi_handler = handler_class(optimisations(os.environ), self.idle_connections)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if self.max_requests < sys.maxsize:  # configured
            self.wsgi = self._counting(self.wsgi)

    def _counting(self, app: Any) -> Any:
        """``app``, counting requests to restart this worker after ``max_requests``."""

        def counting(environ: Any, start_response: Any) -> Any:
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            return app(environ, start_response)

        return counting

    def run(self) -> None:
        import gevent

        gevent.spawn(self._close_idle_at_shutdown)
        super().run()

    def _close_idle_at_shutdown(self) -> None:
        import gevent

        while self.alive:
            gevent.sleep(0.1)
        # A request a client began before the signal may still be on its way (a busy client
        # can be descheduled between connecting and sending): give it time to arrive and be
        # served before idle connections are ended.
        gevent.sleep(IDLE_GRACE_S)
        self.idle_connections.close()
