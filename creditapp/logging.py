"""Structured JSON logs; every line a request caused carries its request id."""

from __future__ import annotations

import logging
import sys

import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (test runners swap it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _LibraryLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The libraries' lines (Flask, SQLAlchemy, Celery, the providers' SDKs), which log through
    the standard library: rendered as JSON by the same processors as creditapp's own, so that
    an operator's log pipeline reads one format, request id included."""


def configure_logging(level: str = "INFO") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendered: list[structlog.types.Processor] = [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]
    structlog.configure(
        processors=[*shared, *rendered],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _route_library_lines(shared, rendered)


def _route_library_lines(
    shared: list[structlog.types.Processor], rendered: list[structlog.types.Processor]
) -> None:
    """One handler on the root logger, whatever number of apps a process creates. The root
    stays at WARNING: the libraries' INFO lines (httpx's one per provider request) are noise
    beside creditapp's own line per request."""
    root = logging.getLogger()
    handler = _LibraryLines(_CurrentStderr())  # type: ignore[arg-type]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendered],
        )
    )
    root.handlers = [kept for kept in root.handlers if not isinstance(kept, _LibraryLines)]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
