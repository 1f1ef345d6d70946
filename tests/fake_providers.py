"""A loopback HTTP server speaking OpenAI's, Anthropic's and Gemini's wire formats, so that
tests drive the official SDKs end to end.

Each provider has a queue of scripted answers (usage, text, status, delay, raw body, missing
usage); with nothing scripted it answers like the provider would, with usage counted from the
request. Every request is recorded. Answers are JSON, or SSE when the request asks to stream:
the text then comes word by word in each provider's own event format, `piece_delay` apart; a
stream can be cut after `fail_after` words (the provider failing mid-stream), or end after its
last word without the event that says it is complete (`unterminated`). `streams` records how
each stream ended, so a test can see that a client stopped reading.
"""

from __future__ import annotations

import argparse
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
    # Streaming: seconds between words, and the words sent before the connection is cut.
    piece_delay: float = 0.0
    fail_after: int | None = None
    # Streaming: the body ends without the provider's terminal event (OpenAI's `finish_reason`
    # chunk and `data: [DONE]`, Anthropic's `message_stop`, Gemini's `finishReason`).
    unterminated: bool = False
    # Gemini: the reply stops at the model's per-request limit, resumable (finishReason
    # CONTINUATION with a continuationToken), as its newest models do.
    continued: bool = False


# How Gemini ends a reply a further request may resume.
_CONTINUED = {"finishReason": "CONTINUATION", "continuationToken": "cmVzdW1lLWhlcmU="}


@dataclass
class StreamRecord:
    """How one streamed answer went: words sent, and whether the client closed it early."""

    provider: str
    words: int
    sent: int = 0
    client_closed: bool = False
    finished: bool = False


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word if index == 0 else f" {word}" for index, word in enumerate(words)] if text else []


# An event: its SSE name (or ""), its data, and whether it carries a word of the reply.
Event = tuple[str, Any, bool]


def _openai_events(payload: dict[str, Any], words: list[str], *, terminated: bool) -> list[Event]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        # With `include_usage`, every chunk but the last has `"usage": null`.
        return {**payload, "object": "chat.completion.chunk", "choices": [choice], "usage": None}

    events = [("", chunk({"role": "assistant", "content": ""}), False)]
    events += [("", chunk({"content": word}), True) for word in words]
    if terminated:
        events.append(("", chunk({}, "stop"), False))
    if payload.get("usage") is not None:
        events.append(("", {**payload, "object": "chat.completion.chunk", "choices": []}, False))
    return [*events, ("", "[DONE]", False)] if terminated else events


def _anthropic_events(
    payload: dict[str, Any], words: list[str], *, terminated: bool
) -> list[Event]:
    usage = payload.get("usage")
    start = {key: value for key, value in payload.items() if key != "usage"}
    if usage is not None:  # the start reports the input, and the first output token
        start["usage"] = {**usage, "output_tokens": 1}
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": {**start, "content": []}}, False)
    ]
    for index, block in enumerate(payload["content"]):
        opened = {**block, "text": ""} if block["type"] == "text" else block
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opened},
                False,
            )
        )
        if block["type"] == "text":
            events += [
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": word},
                    },
                    True,
                )
                for word in words
            ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}, False))
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    if usage is not None:
        delta["usage"] = usage
    events.append(("message_delta", delta, False))
    if terminated:
        events.append(("message_stop", {"type": "message_stop"}, False))
    return events


def _google_events(payload: dict[str, Any], words: list[str], *, terminated: bool) -> list[Event]:
    usage = payload.get("usageMetadata")
    candidate = payload["candidates"][0]
    ending = {
        key: candidate[key] for key in ("finishReason", "continuationToken") if key in candidate
    }
    thoughts = [part for part in candidate["content"]["parts"] if part.get("thought")]
    events: list[Event] = []
    pieces: list[list[dict[str, Any]]] = [thoughts] if thoughts else []
    pieces += [[{"text": word}] for word in words]
    for index, parts in enumerate(pieces, start=1):
        last = index == len(pieces)
        chunk: dict[str, Any] = {
            **payload,
            "candidates": [
                {
                    "content": {"parts": parts, "role": "model"},
                    "index": 0,
                    **(ending if last and terminated else {}),
                }
            ],
        }
        chunk.pop("usageMetadata", None)
        if usage is not None:  # on every chunk: the output so far, whole on the last
            so_far = usage["candidatesTokenCount"] * index // len(pieces)
            chunk["usageMetadata"] = usage if last else {**usage, "candidatesTokenCount": so_far}
        events.append(("", chunk, "thought" not in parts[0]))
    return events


_EVENTS = {"openai": _openai_events, "anthropic": _anthropic_events, "google": _google_events}


def _default_usage(provider: str, body: dict[str, Any], text: str) -> dict[str, Any]:
    prompt = json.dumps(body.get("messages") or body.get("contents") or [])
    prompt_tokens = len(prompt.encode()) // 4 + 1
    # A scripted text may hold what UTF-8 cannot (an unpaired surrogate, sent JSON-escaped).
    output_tokens = len(text.encode("utf-8", "surrogatepass")) // 4 + 1
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
            {
                "content": {"parts": parts, "role": "model"},
                "index": 0,
                **(_CONTINUED if answer.continued else {"finishReason": "STOP"}),
            }
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


def _refusal(provider: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The 400 the provider answers a request it refuses: Anthropic a message of no text (or
    only whitespace) or a stop sequence of only whitespace; Gemini any empty text part, its
    system instruction's too."""
    if provider == "anthropic":
        message = None
        if any(not str(m.get("content", "")).strip() for m in body.get("messages", [])):
            message = "messages: text content blocks must contain non-whitespace text"
        elif any(not sequence.strip() for sequence in body.get("stop_sequences", [])):
            message = "stop_sequences: each stop sequence must contain non-whitespace"
        if message:
            return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    if provider == "google":
        contents = [*body.get("contents", []), body.get("systemInstruction") or {}]
        if any(part.get("text") == "" for content in contents for part in content.get("parts", [])):
            message = "Unable to submit request because it has an empty text parameter."
            return {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    return None


class FakeProviders:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Answer]] = {name: deque() for name in PROVIDERS}
        self._calls: dict[str, list[dict[str, Any]]] = {name: [] for name in PROVIDERS}
        self.delay = 0.0  # added to every answer (a slow provider)
        self.piece_delay = 0.0  # between the words of an unscripted streamed answer
        self.reply_words = 0  # when set, an unscripted answer is this many words long
        self.streams: list[StreamRecord] = []
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
            # Fifty streams connect at once (socketserver listens with a backlog of 5: on a busy
            # machine, connections past it were reset, and the calls failed as the provider's).
            request_queue_size = 128

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
            self.streams.clear()
        self.delay = 0.0
        self.piece_delay = 0.0

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
        refusal = _refusal(provider, body)
        with self._lock:
            self._calls[provider].append(
                {"path": path, "headers": dict(handler.headers), "body": body}
            )
            answer = None
            if refusal is None and self._scripts[provider]:
                answer = self._scripts[provider].popleft()
        if refusal is not None:
            self._send(handler, 400, json.dumps(refusal).encode())
            return
        if answer is None:
            last = json.dumps((body.get("messages") or body.get("contents") or [{}])[-1])
            text = f"Fake reply to {last[:80]}"
            if self.reply_words:
                text = " ".join(f"word{index}" for index in range(self.reply_words))
            answer = Answer(text=text, piece_delay=self.piece_delay)
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
            self._send_sse(handler, provider, payload, answer)
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

    def _send_sse(
        self,
        handler: BaseHTTPRequestHandler,
        provider: str,
        payload: dict[str, Any],
        answer: Answer,
    ) -> None:
        """The answer as the provider streams it, an event per word. With `fail_after`, the
        connection is cut after that many words, mid-body."""
        words = _words(answer.text)
        record = StreamRecord(provider, len(words))
        with self._lock:
            self.streams.append(record)
        events = [
            (((f"event: {kind}\n" if kind else "") + f"data: {_encoded(data)}\n\n").encode(), word)
            for kind, data, word in _EVENTS[provider](
                payload, words, terminated=not answer.unterminated
            )
        ]
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", str(sum(len(event) for event, _ in events)))
        handler.end_headers()
        try:
            handler.wfile.flush()
            for event, is_word in events:
                if is_word and record.sent == answer.fail_after:
                    handler.close_connection = True
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    return
                if is_word and answer.piece_delay:
                    time.sleep(answer.piece_delay)
                handler.wfile.write(event)
                handler.wfile.flush()
                record.sent += is_word
            record.finished = True
        except OSError:  # the client closed the stream before its end
            record.client_closed = True
            handler.close_connection = True


def _encoded(data: Any) -> str:
    return data if isinstance(data, str) else json.dumps(data)


def main() -> None:
    """Serve on its own (the benchmark runs it in a process of its own): prints the base URLs
    as JSON on one line, then serves until killed. `--piece-delay S`: seconds between the words
    of a streamed answer; `--reply-words N`: answers of N words."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--piece-delay", type=float, default=0.0)
    parser.add_argument("--reply-words", type=int, default=0)
    arguments = parser.parse_args()
    fake = FakeProviders()
    fake.piece_delay, fake.reply_words = arguments.piece_delay, arguments.reply_words
    print(json.dumps(fake.base_urls()), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
