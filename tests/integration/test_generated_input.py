"""Generated hostile input against every operation of the OpenAPI document (Hypothesis): any
JSON value, text with any code point, numbers of any size and nesting of any depth, in every
body field, query parameter and path parameter. Never a 5xx; every 4xx in the contract's error
shape; and a message refused with a 4xx holds nothing and calls no provider. A body that gives
a key twice, anywhere, is refused naming the key.

`FUZZ_EXAMPLES` sets the examples per operation (default 40)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from creditapp.ledger.models import Hold
from tests.conftest import Person
from tests.fake_providers import FakeProviders
from tests.helpers import add_price, scalar, start_conversation

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 40)
MESSAGES = "/api/conversations/{conversation_id}/messages"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
# Raw JSON text no encoder would write: numbers of any size, nesting of any depth.
raw_values = st.one_of(
    json_values.map(json.dumps),
    st.integers(1, 6000).map(lambda digits: "-" * (digits % 2) + "9" * digits),
    st.integers(1, 30_000).map(lambda depth: "[" * depth + "]" * depth),
    st.sampled_from(["NaN", "Infinity", "1e999999999", "-0", "0.1e-999", "1E400", '"\\u0000"']),
    st.text().map(lambda text: json.dumps(text + "\ud800")),
)
# Query and path text: any code point, lone surrogates percent-encoded as their bytes would be.
url_text = st.one_of(st.text(), st.sampled_from(["", "+5", " 5", "\uff15", "\u00b2", "0" * 30]))


def _body(fields: list[str]) -> st.SearchStrategy[bytes]:
    named = (
        st.dictionaries(st.sampled_from(fields), raw_values, min_size=1) if fields else st.just({})
    )
    extra = st.dictionaries(st.text(max_size=8), raw_values, max_size=1)
    document = st.tuples(named, extra).map(
        lambda parts: (
            "{"
            + ", ".join(
                f"{json.dumps(name)}: {raw}" for name, raw in {**parts[0], **parts[1]}.items()
            )
            + "}"
        )
    )
    whole = st.one_of(document, raw_values, st.just(""))
    return whole.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=64)


def _repeating(fields: list[str]) -> st.SearchStrategy[tuple[bytes, str]]:
    """A JSON object that gives one key twice, in itself or in the object of one of its keys,
    with any other keys beside; and the key given twice."""
    names = st.sampled_from(fields) | st.text(max_size=8) if fields else st.text(max_size=8)

    def members(pairs: list[tuple[str, Any]]) -> str:
        return "{" + ", ".join(f"{json.dumps(key)}: {value}" for key, value in pairs) + "}"

    @st.composite
    def document(draw: st.DrawFn) -> tuple[bytes, str]:
        key = draw(names)
        values = draw(st.lists(json_values.map(json.dumps), min_size=2, max_size=2))
        twice = members([(key, values[0]), (key, values[1])])
        others = draw(st.dictionaries(names, json_values.map(json.dumps), max_size=3))
        if draw(st.booleans()):
            others.pop(key, None)
            body = members([(key, values[0]), *others.items(), (key, values[1])])
        else:
            holder = draw(names.filter(lambda name: name not in others))
            body = members([*others.items(), (holder, twice)])
        return body.encode("utf-8", "surrogatepass"), key

    return document()


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    query: list[str]
    path_parameters: list[str]
    body: list[str] | None  # the body's fields, or None when it takes no body


def _operations(client: FlaskClient) -> list[Operation]:
    document = client.get("/api/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    found = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method == "parameters":
                continue
            parameters = [*methods.get("parameters", []), *operation.get("parameters", [])]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            schema = schemas[body["schema"]["$ref"].rsplit("/", 1)[1]] if body else None
            found.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    query=[p["name"] for p in parameters if p["in"] == "query"],
                    path_parameters=[p["name"] for p in parameters if p["in"] == "path"],
                    body=None if schema is None else list(schema.get("properties", {})),
                )
            )
    return found


def _url(operation: Operation, path_values: dict[str, str], query: dict[str, str]) -> str:
    def encoded(text: str) -> str:
        return quote(text, safe="", errors="surrogatepass")

    url = operation.path.format(**{name: encoded(value) for name, value in path_values.items()})
    if query:
        url += "?" + "&".join(f"{encoded(name)}={encoded(value)}" for name, value in query.items())
    return url


def _assert_answer(response: Any) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        assert response.is_json, response.get_data(as_text=True)[:500]
        error = response.get_json()["error"]
        if response.request.path.startswith("/v1/"):  # the gateway: OpenAI's shape
            assert set(error) == {"message", "type", "param", "code", "request_id"}
        else:
            assert set(error) == {"code", "message", "request_id", "details"}
            assert isinstance(error["details"], dict)
        assert error["message"]
        assert error["request_id"] == response.headers["X-Request-ID"]


def test_no_generated_request_gets_a_5xx(
    app: Flask,
    client: FlaskClient,
    admin: Person,
    person_factory: Any,
    fake_providers: FakeProviders,
) -> None:
    user = person_factory(credits=1_000 * 1_000_000)
    add_price(app, "openai", "gpt-fuzz", input="1", output="1")
    conversation = start_conversation(client, user, "openai", "gpt-fuzz")
    # Operations that can end the caller's session go last, so the others meet a live token.
    ending = ("logout", "revoke-sessions")
    operations = sorted(_operations(client), key=lambda op: any(w in op.path for w in ending))
    for operation in operations:
        _fuzz(
            operation,
            client,
            caller=user if operation.path == MESSAGES else admin,
            known_ids=[conversation, str(user.id), "1"],
            holds_and_calls=lambda: (
                scalar(app, select(func.count()).select_from(Hold)),
                len(fake_providers.calls("openai")),
            ),
        )


def _fuzz(
    operation: Operation,
    client: FlaskClient,
    *,
    caller: Person,
    known_ids: list[str],
    holds_and_calls: Callable[[], tuple[int, int]],
) -> None:
    path_values = st.fixed_dictionaries(
        {name: st.sampled_from(known_ids) | url_text for name in operation.path_parameters}
    )
    names = (
        st.sampled_from(operation.query) | st.text(max_size=6)
        if operation.query
        else st.text(max_size=6)
    )
    queries = st.dictionaries(names, url_text, max_size=3)
    bodies = _body(operation.body) if operation.body is not None else st.just(b"")

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(path_values=path_values, query=queries, body=bodies, keyed=st.booleans())
    def request(
        path_values: dict[str, str], query: dict[str, str], body: bytes, keyed: bool
    ) -> None:
        headers = dict(caller.headers)
        if keyed:
            headers["Idempotency-Key"] = secrets.token_hex(8)
        before = holds_and_calls()
        response = client.open(
            _url(operation, path_values, query),
            method=operation.method,
            data=body,
            content_type="application/json",
            headers=headers,
        )
        _assert_answer(response)
        if operation.path == MESSAGES and 400 <= response.status_code < 500:
            assert holds_and_calls() == before, "a refused message held credits or called out"

    request()


def test_a_body_giving_a_key_twice_is_refused_naming_the_key(
    client: FlaskClient, admin: Person, person_factory: Any
) -> None:
    user = person_factory(credits=1_000_000)
    made = client.post("/api/keys", json={"name": "repeats"}, headers=user.headers)
    with_key = {"Authorization": f"Bearer {made.get_json()['key']}"}
    for operation in _operations(client):
        if operation.body is not None:
            caller = user if operation.path == MESSAGES else admin
            # The gateway takes an API key, and names the parameter in OpenAI's shape.
            headers = with_key if operation.path.startswith("/v1/") else caller.headers
            _refuse_repeated(operation, operation.body, client, headers=headers)


def _refuse_repeated(
    operation: Operation, fields: list[str], client: FlaskClient, *, headers: dict[str, str]
) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(repeating=_repeating(fields))
    def request(repeating: tuple[bytes, str]) -> None:
        body, key = repeating
        response = client.open(
            _url(operation, dict.fromkeys(operation.path_parameters, "1"), {}),
            method=operation.method,
            data=body,
            content_type="application/json",
            headers={**headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        _assert_answer(response)
        assert response.status_code == 400, (operation.path, response.get_json())
        error = response.get_json()["error"]
        named = [error["param"]] if operation.path.startswith("/v1/") else list(error["details"])
        assert named == [key]

    request()
