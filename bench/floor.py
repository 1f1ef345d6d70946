"""The floor under a metered gateway call, as a WSGI app for bench/gateway.py's door (e): what
any metered call on this stack pays before its ledger, so that a run shows how far above it
creditapp's gateway is.

`POST /v1/chat/completions` on Flask and gunicorn as creditapp runs: the JSON body read, the
OpenAI SDK's client calling the provider as creditapp's provider does (`client.post`, the
answer read as JSON), and two transactions of one statement each on the benchmark's
PostgreSQL database through SQLAlchemy's pool: a reservation on the caller's account row before
the call, its release after. No API key, price, hold row, entry, audit record, usage record or
cap: `Authorization: Bearer <account id>` names the row. Not a product: a yardstick.

    DATABASE_URL=... OPENAI_BASE_URL=... OPENAI_API_KEY=... gunicorn bench.floor:app

(from the repository's root, with its gunicorn.conf.py, as bench/gateway.py runs it.)
"""

from __future__ import annotations

import os
from typing import Any

import httpx2
import openai
from flask import Flask, Response, jsonify, request
from sqlalchemy import create_engine, text

app = Flask(__name__)
_engine = create_engine(
    os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
)
_provider = openai.OpenAI(
    api_key=os.environ["OPENAI_API_KEY"],
    base_url=os.environ["OPENAI_BASE_URL"],
    max_retries=0,
    timeout=30,
)
_RESERVE = text("UPDATE accounts SET reserved = reserved + 1 WHERE id = :account")
_RELEASE = text("UPDATE accounts SET reserved = reserved - 1 WHERE id = :account")


@app.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@app.post("/v1/chat/completions")
def completions() -> Response:
    account = int(request.headers["Authorization"].removeprefix("Bearer "))
    asked: dict[str, Any] = request.get_json()
    with _engine.begin() as connection:
        connection.execute(_RESERVE, {"account": account})
    answer = _provider.post(
        "/chat/completions",
        body={**asked, "model": asked["model"].split("/", 1)[1]},
        cast_to=httpx2.Response,
    ).json()
    with _engine.begin() as connection:
        connection.execute(_RELEASE, {"account": account})
    return jsonify(answer)
