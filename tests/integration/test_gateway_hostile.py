"""Hostile requests to `/v1/chat/completions` (nesting 10,000 deep, NUL bytes, lone surrogates,
huge numbers, too many stop sequences, parameters it does not take, not JSON, too big), and
generated ones: each answered with a status OpenAI's SDKs know, in OpenAI's error shape, never
a 500. In process (Flask's test client): the live server's tests prove the same door end to
end."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests.helpers import add_price
from tests.integration.gateway_client import make_key

COMPLETIONS = "/v1/chat/completions"
MODEL = "openai/gpt-test"
MESSAGES = [{"role": "user", "content": "Hello there"}]
CREDITS = 1_000 * 1_000_000


@pytest.fixture
def key_headers(app: Flask, client: FlaskClient, person_factory: Any) -> dict[str, str]:
    add_price(app, "openai", "gpt-test", input="1", output="2")
    add_price(app, "anthropic", "claude-test", input="1", output="2")
    _id, key = make_key(client, person_factory(credits=CREDITS))
    return {"Authorization": f"Bearer {key}"}


def openai_error(response: TestResponse, status: int) -> dict[str, Any]:
    """OpenAI's error object with this status: `{"error": {message, type, param, code,
    request_id}}`."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error: dict[str, Any] = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


def post_raw(
    client: FlaskClient, headers: dict[str, str], body: bytes, content_type: str
) -> TestResponse:
    return client.post(COMPLETIONS, data=body, headers={**headers, "Content-Type": content_type})


def test_messages_nested_ten_thousand_deep_are_refused(
    client: FlaskClient, key_headers: dict[str, str]
) -> None:
    deep = b'{"model": "openai/gpt-test", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    error = openai_error(post_raw(client, key_headers, deep, "application/json"), 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        # NUL, escaped and raw
        b'{"model": "openai/gpt-test", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
        b'{"model": "openai/gpt-test", "messages": [{"role": "user", "content": "a\x00b"}]}',
        # a lone surrogate, escaped, and as the bytes UTF-8 forbids
        b'{"model": "openai/gpt-test", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "openai/gpt-test", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
        b'{"model": "openai/gpt-test", "messages": [{"role": "user", "content": [{"type": '
        b'"text", "text": "\\udfff"}]}]}',
    ],
)
def test_nul_bytes_and_lone_surrogates_are_refused(
    client: FlaskClient, key_headers: dict[str, str], body: bytes
) -> None:
    openai_error(post_raw(client, key_headers, body, "application/json"), 400)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 10**400}, "max_tokens"),
        ({"max_completion_tokens": -(10**30)}, "max_completion_tokens"),
        # Above the tier's most: named as the client named it.
        ({"max_tokens": 1025}, "max_tokens"),
        ({"max_completion_tokens": 1025}, "max_completion_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 1025}, "max_completion_tokens"),
        ({"temperature": 10**400}, "temperature"),
        ({"top_p": 1e308}, "top_p"),
        ({"temperature": True}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"model": None}, "model"),
        # What Anthropic refuses is refused here, not by the provider (a 502 after a hold): a
        # temperature above 1, a stop sequence of only whitespace.
        ({"model": "anthropic/claude-test", "temperature": 1.5}, "temperature"),
        ({"model": "anthropic/claude-test", "stop": ["END", "\n"]}, "stop"),
    ],
)
def test_out_of_range_and_unknown_parameters_are_named(
    client: FlaskClient, key_headers: dict[str, str], fields: dict[str, Any], param: str
) -> None:
    body = json.dumps({"model": MODEL, "messages": MESSAGES, **fields}).encode()
    error = openai_error(post_raw(client, key_headers, body, "application/json"), 400)
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert param in error["message"]


@pytest.mark.parametrize("body", [b"[]", b'"model"', b"null", b"12", b"true"])
def test_a_body_that_is_not_an_object_names_no_parameter(
    client: FlaskClient, key_headers: dict[str, str], body: bytes
) -> None:
    error = openai_error(post_raw(client, key_headers, body, "application/json"), 400)
    assert (error["param"], error["code"]) == (None, "validation_error")
    assert "_schema" not in error["message"]


def test_a_body_that_is_not_json_is_415_and_one_too_big_413(
    client: FlaskClient, key_headers: dict[str, str]
) -> None:
    body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
    openai_error(post_raw(client, key_headers, body, "text/plain"), 415)
    openai_error(post_raw(client, key_headers, b"{not json", "application/json"), 400)
    big = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * (64 * 1024)}]}
    ).encode()
    openai_error(post_raw(client, key_headers, big, "application/json"), 413)


# Any JSON value, for a parameter to be anything at all.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=40)
parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=3)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
models = st.sampled_from([MODEL, "anthropic/claude-test", "openai/unpriced", "demo", "nobody/x"])
# Requests a client would send (every value of the right kind, a few out of range) ...
sent = st.fixed_dictionaries(
    {
        "model": models,
        "messages": st.lists(
            st.fixed_dictionaries({"role": roles, "content": texts | parts}), min_size=1, max_size=4
        ),
    },
    optional={
        "max_tokens": st.integers(min_value=0, max_value=1_100),
        "max_completion_tokens": st.integers(min_value=0, max_value=1_100),
        "temperature": st.floats(min_value=0, max_value=2.1),
        "top_p": st.floats(min_value=0, max_value=1.1),
        "stop": texts | st.lists(texts, max_size=5),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "user": texts,
    },
)
# ... and requests of any JSON at all.
anything = st.dictionaries(
    st.sampled_from(["model", "messages", "max_tokens", "temperature", "stop", "stream", "tools"]),
    json_values,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=sent | anything | json_values)
def test_generated_requests_get_known_statuses_in_openai_shape(
    client: FlaskClient, key_headers: dict[str, str], body: Any
) -> None:
    response = client.post(
        COMPLETIONS,
        data=json.dumps(body),
        headers={**key_headers, "Content-Type": "application/json"},
    )
    event(f"answered {response.status_code}")  # --hypothesis-show-statistics
    assert response.status_code in {200, 400, 402, 403, 404}, response.get_data(as_text=True)
    if response.status_code != 200:
        error = openai_error(response, response.status_code)
        # A parameter the request gave or lacked, or none (a refusal of the whole request).
        given = set(body) if isinstance(body, dict) else set()
        assert error["param"] in {None, "model", "messages", *given}
    elif body.get("stream") is True:  # only an object can have been answered
        assert response.get_data().endswith(b"data: [DONE]\n\n")
    else:
        assert response.get_json()["object"] == "chat.completion"
