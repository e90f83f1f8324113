"""The production server layer both apps run on: gunicorn with one gevent worker class."""
