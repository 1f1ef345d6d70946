"""Celery tasks: thin wrappers that name a job and call `creditapp.jobs`, nothing more."""
