"""WSGI entry point for production servers: ``gunicorn router.wsgi:app``."""

from router.app import create_app
from serving.lifecycle import at_worker_exit

app = create_app()
at_worker_exit(app.extensions["router"].close)
