"""WSGI entry point for production servers: ``gunicorn router.wsgi:app``."""

from router.app import create_app

app = create_app()
