"""Thin Celery tasks: they take ids and call creditapp's job bodies and services."""
