"""A webhook receiver on loopback, as an integrator would run one: it verifies every request's
signature with the `standardwebhooks` package and answers as a test scripts it.

Answers are taken from a queue (`script`), then `default` (200): a status, a delay, a hang
until `release` (or the hang's limit), headers such as a redirect's `Location`. `fail_for`
answers with an error for a while, then recovers (the chaos run's receiver). Every request is
recorded before it is answered, with whether its signature verified; `failures` names each
that did not.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# A hung answer is given up after this long, so that a test that forgets to release it ends.
HANG_LIMIT_SECONDS = 60.0


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # answer only once released (or after HANG_LIMIT_SECONDS)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    verified: bool
    payload: Any  # the parsed body, when its signature verified

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class WebhookReceiver:
    """Listens on 127.0.0.1 until `close` (over TLS with `tls`); `url(path)` is where an
    endpoint points."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        default: Answer | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        self.secret = secret
        self.default = default or Answer()
        self._answers: deque[Answer] = deque()
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._failing_until = 0.0
        self._failing_status = 503
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._scheme = "http"
        if tls is not None:  # https: the context has the certificate and key
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hooks", *, host: str = "127.0.0.1") -> str:
        return f"{self._scheme}://{host}:{self.port}{path}"

    def script(self, *answers: Answer | int) -> None:
        """Answer the next requests so, in order (an int is a status)."""
        with self._lock:
            self._answers.extend(
                Answer(answer) if isinstance(answer, int) else answer for answer in answers
            )

    def fail_for(self, seconds: float, status: int = 503) -> None:
        """Answer `status` to every request for `seconds` from now, then recover."""
        with self._lock:
            self._failing_until = time.monotonic() + seconds
            self._failing_status = status

    def release(self) -> None:
        """Let every hung answer go (and those to come)."""
        self._released.set()

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def failures(self) -> list[str]:
        """Why each request that did not verify was refused."""
        return [
            f"{request.webhook_id or '(no webhook-id)'}: signature did not verify"
            for request in self.received
            if not request.verified
        ]

    def ids(self) -> Counter[str]:
        """How many requests came with each webhook-id."""
        return Counter(request.webhook_id for request in self.received)

    def ids_by_body(self) -> dict[bytes, set[str]]:
        """The webhook-ids each body came with: one event sent under two ids shows as a body
        with two (an event's body names its type, its time to the microsecond and its data)."""
        found: dict[bytes, set[str]] = {}
        for request in self.received:
            found.setdefault(request.body, set()).add(request.webhook_id)
        return found

    def wait_for(self, condition: Callable[[WebhookReceiver], bool], seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not condition(self):
            assert time.monotonic() < deadline, f"receiver: still waiting, got {self.ids()}"
            time.sleep(0.02)

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _next_answer(self) -> Answer:
        with self._lock:
            if time.monotonic() < self._failing_until:
                return Answer(self._failing_status)
            return self._answers.popleft() if self._answers else self.default

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        payload: Any = None
        verified = False
        if self.secret is not None:
            try:
                payload = Webhook(self.secret).verify(body, headers)
                verified = True
            except (WebhookVerificationError, ValueError):
                verified = False
        with self._lock:
            self._received.append(Received(path, headers, body, verified, payload))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver._record(self.path, headers, body)
                answer = receiver._next_answer()
                if answer.hang:
                    receiver._released.wait(HANG_LIMIT_SECONDS)
                elif answer.delay:
                    time.sleep(answer.delay)
                # The sender may have given up waiting (a timeout, a killed run).
                with suppress(OSError):
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler
