"""WSGI entry point for production servers: ``gunicorn router.wsgi:app``."""

import gc

from router.app import create_app
from serving.lifecycle import at_worker_exit

app = create_app()
at_worker_exit(app.extensions["router"].close)
# What is loaded by now lives as long as the worker: kept out of full collections' walk.
gc.collect()
gc.freeze()
