"""The Celery entry point: `celery -A celery_worker:celery worker` (add `--beat`, or run `beat`)."""

from creditapp import create_app

app = create_app()
celery = app.extensions["celery"]
