"""Every name of gevent or gunicorn the serving layer uses that is not their documented API.

Each was checked against the version named here; ``tests/serving/test_private_names.py`` fails
when the installed version differs or when a name no longer behaves as described (it exercises
each one on a real server). On an upgrade: run that test, re-check each failing row against the
new release, then update ``CHECKED`` and the row.

Documented seams are not listed: gunicorn's ``worker_class`` setting and ``Worker.init_process`` /
``load_wsgi`` / ``run``; gevent's ``WSGIServer.handler_class``, ``WSGIHandler.read_requestline``,
``read_request``, ``handle_one_request`` (its return values), ``write`` and ``MessageClass``.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKED = {"gevent": "26.9.0", "gunicorn": "27.0.1"}


@dataclass(frozen=True)
class PrivateName:
    """One undocumented name we rely on, and what we rely on it doing."""

    name: str
    library: str
    used_by: str
    relied_on: str


NAMES = (
    PrivateName(
        "WSGIHandler.finalize_headers()", "gevent", "handler.OneWrite",
        "called once before the head is written: appends Date (unless the application gave one) "
        "and Content-Length (for a sized result) to response_headers, or decides on chunked framing",
    ),
    PrivateName(
        "WSGIHandler.status, .response_headers", "gevent", "handler.OneWrite",
        "after start_response: the status line as latin-1 bytes and the headers as (bytes, bytes) "
        "pairs, in order; the head is these, serialised as gevent does",
    ),
    PrivateName(
        "WSGIHandler.headers_sent", "gevent", "handler.OneWrite",
        "false until the head is out; write() sends only body bytes once it is true",
    ),
    PrivateName(
        "WSGIHandler.response_use_chunked", "gevent", "handler.OneWrite",
        "set by finalize_headers(); when true, write() frames each body chunk",
    ),
    PrivateName(
        "WSGIHandler.response_length, .code", "gevent", "handler.OneWrite",
        "bytes sent for the access log; the numeric status, made negative on a failed send",
    ),
    PrivateName(
        "WSGIHandler.socket", "gevent", "handler.ServingHandler, handler.OneWrite",
        "the connection's socket: its fileno() tells how many bytes wait unread; send() and sendall() send",
    ),
    PrivateName(
        "MessageClass(rfile, 0) result: .status, get(), getheader(), typeheader, headers",
        "gevent", "handler.RequestHeaders",
        "read_request() rejects the request when status is non-empty, reads Content-Length, "
        "Transfer-Encoding and Connection with get() (the reader refuses a request with both "
        "framings, so gevent never deletes a Content-Length); "
        "get_environ() uses typeheader, getheader() and the 'Name: value\\r\\n' lines of headers",
    ),
    PrivateName(
        "Input(rfile, content_length, socket, chunked_input): _chunked_read, _send_100_continue, "
        "_chunked_input_error, _discard; _InvalidClientInput; WSGIHandler.wsgi_input",
        "gevent", "chunked.ChunkedInput, handler.ServingHandler.get_environ",
        "get_environ() puts the request's Input in self.wsgi_input and environ['wsgi.input']; "
        "read() and readline() of a chunked body go through _chunked_read(length, use_readline); "
        "_send_100_continue() answers 'Expect: 100-continue' once; after the response the handler "
        "calls wsgi_input._discard(), which reads an unread body to its end unless "
        "_chunked_input_error is set; an _InvalidClientInput escaping there is a 400 and a closed "
        "connection",
    ),
    PrivateName(
        "MessageClass result: items()", "gunicorn", "handler.RequestHeaders",
        "PyWSGIHandler.log_request() passes headers.items() to the access log",
    ),
    PrivateName(
        "workers.ggevent.PyWSGIHandler", "gunicorn", "handler.ServingHandler",
        "gunicorn's gevent handler: adds gunicorn.sock and RAW_URI to the environ, access log",
    ),
    PrivateName(
        "GeventWorker.wsgi_handler", "gunicorn", "worker.ServingWorker",
        "run() passes it to the server as handler_class; set per worker in init_process()",
    ),
    PrivateName(
        "Worker.wsgi, .nr, .max_requests, .alive, .log", "gunicorn", "worker.ServingWorker",
        "wsgi is the application run() serves (set by load_wsgi()); max_requests is sys.maxsize "
        "unless configured (plus jitter); alive false makes run() stop accepting and wait for "
        "open connections up to graceful_timeout; nr counts requests",
    ),
)
