"""What every door of the metered call shares at the HTTP layer: the app's meter (providers,
hold TTL, clock, keep-alive), and a streamed reply's response (Server-Sent Events)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from flask import Response, current_app, stream_with_context

from creditapp.billing import call as metered_call

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
    )


def event_stream(events: Iterator[bytes], headers: dict[str, str] | None = None) -> Response:
    response = Response(stream_with_context(events), status=200, content_type=EVENT_STREAM)
    response.headers.update(headers or {})
    # nginx and other proxies pass each event on at once instead of buffering the reply.
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["Cache-Control"] = "no-store"
    return response
