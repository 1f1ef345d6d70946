"""Each class of hostile input that once answered 500 (issue: hostile input), as a named
regression test: every one is a 400 (or 401, 413) in the contract's shape, naming the field."""

from __future__ import annotations

import base64
import http.client
import json
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from creditapp.money import parse_credits
from tests.conftest import Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, start_conversation
from tests.integration.live_server import live_server

ADMIN_PATHS = {
    "grant": "/api/admin/credit/grant",
    "pricing": "/api/admin/pricing",
    "tiers": "/api/admin/tiers",
}


CR = 1_000_000


def _fields(response: Any, status: int = 400, code: str = "validation_error") -> list[str]:
    return list(assert_error(response, status, code)["details"])


def _raw(client: FlaskClient, method: str, path: str, body: str, person: Person) -> Any:
    return client.open(
        path, method=method, data=body, content_type="application/json", headers=person.headers
    )


@pytest.mark.parametrize(
    ("path", "method", "body", "field"),
    [
        ("/api/admin/tiers", "PUT", {"name": "t\x00", "monthly_credits": "1"}, "name"),
        ("/api/admin/pricing", "PUT", {"model": "m\ud800"}, "model"),
        ("/api/admin/credit/adjust", "POST", {"reason": "\x00"}, "reason"),
        (
            "/api/admin/tiers",
            "PUT",
            {"name": "t", "rate_limits": {"default": "5 per minute\x00"}},
            "rate_limits",
        ),
    ],
)
def test_text_a_database_cannot_store_is_a_400_naming_the_field(
    client: FlaskClient, admin: Person, path: str, method: str, body: dict[str, Any], field: str
) -> None:
    response = client.open(path, method=method, json=body, headers=admin.headers)
    assert field in _fields(response)


def test_text_in_query_filters_and_their_names_is_refused(
    client: FlaskClient, admin: Person
) -> None:
    assert _fields(client.get("/api/admin/pricing?model=%00", headers=admin.headers)) == ["model"]
    assert _fields(client.get("/api/credit/transactions?type=%ED%A0%80", headers=admin.headers))
    assert _fields(client.get("/api/admin/pricing?%00=1", headers=admin.headers))


@pytest.mark.parametrize("digits", ["\u00b2", "\u0661", "\uff11", "1\u0662", "+1", " 1", "1_0"])
def test_ids_are_ascii_digits_in_paths_bodies_and_queries(
    client: FlaskClient, admin: Person, digits: str
) -> None:
    path = client.get(f"/api/conversations/{digits}", headers=admin.headers)
    assert _fields(path) == ["conversation_id"]
    body = client.post(
        "/api/admin/credit/grant",
        json={"user_id": digits, "amount": "1", "reason": "x"},
        headers=admin.headers,
    )
    assert _fields(body) == ["user_id"]
    query = client.get(
        "/api/admin/credit/audit", query_string={"user_id": digits}, headers=admin.headers
    )
    assert _fields(query) == ["user_id"]


@pytest.mark.parametrize(
    "amount", ["\uff11\uff12", "\u0663", "1_000", "+5", " 5 ", "5\n", "-0", "1.0000000"]
)
def test_amounts_are_strict_ascii_decimals(
    client: FlaskClient, admin: Person, person_factory: Any, amount: str
) -> None:
    user = person_factory()
    grant = client.post(
        "/api/admin/credit/grant",
        json={"user_id": str(user.id), "amount": amount, "reason": "x"},
        headers=admin.headers,
    )
    assert _fields(grant) == ["amount"]
    adjust = client.post(
        "/api/admin/credit/adjust",
        json={"user_id": str(user.id), "amount": amount, "reason": "x"},
        headers=admin.headers,
    )
    assert _fields(adjust) == ["amount"]
    assert client.get("/api/credit/balance", headers=user.headers).get_json()["balance"] == "0"


@pytest.mark.parametrize("limit", ["+5", " 5", "5 ", "\uff15", "1_0", "5.0", "-1", ""])
def test_a_count_in_a_query_is_ascii_digits_only(
    client: FlaskClient, admin: Person, limit: str
) -> None:
    response = client.get("/api/characters", query_string={"limit": limit}, headers=admin.headers)
    assert _fields(response) == ["limit"]


def test_a_token_whose_subject_is_not_an_ascii_id_is_refused(
    app: Flask, client: FlaskClient, admin: Person
) -> None:
    claims = {"sub": "\u0661", "type": "access", "exp": utcnow() + timedelta(minutes=5)}
    token = jwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")
    response = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("missing", ["exp", "type"])
def test_a_token_without_exp_or_type_is_refused(
    app: Flask, client: FlaskClient, admin: Person, missing: str
) -> None:
    claims = {
        "sub": str(admin.id),
        "type": "access",
        "exp": utcnow() + timedelta(minutes=5),
        "iat": utcnow(),
        "sid": 1,
        "jti": "a-token",
    }
    del claims[missing]
    token = jwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")
    response = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert f"Missing claim: {missing}" in assert_error(response, 401, "unauthorized")["message"]


def _with_raw(fields: dict[str, Any], name: str, raw: str) -> str:
    """A JSON document of `fields` plus `name` set to the raw JSON text `raw`."""
    return json.dumps(fields)[:-1] + f', "{name}": {raw}}}'


GRANT = {"user_id": "1", "reason": "x"}
HUGE = "9" * 5000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_with_raw(GRANT, "amount", HUGE), "amount"),
        (_with_raw(GRANT, "amount", f'"{HUGE}"'), "amount"),
        (_with_raw(GRANT, "amount", f"-{HUGE}"), "amount"),
        (_with_raw({**GRANT, "amount": "1"}, "unknown", HUGE), "unknown"),
    ],
)
def test_numbers_of_thousands_of_digits_are_refused_naming_the_field(
    client: FlaskClient, admin: Person, body: str, field: str
) -> None:
    assert _fields(_raw(client, "POST", "/api/admin/credit/grant", body, admin)) == [field]


@pytest.mark.parametrize("number", ["1e99999999999999999999", "-0E-99999999999999999999"])
@pytest.mark.parametrize(
    ("path", "signed_in"), [("/api/auth/google", False), ("/api/admin/credit/grant", True)]
)
def test_a_number_whose_exponent_is_beyond_any_range_is_refused(
    client: FlaskClient, admin: Person, number: str, path: str, signed_in: bool
) -> None:
    """Read before anyone is signed in: the body is refused, the service does not fail."""
    body = _with_raw({**GRANT, "amount": "1"}, "id_token", number)
    response = client.post(
        path,
        data=body,
        headers={**(admin.headers if signed_in else {}), "Content-Type": "application/json"},
    )
    assert _fields(response) == ["body"]


def test_an_amount_of_thousands_of_leading_zeros_is_read(
    client: FlaskClient, admin: Person, person_factory: Any
) -> None:
    user = person_factory()
    grant = client.post(
        "/api/admin/credit/grant",
        json={"user_id": str(user.id), "amount": "0" * 5000 + "1.5", "reason": "x"},
        headers=admin.headers,
    )
    assert grant.status_code == 201, grant.get_data(as_text=True)
    assert grant.get_json()["balance"]["balance"] == "1.5"


def test_a_cursor_beyond_a_bigint_is_refused(client: FlaskClient, admin: Person) -> None:
    cursor = base64.urlsafe_b64encode(f"v1:{2**63}".encode()).decode().rstrip("=")
    response = client.get(f"/api/characters?cursor={cursor}", headers=admin.headers)
    assert _fields(response) == ["cursor"]


@pytest.mark.parametrize(
    "moment",
    [
        "9999-12-31T23:00:00-05:00",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59Z",
        "1969-12-31",
        # Spellings Python reads and ISO 8601's extended form does not have.
        "20270101",
        "2027-W01-1",
        "2027-01-01\x0012:00",
        "2027-01-01T12",
        "2027-01-01T12:00:00+05",
        "\uff12027-01-01",
    ],
)
def test_timestamps_out_of_range_or_not_iso_are_refused_naming_the_field(
    client: FlaskClient, admin: Person, moment: str
) -> None:
    grant = client.post(
        "/api/admin/credit/grant",
        json={"user_id": str(admin.id), "amount": "1", "reason": "x", "expires_at": moment},
        headers=admin.headers,
    )
    assert _fields(grant) == ["expires_at"]
    price = client.put(
        "/api/admin/pricing",
        json={
            "provider": "demo",
            "model": "m",
            "input": "1",
            "output": "1",
            "effective_from": moment,
        },
        headers=admin.headers,
    )
    assert _fields(price) == ["effective_from"]
    audit = client.get(
        "/api/admin/credit/audit", query_string={"to": moment}, headers=admin.headers
    )
    assert _fields(audit) == ["to"]
    usage = client.get("/api/credit/usage", query_string={"from": moment}, headers=admin.headers)
    assert _fields(usage) == ["from"]


@pytest.mark.parametrize("depth", [33, 10_000, 30_000])
def test_nesting_beyond_32_levels_is_refused(
    client: FlaskClient, admin: Person, depth: int
) -> None:
    body = _with_raw({**GRANT, "amount": "1"}, "extra", "[" * depth + "]" * depth)
    response = _raw(client, "POST", "/api/admin/credit/grant", body, admin)
    assert _fields(response) == ["body"]


def test_nesting_within_the_bound_reaches_the_fields(client: FlaskClient, admin: Person) -> None:
    body = _with_raw({**GRANT, "amount": "1"}, "extra", "[" * 30 + "]" * 30)
    assert _fields(_raw(client, "POST", "/api/admin/credit/grant", body, admin)) == ["extra"]


def test_a_key_given_twice_is_refused_naming_it_and_grants_nothing(
    client: FlaskClient, admin: Person, person_factory: Any
) -> None:
    meant, taken = person_factory(), person_factory()
    body = f'{{"user_id": "{meant.id}", "amount": "5", "reason": "x", "user_id": "{taken.id}"}}'
    response = _raw(client, "POST", "/api/admin/credit/grant", body, admin)
    assert _fields(response) == ["user_id"]
    for person in (meant, taken):
        balance = client.get("/api/credit/balance", headers=person.headers).get_json()
        assert balance["balance"] == "0"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        # The same key once escaped: JSON reads both as "user_id".
        ('{"user_id": "1", "user\\u005fid": "2", "amount": "1", "reason": "x"}', "user_id"),
        ('{"user_id": "1", "amount": "1", "amount": "1", "reason": "x"}', "amount"),
        ('{"user_id": "1", "amount": "1", "reason": "x", "extra": {"a": 1, "a": 2}}', "a"),
        ('{"user_id": "1", "amount": "1", "reason": "x", "extra": [{}, {"b": [], "b": {}}]}', "b"),
    ],
)
def test_a_key_given_twice_anywhere_in_the_body_is_refused_naming_it(
    client: FlaskClient, admin: Person, body: str, key: str
) -> None:
    response = _raw(client, "POST", "/api/admin/credit/grant", body, admin)
    assert _fields(response) == [key]


@pytest.mark.real_clock
def test_a_chunked_body_over_64_kib_is_413_not_cut(app: Flask, admin: Person) -> None:
    body = json.dumps({"user_id": str(admin.id), "amount": "1", "reason": "x" * 70_000}).encode()
    with live_server({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}) as base:
        address = urlsplit(base)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        connection.putrequest("POST", "/api/admin/credit/grant")
        for name, value in {
            **admin.headers,
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        }.items():
            connection.putheader(name, value)
        connection.endheaders()
        for start in range(0, len(body), 8192):
            part = body[start : start + 8192]
            connection.send(b"%x\r\n%s\r\n" % (len(part), part))
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
    assert (response.status, answer["error"]["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_a_reply_neither_database_can_store_is_kept_readable_and_charged(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    provider: str,
    stream: bool,
) -> None:
    """A provider's answer is outside input too: a NUL or an unpaired surrogate in it (JSON
    escapes both) is kept as U+FFFD, and the call is charged as any other."""
    person = person_factory(credits=10 * CR)
    add_price(app, provider, "odd-model", input="1", output="1")
    conversation = start_conversation(client, person, provider, "odd-model")
    fake_providers.script(provider, Answer(text="a\x00b\ud800c"))
    sent = client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "Say something odd", "stream": stream},
        headers={**person.headers, "Idempotency-Key": secrets.token_hex(8)},
    )
    shown = sent.get_data(as_text=True)  # a stream's body read to its end
    assert sent.status_code in (200, 201), shown
    assert ("a\\ufffdb\\ufffdc" in shown) or ("a\ufffdb\ufffdc" in shown), shown
    listed = client.get(f"/api/conversations/{conversation}/messages", headers=person.headers)
    replies = [m["content"] for m in listed.get_json()["items"] if m["role"] == "assistant"]
    assert replies == ["a\ufffdb\ufffdc"]
    balance = client.get("/api/credit/balance", headers=person.headers).get_json()
    assert balance["reserved"] == "0" and parse_credits(balance["balance"]) < 10 * CR
