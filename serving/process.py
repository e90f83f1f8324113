"""Starting a production WSGI server (gunicorn with gevent's WSGI workers) for either role.

    >>> exec_server("model_service.wsgi:app", bind_address(None, None, 8001))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import tempfile


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


def exec_server(target: str, bind: str, workers: int | None = None) -> None:
    """Replace this process with gunicorn serving ``target`` (same PID: signals reach it)."""
    from common.config import ConfigError
    from serving.options import optimisations

    try:
        optimisations(os.environ)
    except ConfigError as err:
        sys.exit(str(err))
    prepare_runtime_dir()
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf", "--bind", bind]
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv.append(target)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
