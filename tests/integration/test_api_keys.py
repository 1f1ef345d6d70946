"""API keys (contract section 8, "API keys"): made, listed, changed and revoked by their owner
(and by admins), shown once and stored nowhere, accepted at `/v1` only, `last_used_at` written
at most once a minute, and a revoked key refused by every worker of a real server."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select, update
from werkzeug.test import TestResponse

from creditapp import ledger
from creditapp.accounts.models import Team
from creditapp.auth.models import ApiKey
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.ledger.models import AuditRecord
from creditapp.money import parse_credits
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    add_price,
    assert_error,
    new_team,
    scalar,
    until,
    waits_for_a_lock,
)
from tests.integration.live_server import live_server

CR = 1_000_000
KEYS = "/api/keys"
COMPLETIONS = "/v1/chat/completions"
KEY_SHAPE = re.compile(r"^ca-[A-Za-z0-9_-]{40,}$")
HELLO = [{"role": "user", "content": "Hello there"}]


def make_key(client: FlaskClient, person: Person, **body: Any) -> dict[str, Any]:
    response = client.post(
        KEYS,
        json={"name": "laptop", **body},
        headers={**person.headers, "Idempotency-Key": secrets.token_hex(8)},
    )
    assert response.status_code == 201, response.get_json()
    made: dict[str, Any] = response.get_json()
    return made


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def complete(client: FlaskClient, key: str, model: str = "demo/keys") -> TestResponse:
    return client.post(
        COMPLETIONS, json={"model": model, "messages": HELLO, "max_tokens": 10}, headers=bearer(key)
    )


def assert_openai_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """OpenAI's error shape, exactly its five fields."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.fixture
def demo_price(app: Flask) -> None:
    add_price(app, "demo", "keys", input="1", output="2")


# 1. Making, reading, changing and revoking keys


def test_a_new_key_is_shown_with_its_record(
    client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    person = person_factory()
    expires_at = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    made = make_key(
        client,
        person,
        name="editor",
        limit="12.5",
        limit_period="week",
        allowed_models=["demo/*", "openai/gpt-4o-mini"],
        expires_at=expires_at.isoformat().replace("+00:00", "Z"),
    )
    assert KEY_SHAPE.match(made["key"]), made["key"]
    assert made["prefix"] == made["key"][:12]
    assert made["name"] == "editor"
    assert (made["limit"], made["limit_period"], made["spent"]) == ("12.5", "week", "0")
    assert made["allowed_models"] == ["demo/*", "openai/gpt-4o-mini"]
    assert datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00")) == expires_at
    assert made["team_id"] is None and made["last_used_at"] is None

    plain = make_key(client, person, name="plain")
    assert (plain["limit"], plain["limit_period"], plain["allowed_models"]) == (None, "total", None)
    assert plain["expires_at"] is None and plain["key"] != made["key"]

    got = client.get(f"{KEYS}/{made['id']}", headers=person.headers)
    assert got.status_code == 200
    assert got.get_json() == {k: v for k, v in made.items() if k != "key"} | {"revoked_at": None}


def test_keys_are_listed_newest_first_a_page_at_a_time_with_what_they_spent(
    client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    person = person_factory(credits=100 * CR)
    made = [make_key(client, person, name=f"key {n}", limit="50") for n in range(3)]
    called = complete(client, made[0]["key"])
    assert called.status_code == 200, called.get_json()
    charged = called.get_json()["usage"]["credits"]

    first = client.get(f"{KEYS}?limit=2", headers=person.headers).get_json()
    assert [item["id"] for item in first["items"]] == [made[2]["id"], made[1]["id"]]
    assert all("key" not in item for item in first["items"])
    rest = client.get(f"{KEYS}?limit=2&cursor={first['next_cursor']}", headers=person.headers)
    assert rest.get_json()["next_cursor"] is None
    (oldest,) = rest.get_json()["items"]
    assert oldest["id"] == made[0]["id"]
    assert oldest["spent"] == charged and charged != "0"
    assert oldest["last_used_at"] is not None
    assert [item["spent"] for item in first["items"]] == ["0", "0"]
    # Another person's keys are not theirs to see.
    assert client.get(KEYS, headers=person_factory().headers).get_json()["items"] == []


def test_a_key_can_be_renamed_limited_narrowed_and_given_an_expiry(
    app: Flask, client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    person = person_factory()
    made = make_key(client, person)
    expires_at = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    changed = client.patch(
        f"{KEYS}/{made['id']}",
        json={
            "name": "renamed",
            "limit": "3",
            "allowed_models": ["demo/keys"],
            "expires_at": expires_at.isoformat(),
        },
        headers=person.headers,
    )
    assert changed.status_code == 200, changed.get_json()
    body = changed.get_json()
    assert (body["name"], body["limit"], body["allowed_models"]) == ("renamed", "3", ["demo/keys"])
    assert datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")) == expires_at
    assert client.get(f"{KEYS}/{made['id']}", headers=person.headers).get_json() == body
    # The narrowed key may call only what it names.
    add_price(app, "openai", "gpt-keys", input="1", output="2")
    models = client.get("/v1/models", headers=bearer(made["key"])).get_json()["data"]
    assert [model["id"] for model in models] == ["demo/keys"]
    refused = complete(client, made["key"], "openai/gpt-keys")
    assert_openai_error(refused, 403, "model_not_allowed")

    lifted = client.patch(
        f"{KEYS}/{made['id']}",
        json={"limit": None, "allowed_models": None, "expires_at": None},
        headers=person.headers,
    )
    assert lifted.status_code == 200, lifted.get_json()
    assert (lifted.get_json()["limit"], lifted.get_json()["allowed_models"]) == (None, None)
    assert lifted.get_json()["expires_at"] is None and lifted.get_json()["name"] == "renamed"


def test_a_revoked_key_is_refused_at_the_gateway_and_cannot_be_changed(
    client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    person = person_factory()
    made = make_key(client, person)
    assert client.get("/v1/models", headers=bearer(made["key"])).status_code == 200

    revoked = client.delete(f"{KEYS}/{made['id']}", headers=person.headers)
    assert revoked.status_code == 204 and revoked.get_data() == b""

    assert_openai_error(
        client.get("/v1/models", headers=bearer(made["key"])), 401, "invalid_api_key"
    )
    assert_error(
        client.patch(f"{KEYS}/{made['id']}", json={"name": "back"}, headers=person.headers),
        409,
        "conflict",
    )
    standing = client.get(f"{KEYS}/{made['id']}", headers=person.headers).get_json()
    assert standing["revoked_at"] is not None and standing["name"] == "laptop"
    # Revoking again changes nothing.
    assert client.delete(f"{KEYS}/{made['id']}", headers=person.headers).status_code == 204


def test_another_persons_key_is_not_found(client: FlaskClient, person_factory: Any) -> None:
    owner, stranger = person_factory(), person_factory()
    made = make_key(client, owner)
    path = f"{KEYS}/{made['id']}"
    assert_error(client.get(path, headers=stranger.headers), 404, "not_found")
    assert_error(
        client.patch(path, json={"name": "mine"}, headers=stranger.headers), 404, "not_found"
    )
    assert_error(client.delete(path, headers=stranger.headers), 404, "not_found")
    assert_error(client.get(f"{KEYS}/99999", headers=owner.headers), 404, "not_found")
    after = client.get(path, headers=owner.headers).get_json()
    assert (after["name"], after["revoked_at"]) == ("laptop", None)


def test_admins_list_and_revoke_anyones_keys(
    client: FlaskClient, person_factory: Any, admin: Person, demo_price: None
) -> None:
    owner = person_factory()
    made = [make_key(client, owner, name=f"k{n}") for n in range(2)]

    listed = client.get(f"/api/admin/users/{owner.id}/keys", headers=admin.headers)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.get_json()["items"]] == [made[1]["id"], made[0]["id"]]
    assert_error(client.get("/api/admin/users/99999/keys", headers=admin.headers), 404, "not_found")

    assert_error(
        client.get(f"/api/admin/users/{owner.id}/keys", headers=owner.headers), 403, "forbidden"
    )
    assert_error(
        client.delete(f"/api/admin/keys/{made[0]['id']}", headers=owner.headers), 403, "forbidden"
    )
    assert client.get("/v1/models", headers=bearer(made[0]["key"])).status_code == 200

    revoked = client.delete(f"/api/admin/keys/{made[0]['id']}", headers=admin.headers)
    assert revoked.status_code == 204
    assert_openai_error(
        client.get("/v1/models", headers=bearer(made[0]["key"])), 401, "invalid_api_key"
    )
    assert client.get("/v1/models", headers=bearer(made[1]["key"])).status_code == 200
    assert_error(client.delete("/api/admin/keys/99999", headers=admin.headers), 404, "not_found")


# Each a member of the request's JSON object, as text (a 5,000-digit number is no Python int).
BAD_KEYS = [
    ('"limit": "0"', "limit"),
    ('"limit": "-1"', "limit"),
    ('"limit": "1.0000001"', "limit"),
    ('"limit": 1e3', "limit"),
    ('"limit": 1000.0', "limit"),
    ('"limit": ' + "9" * 5000, "limit"),
    ('"limit": "' + "9" * 5000 + '"', "limit"),
    ('"limit_period": "year"', "limit_period"),
    ('"allowed_models": ["gpt-4o"]', "allowed_models"),
    ('"allowed_models": ["nope/x"]', "allowed_models"),
    ('"allowed_models": ["openai/gpt-4o\\n"]', "allowed_models"),  # `$` before a newline
    ('"allowed_models": []', "allowed_models"),
    ('"name": "   "', "name"),
    ('"name": null', "name"),
    ('"name": ""', "name"),
    ('"name": "a\\u0000b"', "name"),
    ('"name": "' + "n" * 101 + '"', "name"),
    ('"expires_at": "2001-01-01T00:00:00Z"', "expires_at"),
    ('"expires_at": "tomorrow"', "expires_at"),
]


@pytest.mark.parametrize(("member", "field"), BAD_KEYS)
def test_a_bad_key_is_refused_naming_its_field(
    client: FlaskClient, person_factory: Any, member: str, field: str
) -> None:
    person = person_factory()
    named = "" if field == "name" else '"name": "laptop", '
    refused = client.post(
        KEYS,
        data="{" + named + member + "}",
        headers={**person.headers, "Idempotency-Key": secrets.token_hex(8)},
        content_type="application/json",
    )
    assert refused.status_code == 400, refused.get_json()
    assert list(refused.get_json()["error"]["details"]) == [field], refused.get_json()
    made = make_key(client, person)
    changed = client.patch(
        f"{KEYS}/{made['id']}",
        data="{" + member + "}",
        headers=person.headers,
        content_type="application/json",
    )
    assert changed.status_code == 400, changed.get_json()
    assert list(changed.get_json()["error"]["details"]) == [field], changed.get_json()
    assert client.get(KEYS, headers=person.headers).get_json()["items"] == [
        {k: v for k, v in made.items() if k != "key"} | {"revoked_at": None}
    ]


def test_a_key_for_a_team_the_person_is_not_in_is_not_found(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    person = person_factory()
    with app.app_context():
        with write_transaction(db.session):
            team = Team(name="others", created_at=utcnow())
            db.session.add(team)
            db.session.flush()
            team_id = team.id
        db.session.remove()
    for missing in (team_id, 99999):
        refused = client.post(
            KEYS,
            json={"name": "team key", "team_id": str(missing)},
            headers={**person.headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        assert_error(refused, 404, "not_found")
    assert client.get(KEYS, headers=person.headers).get_json()["items"] == []


def test_a_team_key_spends_from_the_teams_account(
    app: Flask, client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    member = person_factory()  # nothing of their own to spend
    owner = person_factory()
    with app.app_context():
        team_id, team_account = new_team(owner.id, member.id, name="ours")
        with write_transaction(db.session):
            ledger.grant(
                db.session,
                account_id=team_account,
                amount=10 * CR,
                source="promo",
                reason="team credits",
                context=TEST_CONTEXT,
                now=utcnow(),
            )
        db.session.remove()
    made = make_key(client, member, team_id=str(team_id), limit="5")
    assert made["team_id"] == str(team_id)
    answered = complete(client, made["key"])
    assert answered.status_code == 200, answered.get_json()
    charged = parse_credits(answered.get_json()["usage"]["credits"])
    assert 0 < charged <= 5 * CR
    with app.app_context():
        team_balance = ledger.balance(db.session, account_id=team_account, now=utcnow())
        own_balance = ledger.balance(db.session, account_id=member.account_id, now=utcnow())
        db.session.remove()
    assert (team_balance.balance, team_balance.reserved) == (10 * CR - charged, 0)
    assert (own_balance.balance, own_balance.reserved) == (0, 0)
    assert (
        client.get(f"{KEYS}/{made['id']}", headers=member.headers).get_json()["spent"]
        == (answered.get_json()["usage"]["credits"])
    )


# 2. Shown once, stored nowhere


def _every_text_in_the_database(app: Flask) -> str:
    """Every value of every column of every table, as one text to search."""
    with app.app_context():
        values = [
            json.dumps(value, default=str) if not isinstance(value, str | bytes) else value
            for table in db.metadata.sorted_tables
            for row in db.session.execute(select(table)).all()
            for value in row
            if value is not None
        ]
        db.session.remove()
    return "\n".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values)


def test_the_key_is_shown_once_and_written_nowhere(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    demo_price: None,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_price(app, "openai", "gpt-keys", input="1", output="2")
    fake_providers.script("openai", Answer(usage={"prompt_tokens": 5, "completion_tokens": 3}))
    person = person_factory(credits=100 * CR)
    caplog.set_level(logging.DEBUG)
    headers = {**person.headers, "Idempotency-Key": "make-my-key"}
    body = {"name": "laptop", "limit": "40", "limit_period": "day"}
    made = client.post(KEYS, json=body, headers=headers)
    assert made.status_code == 201
    secret = made.get_json()["key"]

    replayed = client.post(KEYS, json=body, headers=headers)
    assert replayed.status_code == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_json() == {k: v for k, v in made.get_json().items() if k != "key"}
    assert len(client.get(KEYS, headers=person.headers).get_json()["items"]) == 1

    for model in ("demo/keys", "openai/gpt-keys"):
        assert complete(client, secret, model).status_code == 200
    gateway_replay = {**bearer(secret), "Idempotency-Key": "one-call"}
    call = {"model": "demo/keys", "messages": HELLO}
    first = client.post(COMPLETIONS, json=call, headers=gateway_replay)
    again = client.post(COMPLETIONS, json=call, headers=gateway_replay)
    assert first.status_code == again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert_openai_error(
        client.get("/v1/models", headers=bearer(secret + "x")), 401, "invalid_api_key"
    )

    stored = _every_text_in_the_database(app)
    assert made.get_json()["prefix"] in stored  # the search does see the key's table
    assert secret not in stored and secret[3:] not in stored
    with app.app_context():
        digest = db.session.scalar(select(ApiKey.digest))
        db.session.remove()
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    logged = caplog.text + "".join(capsys.readouterr())
    # The search does see the requests' log lines.
    assert made.headers["X-Request-ID"] in logged and first.headers["X-Request-ID"] in logged
    assert secret[3:] not in logged


# 3. Keys open /v1 only


def test_keys_open_the_gateway_only_and_tokens_do_not(
    client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    person = person_factory(credits=10 * CR)
    made = make_key(client, person)
    assert_error(
        client.get("/api/credit/balance", headers=bearer(made["key"])), 401, "unauthorized"
    )
    assert_error(client.get(KEYS, headers=bearer(made["key"])), 401, "unauthorized")

    by_token = client.post(
        COMPLETIONS, json={"model": "demo/keys", "messages": HELLO}, headers=person.headers
    )
    error = assert_openai_error(by_token, 401, "invalid_api_key")
    assert error["type"] == "authentication_error" and error["param"] is None
    assert_openai_error(client.get("/v1/models", headers=person.headers), 401, "invalid_api_key")
    assert_openai_error(client.get("/v1/models"), 401, "invalid_api_key")
    with_token_prefix = bearer("ca-" + "x" * 43)
    assert_openai_error(client.get("/v1/models", headers=with_token_prefix), 401, "invalid_api_key")


def test_an_expired_key_is_refused(
    client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    person = person_factory(credits=10 * CR)
    expires_at = utcnow() + timedelta(hours=1)
    made = make_key(client, person, expires_at=expires_at.isoformat())
    assert complete(client, made["key"]).status_code == 200
    with time_machine.travel(expires_at - timedelta(seconds=1), tick=False):
        assert client.get("/v1/models", headers=bearer(made["key"])).status_code == 200
    with time_machine.travel(expires_at, tick=False):
        assert_openai_error(complete(client, made["key"]), 401, "invalid_api_key")
        assert_openai_error(
            client.get("/v1/models", headers=bearer(made["key"])), 401, "invalid_api_key"
        )


# 4. last_used_at


def test_last_used_at_is_written_at_most_once_a_minute(
    app: Flask, client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    # A day after whatever the suite's clock says (the model's price took effect an hour ago).
    start = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    updates: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if re.match(r"\s*UPDATE\s+api_keys\b", statement, re.IGNORECASE):
            updates.append(statement)

    with time_machine.travel(start, tick=False) as traveller:
        person = person_factory(credits=10 * CR)
        made = make_key(client, person)
        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert complete(client, made["key"]).status_code == 200
            assert len(updates) == 1
            used = client.get(f"{KEYS}/{made['id']}", headers=person.headers).get_json()
            assert datetime.fromisoformat(used["last_used_at"].replace("Z", "+00:00")) == start

            traveller.move_to(start + timedelta(seconds=59))
            assert complete(client, made["key"]).status_code == 200
            assert client.get("/v1/models", headers=bearer(made["key"])).status_code == 200
            assert len(updates) == 1
            again = client.get(f"{KEYS}/{made['id']}", headers=person.headers).get_json()
            assert again["last_used_at"] == used["last_used_at"]

            traveller.move_to(start + timedelta(seconds=61))
            assert complete(client, made["key"]).status_code == 200
            assert len(updates) == 2
        finally:
            event.remove(engine, "before_cursor_execute", count)
        later = client.get(f"{KEYS}/{made['id']}", headers=person.headers).get_json()
    assert datetime.fromisoformat(
        later["last_used_at"].replace("Z", "+00:00")
    ) == start + timedelta(seconds=61)


# 5. Revocation, seen by every worker of a real server


def _status(connection: http.client.HTTPConnection, key: str) -> int:
    connection.request("GET", "/v1/models", headers=bearer(key))
    response = connection.getresponse()
    response.read()
    return response.status


def _workers(master: int) -> list[int]:
    """The gunicorn master's worker processes (Linux's /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                # The parent's id is the 4th field after the command's closing parenthesis.
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == master:
                    found.append(int(entry.name))
    return found


def _serving_worker(workers: list[int], connection: http.client.HTTPConnection) -> int:
    """Which worker holds the server's end of a kept-alive connection: the one owning the
    socket whose remote port is the client's local port."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rpartition(":")[2], 16) == client_port:
                inodes.add(fields[9])
    for worker in workers:
        for fd in Path(f"/proc/{worker}/fd").iterdir():
            with suppress(OSError):
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    return worker
    raise AssertionError(f"no worker serves the connection from port {client_port}")


@pytest.mark.real_clock
def test_a_revoked_key_is_refused_by_every_worker_at_once(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory()
    made = make_key(client, person)
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        **fake_providers.base_urls(),
        # Kept connections stay open however slowly the test runs (gunicorn's default is 2 s).
        "GUNICORN_CMD_ARGS": "--keep-alive 120",
    }
    with live_server(env, workers=2, threads=4) as base:
        host, port = base.removeprefix("http://").split(":")
        workers = _workers(base.pid)
        assert len(workers) == 2
        kept: list[http.client.HTTPConnection] = []
        serving: set[int] = set()
        try:
            # Kept-alive connections, opened in bursts (a worker left idle accepts while the
            # other is busy) until both workers serve some; each used with the key.
            for _burst in range(10):
                burst = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(8)]
                kept += burst
                with ThreadPoolExecutor(max_workers=len(burst)) as pool:
                    first_uses = list(pool.map(lambda c: _status(c, made["key"]), burst))
                assert first_uses == [200] * len(burst)
                serving |= {_serving_worker(workers, connection) for connection in burst}
                if serving == set(workers):
                    break
            assert serving == set(workers), "one worker took every connection"
            assert [_status(connection, made["key"]) for connection in kept] == [200] * len(kept)

            assert client.delete(f"{KEYS}/{made['id']}", headers=person.headers).status_code == 204

            statuses = [_status(connection, made["key"]) for connection in kept * 2]
            for _ in range(10):
                fresh = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    statuses.append(_status(fresh, made["key"]))
                finally:
                    fresh.close()
            # The kept connections were still served by the same workers.
            assert {_serving_worker(workers, connection) for connection in kept} == serving
        finally:
            for connection in kept:
                connection.close()
    assert statuses == [401] * (2 * len(kept) + 10)


def test_a_key_made_to_expire_in_the_past_is_refused_as_a_key(
    client: FlaskClient, person_factory: Any
) -> None:
    refused = client.post(
        KEYS,
        json={"name": "laptop", "expires_at": "2001-01-01T00:00:00Z"},
        headers=person_factory().headers,
    )
    error = assert_error(refused, 400, "expiry_not_in_future")
    assert error["message"] == "An API key must expire in the future."


@pytest.mark.postgres_only
def test_a_key_revoked_meanwhile_is_revoked_and_audited_once(
    app: Flask, client: FlaskClient, person_factory: Any, demo_price: None
) -> None:
    """Its owner revokes a key while an admin's revocation holds its row: the owner's waits,
    then finds it revoked, and changes nothing (it overwrote the revocation's time, and a
    second `api_key_revoked` was audited)."""
    owner = person_factory()
    key_id = int(make_key(client, owner)["id"])
    first = utcnow() - timedelta(minutes=1)
    row = select(ApiKey).where(ApiKey.id == key_id)
    with (
        app.app_context(),
        db.engine.connect() as admins,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        admins.execute(row.with_for_update())
        revoking = pool.submit(
            lambda: app.test_client().delete(f"/api/keys/{key_id}", headers=owner.headers)
        )
        assert until(waits_for_a_lock), "the owner's revocation did not reach the key's row"
        admins.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=first))
        admins.commit()
        assert revoking.result(timeout=30).status_code == 204
    revoked = select(ApiKey.revoked_at).where(ApiKey.id == key_id)
    audited = select(func.count()).where(AuditRecord.action == "api_key_revoked")
    assert (scalar(app, revoked), scalar(app, audited)) == (first, 0)
