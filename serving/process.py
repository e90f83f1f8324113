"""Starting a production WSGI server (gunicorn with gevent's WSGI workers) for either role.

    >>> exec_server("model_service.wsgi:app", bind_address(None, None, 8001))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import tempfile

# The router's worker processes unless told otherwise. One gevent worker forwards about 8,000
# requests a second on one core (loadtest/bench_router.py); a second one pays only on a machine
# whose cores the router has to itself: beside its model services and clients, two router
# workers sharing a connection load are two more busy processes on the same cores, and every
# process then does more work per request (more wake-ups, colder caches).
ROUTER_WORKERS = 1


def bind_address(bind: str | None, port: int | None, default_port: int, host: str | None = None) -> str:
    """``--bind`` wins, then ``--port``, then ``$PORT``, then the role's default port.

    Under ``$PORT`` (Heroku) the server listens on every interface; otherwise on loopback.
    """
    if bind:
        return bind
    env_port = os.environ.get("PORT")
    if host is None:
        host = "0.0.0.0" if env_port and port is None else "127.0.0.1"
    if port is None:
        port = int(env_port) if env_port else default_port
    return f"{host}:{port}"


def prepare_runtime_dir() -> str:
    """A private folder for this server's worker-shared files (metrics, control files)."""
    runtime = os.environ.get("SERVICE_RUNTIME_DIR")
    if not runtime:
        runtime = tempfile.mkdtemp(prefix="model-router-")
        os.environ["SERVICE_RUNTIME_DIR"] = runtime
        os.environ["SERVICE_RUNTIME_OWNED"] = "1"
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(runtime, "prometheus"))
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    return runtime


def exec_server(target: str, bind: str, workers: int | None = None, default_workers: int = 2) -> None:
    """Replace this process with gunicorn serving ``target`` (same PID: signals reach it).

    Worker processes: ``workers``, else ``$WEB_CONCURRENCY`` (Heroku's Python buildpack sets it
    from the dyno size), else the role's ``default_workers``.
    """
    from common.config import ConfigError
    from serving.options import optimisations

    try:
        optimisations(os.environ)
    except ConfigError as err:
        sys.exit(str(err))
    prepare_runtime_dir()
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf", "--bind", bind]
    given = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not given:
        os.environ.pop("WEB_CONCURRENCY", None)  # set but empty: gunicorn itself would fail on it
    elif not (given.isascii() and given.isdigit() and int(given) > 0):
        sys.exit(f"WEB_CONCURRENCY={given!r} is not a number of worker processes: set a whole "
                 "number of at least 1, or unset it for the default")
    if workers is None and not given:
        workers = default_workers
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv.append(target)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
