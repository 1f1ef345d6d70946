"""A loopback HTTP server speaking OpenAI's, Anthropic's and Gemini's wire formats, so that
tests drive the official SDKs end to end.

Each provider has a queue of scripted answers (usage, text, status, delay, raw body, missing
usage); with nothing scripted it answers like the provider would, with usage counted from the
request. Every request is recorded. Answers are JSON, or SSE when the request asks to stream.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROVIDERS = ("openai", "anthropic", "google")
COUNTED = "counted"
GEMINI_PATH = re.compile(r"/google/v1(beta)?/models/(?P<model>[^:/]+):(?P<method>\w+)")


@dataclass
class Answer:
    """One scripted answer. `usage` is in the provider's own field names; None omits usage;
    COUNTED counts it from the request and the text, like the provider would."""

    text: str = "A scripted reply."
    usage: dict[str, Any] | str | None = "counted"
    status: int = 200
    delay: float = 0.0
    raw_body: bytes | None = None
    # When set, the answer waits for it (at most a minute): a provider that answers exactly
    # when the test says so.
    gate: threading.Event | None = None
    thinking: str | None = None


def _default_usage(provider: str, body: dict[str, Any], text: str) -> dict[str, Any]:
    prompt = json.dumps(body.get("messages") or body.get("contents") or [])
    prompt_tokens = len(prompt.encode()) // 4 + 1
    output_tokens = len(text.encode()) // 4 + 1
    if provider == "openai":
        return {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens}
    if provider == "anthropic":
        return {"input_tokens": prompt_tokens, "output_tokens": output_tokens}
    return {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens}


def _openai(model: str, answer: Answer, usage: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
    }
    if usage is not None:
        usage = dict(usage)
        usage.setdefault(
            "total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        )
        body["usage"] = usage
    return body


def _anthropic(model: str, answer: Answer, usage: dict[str, Any] | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.thinking:
        content.append({"type": "thinking", "thinking": answer.thinking, "signature": "sig"})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    body: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _google(model: str, answer: Answer, usage: dict[str, Any] | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if answer.thinking:
        parts.append({"text": answer.thinking, "thought": True})
    if answer.text:
        parts.append({"text": answer.text})
    body: dict[str, Any] = {
        "candidates": [
            {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}
        ],
        "modelVersion": model,
        "responseId": "fake",
    }
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def _error(provider: str, status: int) -> dict[str, Any]:
    if provider == "openai":
        return {
            "error": {
                "message": "scripted failure",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    if provider == "anthropic":
        return {"type": "error", "error": {"type": "api_error", "message": "scripted failure"}}
    return {"error": {"code": status, "message": "scripted failure", "status": "INTERNAL"}}


_BODIES = {"openai": _openai, "anthropic": _anthropic, "google": _google}


class FakeProviders:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Answer]] = {name: deque() for name in PROVIDERS}
        self._calls: dict[str, list[dict[str, Any]]] = {name: [] for name in PROVIDERS}
        self.delay = 0.0  # added to every answer (a slow provider)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm
                # and the client's delayed ACK add ~40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                fake._answer(self, raw)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (a timeout test) closed the socket first

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def root(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def base_urls(self) -> dict[str, str]:
        """The environment that points the SDKs here."""
        return {
            "OPENAI_BASE_URL": f"{self.root}/openai/v1",
            "ANTHROPIC_BASE_URL": f"{self.root}/anthropic",
            "GOOGLE_GEMINI_BASE_URL": f"{self.root}/google/",
            "OPENAI_API_KEY": "test-openai-key",
            "ANTHROPIC_API_KEY": "test-anthropic-key",
            "GEMINI_API_KEY": "test-gemini-key",
        }

    def script(self, provider: str, *answers: Answer) -> None:
        with self._lock:
            self._scripts[provider].extend(answers)

    def calls(self, provider: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._calls[provider])

    def reset(self) -> None:
        with self._lock:
            for name in PROVIDERS:
                self._scripts[name].clear()
                self._calls[name].clear()
        self.delay = 0.0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _route(self, path: str) -> tuple[str, str | None, bool] | None:
        if path == "/openai/v1/chat/completions":
            return "openai", None, False
        if path == "/anthropic/v1/messages":
            return "anthropic", None, False
        google = GEMINI_PATH.fullmatch(path)
        if google:
            return "google", google["model"], google["method"] == "streamGenerateContent"
        return None

    def _answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        path = handler.path.split("?", 1)[0]
        route = self._route(path)
        if route is None:
            self._send(handler, 404, b'{"error": {"message": "no such route"}}')
            return
        provider, path_model, google_stream = route
        body = json.loads(raw or b"{}")
        with self._lock:
            self._calls[provider].append(
                {"path": path, "headers": dict(handler.headers), "body": body}
            )
            answer = self._scripts[provider].popleft() if self._scripts[provider] else None
        if answer is None:
            last = json.dumps((body.get("messages") or body.get("contents") or [{}])[-1])
            answer = Answer(text=f"Fake reply to {last[:80]}")
        usage = answer.usage
        if usage == COUNTED:
            usage = _default_usage(provider, body, answer.text)
        delay = answer.delay + self.delay
        if delay:
            time.sleep(delay)
        if answer.gate is not None:
            answer.gate.wait(timeout=60)
        if answer.raw_body is not None:
            self._send(handler, answer.status, answer.raw_body)
            return
        if answer.status != 200:
            self._send(handler, answer.status, json.dumps(_error(provider, answer.status)).encode())
            return
        model = path_model or body.get("model", "")
        payload = _BODIES[provider](model, answer, usage)  # type: ignore[arg-type]
        if body.get("stream") or google_stream:
            self._send_sse(handler, provider, payload)
            return
        self._send(handler, 200, json.dumps(payload).encode())

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if status == 429:
            handler.send_header("Retry-After", "0")
        handler.end_headers()
        handler.wfile.write(body)

    @staticmethod
    def _send_sse(handler: BaseHTTPRequestHandler, provider: str, payload: dict[str, Any]) -> None:
        """The whole answer as one event stream (final event carries the usage)."""
        if provider == "openai":
            events = [
                (
                    "",
                    {
                        **payload,
                        "object": "chat.completion.chunk",
                        "choices": [
                            {
                                "index": 0,
                                "delta": {
                                    "role": "assistant",
                                    "content": payload["choices"][0]["message"]["content"],
                                },
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": payload.get("usage"),
                    },
                ),
                ("", "[DONE]"),
            ]
        elif provider == "anthropic":
            events = [
                ("message_start", {"type": "message_start", "message": {**payload, "content": []}}),
                *(
                    (kind, event)
                    for index, block in enumerate(payload["content"])
                    for kind, event in (
                        (
                            "content_block_start",
                            {"type": "content_block_start", "index": index, "content_block": block},
                        ),
                        ("content_block_stop", {"type": "content_block_stop", "index": index}),
                    )
                ),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn"},
                        "usage": payload.get("usage", {}),
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
        else:
            events = [("", payload)]
        chunks = []
        for kind, data in events:
            encoded = data if isinstance(data, str) else json.dumps(data)
            chunks.append((f"event: {kind}\n" if kind else "") + f"data: {encoded}\n\n")
        body = "".join(chunks).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def main() -> None:
    """Serve on its own (the benchmark runs it in a process of its own): prints the base URLs
    as JSON on one line, then serves until killed."""
    fake = FakeProviders()
    print(json.dumps(fake.base_urls()), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
