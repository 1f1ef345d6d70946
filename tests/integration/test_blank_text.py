"""Text that shows nothing is refused where blank makes no sense (issue 25, item 7): a chat
message of spaces was charged, a grant's reason of spaces was accepted. Every free-text field of
a request is a 400 naming the field when it holds only whitespace (any of Unicode's) or
invisible characters, and nothing is charged, granted or created."""

from __future__ import annotations

import secrets
import unicodedata
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditapp.text import blank
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, assert_error, start_conversation

# Every character Python (and so the API) counts as whitespace, the Unicode spaces among them
# (no-break, en and em spaces, the ideographic space, ...), and invisible ones.
WHITESPACE = [chr(code) for code in range(0x110000) if chr(code).isspace()]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u3164", "\u2800"]
blank_texts = st.text(alphabet=st.sampled_from(WHITESPACE + INVISIBLE), min_size=1, max_size=20)
SETTINGS = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def _refused(response: Any, field: str) -> None:
    error = assert_error(response, 400, "validation_error")
    assert list(error["details"]) == [field], error


def test_the_alphabet_holds_the_unicode_spaces() -> None:
    spaces = {char for char in WHITESPACE if unicodedata.category(char) == "Zs"}
    assert {" ", "\u00a0", "\u2002", "\u2003", "\u2009", "\u202f", "\u3000"} <= spaces
    assert blank("") and blank(" \u3000\u200b\n")
    assert not blank(" a ") and not blank("\u200bx") and not blank(".")


def test_a_message_of_spaces_is_refused_and_charges_nothing(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    user = person_factory(credits=10 * 1_000_000)
    add_price(app, "openai", "gpt-blank", input="1", output="1")
    conversation = start_conversation(client, user, "openai", "gpt-blank")

    @SETTINGS
    @given(content=blank_texts, stream=st.booleans())
    def send(content: str, stream: bool) -> None:
        response = client.post(
            f"/api/conversations/{conversation}/messages",
            json={"content": content, "stream": stream},
            headers={**user.headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        _refused(response, "content")

    send()
    balance = client.get("/api/credit/balance", headers=user.headers).get_json()
    assert (balance["balance"], balance["reserved"]) == ("10", "0")
    messages = client.get(f"/api/conversations/{conversation}/messages", headers=user.headers)
    assert messages.get_json()["items"] == []


def test_reasons_of_spaces_are_refused_and_grant_nothing(
    client: FlaskClient, admin: Person, person_factory: Any
) -> None:
    user = person_factory()

    @SETTINGS
    @given(reason=blank_texts, action=st.sampled_from(["grant", "adjust", "refund"]))
    def act(reason: str, action: str) -> None:
        body = (
            {"message_id": "1", "reason": reason}
            if action == "refund"
            else {"user_id": str(user.id), "amount": "5", "reason": reason}
        )
        response = client.post(
            f"/api/admin/credit/{action}",
            json=body,
            headers={**admin.headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        _refused(response, "reason")

    act()
    assert client.get("/api/credit/balance", headers=user.headers).get_json()["balance"] == "0"


def test_a_character_named_or_prompted_with_spaces_is_refused(
    client: FlaskClient, person_factory: Any
) -> None:
    user = person_factory()
    before = client.get("/api/characters", headers=user.headers).get_json()["items"]

    @SETTINGS
    @given(text=blank_texts, field=st.sampled_from(["name", "system_prompt", "model"]))
    def create(text: str, field: str) -> None:
        body = {"name": "Ada", "system_prompt": "Be brief.", "provider": "openai", "model": "m"}
        response = client.post("/api/characters", json={**body, field: text}, headers=user.headers)
        _refused(response, field)

    create()
    assert client.get("/api/characters", headers=user.headers).get_json()["items"] == before


def test_text_with_something_to_show_is_kept_as_sent(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    user = person_factory(credits=10 * 1_000_000)
    add_price(app, "openai", "gpt-blank", input="1", output="1")
    conversation = start_conversation(client, user, "openai", "gpt-blank")
    response = client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "\u3000 hi \u200b"},
        headers={**user.headers, "Idempotency-Key": "kept"},
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["message"]["content"] == "\u3000 hi \u200b"


def test_a_reply_of_only_spaces_is_not_sent_again_with_the_next_message(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    """A reply of whitespace (a reply of max_tokens 1, a stream cut after a space) is kept, as
    charged; it says nothing, and Anthropic refuses a message of no text: the conversation's
    next message is sent without it, not refused (a 502 after each hold)."""
    user = person_factory(credits=10 * 1_000_000)
    add_price(app, "anthropic", "claude-blank", input="1", output="1")
    conversation = start_conversation(client, user, "anthropic", "claude-blank")
    fake_providers.script("anthropic", Answer(text="\n"), Answer(text="Hello."))
    for content in ("Say nothing", "Now say something"):
        response = client.post(
            f"/api/conversations/{conversation}/messages",
            json={"content": content},
            headers={**user.headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        assert response.status_code == 201, response.get_json()
    last = fake_providers.calls("anthropic")[-1]["body"]["messages"]
    assert last == [
        {"role": "user", "content": "Say nothing"},
        {"role": "user", "content": "Now say something"},
    ]
