"""The Celery entry point: `celery -A celery_worker worker` / `beat`."""

from creditapp import create_app

app = create_app()
celery = app.extensions["celery"]
