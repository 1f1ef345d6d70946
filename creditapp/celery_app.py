"""Celery the Flask way: tasks run inside the app context, configured from the app's config.

Production uses Redis (`CELERY_BROKER_URL` or `REDIS_URL`) and redbeat, so that only one beat
schedules, however many run. The embedded default uses Kombu's filesystem transport under
instance/, a broker that needs no server yet works across processes, and beat's file schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init
from flask import Flask

from creditapp.extensions import db
from creditapp.jobs.schedule import beat_schedule


def _broker_settings(app: Flask) -> dict[str, Any]:
    broker_url = app.config.get("CELERY_BROKER_URL")
    redis_url = app.config.get("REDIS_URL")
    if broker_url:
        settings: dict[str, Any] = {
            "broker_url": broker_url,
            "result_backend": redis_url or None,
            "broker_transport_options": {
                "visibility_timeout": app.config["CELERY_VISIBILITY_TIMEOUT"]
            },
        }
        if redis_url:
            # One beat across all machines: redbeat holds a lock in Redis, so a second beat
            # process waits instead of scheduling every job twice. The holder renews the lock
            # at least every loop; a waiting beat tries for it every loop, so when the holder
            # dies without releasing it (a killed process, a lost machine), another takes over
            # within the lock's timeout plus one loop.
            loop = app.config["BEAT_MAX_LOOP_SECONDS"]
            settings.update(
                beat_scheduler="redbeat.RedBeatScheduler",
                beat_max_loop_interval=loop,
                redbeat_redis_url=redis_url,
                redbeat_lock_timeout=loop * 5,
            )
        return settings
    queue_dir = Path(app.instance_path) / "celery-queue"
    queue_dir.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            # Kombu's exchange tables, written at run time (by default into the working directory).
            "control_folder": str(Path(app.instance_path) / "celery-control"),
        },
        "result_backend": None,
        "beat_schedule_filename": str(Path(app.instance_path) / "celery-beat-schedule"),
    }


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask, include=["tasks.jobs"])
    celery.conf.update(
        task_ignore_result=False,
        beat_schedule=beat_schedule(app.config),
        worker_hijack_root_logger=False,
        **_broker_settings(app),
    )
    celery.set_default()
    app.extensions["celery"] = celery

    @worker_process_init.connect(weak=False)
    def _own_connections(**_kwargs: Any) -> None:
        # A forked pool process must not share the parent's database connections.
        with app.app_context():
            db.engine.dispose(close=False)

    return celery
