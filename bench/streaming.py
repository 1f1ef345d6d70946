"""Streamed replies: the time to the first word through creditapp against a streamed call made
straight to the provider, and how many streams one gunicorn process holds while balance reads
stay fast, in one run.

1. One client, alternating: a streamed message (`"stream": true`) timed to its first `delta`
   event, and the same chat request streamed straight from the fake provider timed to its
   first word; then a whole (not streamed) message against the direct whole call, for the
   target: streaming must add less to the first word than the message path adds to a reply.
2. One gunicorn process with 128 threads; streams of a 400-word reply whose words come 50 ms
   apart are kept open, 8 more at each step, while one client reads balances: the most streams
   at which the balance reads' p95 stays under 50 ms.

    make bench            # or: .venv/bin/python bench/streaming.py
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import percentile  # noqa: E402
from bench.messages import (  # noqa: E402
    CONVERSATIONS_PER_USER,
    DIRECT_BODY,
    MESSAGE,
    WORKERS,
    Chatter,
    Client,
    chat_server,
    message_headers,
)
from bench.messages import THREADS as MESSAGE_THREADS  # noqa: E402

THREADS = 128
WORD_SECONDS = 0.05
REPLY_WORDS = 400  # 20 s a reply: streams stay open while the reads are timed
STEP = 8
READS_P95_LIMIT = 0.050


def _connection(base: str) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def first_word(
    connection: http.client.HTTPConnection,
    path: str,
    headers: dict[str, str],
    body: str,
    marker: bytes,
) -> float:
    """Seconds from sending the request to the first line holding `marker`; reads the rest."""
    started = time.perf_counter()
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    assert response.status == 200, response.read()
    took = None
    while line := response.readline():
        if took is None and marker in line:
            took = time.perf_counter() - started
    response.read()  # the end of the body: the connection is ready for the next request
    response.close()
    assert took is not None
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--max-streams", type=int, default=120)
    args = parser.parse_args()

    # The first word: gunicorn as in bench/messages.py, whose added latency is the target.
    with chat_server(4, workers=WORKERS, threads=MESSAGE_THREADS) as server:
        keys = itertools.count()
        chatter = server.chatters[0]

        def path(chatter: Chatter) -> str:
            conversation = chatter.conversation_ids[next(keys) % CONVERSATIONS_PER_USER]
            return f"/api/conversations/{conversation}/messages"

        app, direct = (
            _connection(server.base),
            _connection(server.provider_urls["OPENAI_BASE_URL"].removesuffix("/openai/v1")),
        )
        streamed = json.dumps({**json.loads(MESSAGE), "stream": True})
        direct_streamed = json.dumps(
            {**DIRECT_BODY, "stream": True, "stream_options": {"include_usage": True}}
        )
        json_headers = {"Content-Type": "application/json"}
        through, straight, whole, whole_direct = [], [], [], []
        app_client, direct_client = (
            Client(server.base),
            Client(server.provider_urls["OPENAI_BASE_URL"].removesuffix("/openai/v1")),
        )
        for _ in range(args.samples):
            headers = message_headers(chatter, f"first-{next(keys)}")
            through.append(first_word(app, path(chatter), headers, streamed, b"event: delta"))
            straight.append(
                first_word(
                    direct,
                    "/openai/v1/chat/completions",
                    json_headers,
                    direct_streamed,
                    b'"content": "',
                )
            )
            started = time.perf_counter()
            app_client.request(
                "POST", path(chatter), message_headers(chatter, f"whole-{next(keys)}"), MESSAGE
            )
            whole.append(time.perf_counter() - started)
            started = time.perf_counter()
            direct_client.request(
                "POST", "/openai/v1/chat/completions", json_headers, json.dumps(DIRECT_BODY)
            )
            whole_direct.append(time.perf_counter() - started)

    ms = 1000
    added_first = (statistics.median(through) - statistics.median(straight)) * ms
    added_whole = (statistics.median(whole) - statistics.median(whole_direct)) * ms
    print(
        f"gunicorn {WORKERS} workers x {MESSAGE_THREADS} threads on PostgreSQL, zero-latency"
        " fake provider, one client"
    )
    print(
        f"  first word, streamed through creditapp: median"
        f" {statistics.median(through) * ms:.1f} ms, p95 {percentile(through, 0.95) * ms:.1f} ms"
    )
    print(
        f"  first word, streamed straight from the provider: median"
        f" {statistics.median(straight) * ms:.1f} ms, p95 {percentile(straight, 0.95) * ms:.1f} ms"
    )
    print(f"  added to the first word by streaming: {added_first:.1f} ms (median)")
    print(f"  added to a whole reply by the message path: {added_whole:.1f} ms (median)")
    print(f"  ratio {added_first / added_whole:.2f}   (target < 1)")

    long_replies = ("--piece-delay", str(WORD_SECONDS), "--reply-words", str(REPLY_WORDS))
    with chat_server(16, workers=1, threads=THREADS, provider_arguments=long_replies) as server:
        print(concurrent_streams(server.base, server.chatters, args.max_streams))


def concurrent_streams(base: str, chatters: list[Chatter], most: int) -> str:
    """Open STEP more streams at each step (each re-opened when it ends) and time balance reads
    meanwhile; the most streams at which their p95 stays under the limit."""
    stop = threading.Event()
    keys = itertools.count()
    body = json.dumps({**json.loads(MESSAGE), "stream": True})
    open_streams: list[threading.Thread] = []
    failures: list[str] = []

    def keep_streaming(index: int) -> None:
        chatter = chatters[index % len(chatters)]
        connection = _connection(base)
        while not stop.is_set():
            key = next(keys)
            conversation = chatter.conversation_ids[key % CONVERSATIONS_PER_USER]
            connection.request(
                "POST",
                f"/api/conversations/{conversation}/messages",
                body=body,
                headers=message_headers(chatter, f"hold-{key}"),
            )
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or b"event: done" not in answer:
                failures.append(f"HTTP {response.status}: {answer[-200:]!r}")

    reader = Client(base)
    auth = {"Authorization": f"Bearer {chatters[0].token}"}
    held = 0
    lines = []
    try:
        while True:
            reads = []
            ends = time.perf_counter() + 3.0
            while time.perf_counter() < ends:
                started = time.perf_counter()
                assert reader.request("GET", "/api/credit/balance", auth) == 200
                reads.append(time.perf_counter() - started)
            p95 = percentile(reads, 0.95)
            lines.append(
                f"    {len(open_streams):4d} streams: balance reads p95 {p95 * 1000:.1f} ms"
            )
            if p95 >= READS_P95_LIMIT or failures:
                break
            held = len(open_streams)
            if held >= most:
                break
            for _ in range(STEP):
                thread = threading.Thread(target=keep_streaming, args=(len(open_streams),))
                thread.start()
                open_streams.append(thread)
            time.sleep(1.0)  # let them open
    finally:
        stop.set()
        for thread in open_streams:
            thread.join(timeout=60)
    if failures:
        lines.append(f"    streams failed: {len(failures)}, e.g. {failures[0]}")
    return "\n".join(
        [
            f"  concurrent streams on one gunicorn process of {THREADS} threads (words"
            f" {WORD_SECONDS * 1000:.0f} ms apart):",
            *lines,
            f"  held with balance reads under {READS_P95_LIMIT * 1000:.0f} ms p95: {held}",
        ]
    )


if __name__ == "__main__":
    main()
