"""What every door of the metered call shares at the HTTP layer: the app's meter (providers,
hold TTL, clock, keep-alive), and a streamed reply's response (Server-Sent Events)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from flask import Flask, Response, current_app, g, stream_with_context

from creditapp.billing import call as metered_call
from creditapp.database import DbSession
from creditapp.extensions import db

EVENT_STREAM = "text/event-stream; charset=utf-8"
# What a stream sends while the provider is silent: a comment, which every SSE client skips.
KEEP_ALIVE = b": keep-alive\n\n"


def meter() -> metered_call.Meter:
    config = current_app.config
    return metered_call.Meter(
        providers=current_app.extensions["providers"],
        hold_ttl=timedelta(seconds=config["HOLD_TTL_SECONDS"]),
        clock=lambda: datetime.now(UTC),
        silence=config["STREAM_KEEPALIVE_SECONDS"],
        in_own_session=in_own_session(current_app._get_current_object()),  # type: ignore[attr-defined]
        stream_deadline=timedelta(seconds=config["STREAM_DEADLINE_SECONDS"]),
    )


def in_own_session(app: Flask) -> Callable[[Callable[[DbSession], Any]], Any]:
    """Runs work in an app context of its own, so with a session of its own, for a thread
    other than the request's: under the request's id, in what it writes (an error's
    `request_id`) and in its log lines."""
    request_id = g.get("request_id")

    def run(work: Callable[[DbSession], Any]) -> Any:
        with app.app_context(), structlog.contextvars.bound_contextvars(request_id=request_id):
            g.request_id = request_id
            try:
                return work(db.session)
            finally:
                db.session.remove()

    return run


def event_stream(events: Iterator[bytes], headers: dict[str, str] | None = None) -> Response:
    response = Response(stream_with_context(events), status=200, content_type=EVENT_STREAM)
    response.headers.update(headers or {})
    # nginx and other proxies pass each event on at once instead of buffering the reply.
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["Cache-Control"] = "no-store"
    return response
