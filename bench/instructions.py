"""Instructions a metered call costs the server's process, counted by valgrind's callgrind: a
count repeats whatever the machine's speed, which latencies and CPU seconds on a shared
machine do not (they drift by half within an hour here), so a change's effect on the worker's
CPU is read here, before and after, from one number each.

Two doors, in-process (Flask's test client, the app as gunicorn runs it, logging included)
against a PostgreSQL database seeded as in bench/messages.py, the fake provider in a process of
its own: `POST /v1/chat/completions` with an API key (the OpenAI SDK's request), and
`POST /api/conversations/<id>/messages` with a token. For each door a child process under
callgrind starts the app, makes WARM_UP calls, then `--calls` more; another makes the warm-up
only; the difference over `--calls` is a call's instructions (the database server's are not
counted: it is another process). About six minutes.

    .venv/bin/python bench/instructions.py [--calls 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway import MODEL, api_keys  # noqa: E402
from bench.messages import DIRECT_BODY, MESSAGE, chat_server  # noqa: E402

WARM_UP = 30
# What the child needs to call each door, passed in its environment.
_DOORS_ENV = "CREDITAPP_BENCH_DOORS"
_COLLECTED = re.compile(r"Collected : (\d+)")


def _calls(door: str, doors: dict[str, Any]) -> Any:
    """A function making one call through `door` (in the child), checking its status."""
    from creditapp import create_app

    client = create_app().test_client()
    if door == "gateway":
        body = json.dumps(
            {
                "model": MODEL,
                "messages": DIRECT_BODY["messages"],
                "max_completion_tokens": DIRECT_BODY["max_completion_tokens"],
            }
        )
        headers = {"Authorization": f"Bearer {doors['key']}", "Content-Type": "application/json"}

        def call() -> None:
            answer = client.post("/v1/chat/completions", data=body, headers=headers)
            assert answer.status_code == 200, answer.get_data()[:300]

        return call
    keys = itertools.count()
    path = f"/api/conversations/{doors['conversation']}/messages"

    def send() -> None:
        headers = {
            "Authorization": f"Bearer {doors['token']}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"instructions-{os.getpid()}-{next(keys)}",
        }
        answer = client.post(path, data=MESSAGE, headers=headers)
        assert answer.status_code == 201, answer.get_data()[:300]

    return send


def child(door: str, calls: int) -> None:
    call = _calls(door, json.loads(os.environ[_DOORS_ENV]))
    for _ in range(WARM_UP + calls):
        call()


def instructions(door: str, calls: int, doors: dict[str, Any]) -> int:
    """What the child process making `calls` calls after the warm-up executed, in all."""
    ran = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            door,
            "--calls",
            str(calls),
        ],
        cwd=ROOT,
        # One hash seed for every child: its start costs the same in each.
        env={**os.environ, _DOORS_ENV: json.dumps(doors), "PYTHONHASHSEED": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    found = _COLLECTED.search(ran.stderr)
    if ran.returncode != 0 or found is None:
        raise SystemExit(f"{door}: the child failed ({ran.returncode}): {ran.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--child", choices=("gateway", "message"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # --calls 0 too: the warm-up alone
        child(args.child, args.calls)
        return
    if args.calls < 1:
        parser.error("--calls: at least 1")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install -y valgrind")

    with chat_server(1, workers=1, threads=1) as server:
        keys = api_keys(server.base, server.chatters)
        if not keys:
            raise SystemExit("POST /api/keys answered 404: no API keys")
        chatter = server.chatters[0]
        # Each child its own conversation: a message's history, so its cost, grows with the
        # conversation's messages, and the warm-up must cost the same in both children.
        conversations = iter(chatter.conversation_ids)

        def doors() -> dict[str, Any]:
            return {"key": keys[0], "token": chatter.token, "conversation": next(conversations)}

        counted = {
            door: (instructions(door, args.calls, doors()) - instructions(door, 0, doors()))
            / args.calls
            for door in ("gateway", "message")
        }
    print(
        f"Instructions a call costs the app's process (callgrind, in-process, {args.calls} calls"
        f" after {WARM_UP} warm-up calls, less the warm-up alone):"
    )
    print(f"  POST /v1/chat/completions                 {counted['gateway'] / 1e6:6.2f} M")
    print(f"  POST /api/conversations/<id>/messages     {counted['message'] / 1e6:6.2f} M")


if __name__ == "__main__":
    main()
