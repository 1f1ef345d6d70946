"""Celery the Flask way: tasks run inside the app context, configured from the app's config.

Production uses Redis (`CELERY_BROKER_URL` or `REDIS_URL`). The embedded default uses Kombu's
filesystem transport under instance/, a broker that needs no server yet works across processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, Task
from flask import Flask


def _broker_settings(app: Flask) -> dict[str, Any]:
    broker_url = app.config.get("CELERY_BROKER_URL")
    if broker_url:
        return {"broker_url": broker_url, "result_backend": app.config.get("REDIS_URL") or None}
    queue_dir = Path(app.instance_path) / "celery-queue"
    queue_dir.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
        },
        "result_backend": None,
    }


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.conf.update(task_ignore_result=False, **_broker_settings(app))
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
