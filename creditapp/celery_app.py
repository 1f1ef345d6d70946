"""Celery the Flask way (Flask's `examples/celery`): tasks run inside the app context, and
Celery's settings come from the app's config (`CELERY`, built in `creditapp.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init
from flask import Flask

from creditapp.extensions import db


def celery_init_app(app: Flask) -> Celery:
    # The Celery layer's own schedule; imported here, as the factory imports the HTTP layer.
    from tasks.jobs import beat_schedule

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask, include=["tasks.jobs"])
    celery.config_from_object(app.config["CELERY"])
    celery.conf.beat_schedule = beat_schedule(app.config["JOB_PERIODS"])
    folders = celery.conf.broker_transport_options or {}
    for folder in ("data_folder_in", "data_folder_out", "control_folder"):
        if folder in folders:  # the file-system broker writes there but does not create them
            Path(folders[folder]).mkdir(parents=True, exist_ok=True)
    celery.set_default()
    app.extensions["celery"] = celery

    @worker_process_init.connect(weak=False)
    def _own_connections(**_kwargs: Any) -> None:
        # A forked pool process must not share the parent's database connections.
        with app.app_context():
            db.engine.dispose(close=False)

    return celery
