"""WSGI entry point for production servers: ``gunicorn model_service.wsgi:app``."""

from model_service.app import create_app

app = create_app()
