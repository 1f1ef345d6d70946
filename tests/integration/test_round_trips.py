"""The database round trips and transactions of a metered call, counted on PostgreSQL by
wrapping the driver's connection (a count is deterministic where a time is not).

A round trip is each time the driver sends the server something and waits for its answer:
a statement, a COMMIT or a ROLLBACK of a transaction that sent anything, or a pipeline of
statements sent together (named by its statements joined with " + "), a transaction's BEGIN
with its first statement. The call is counted warm (its process has served
one like it), as a busy server serves it; Redis (the rate limits) is not counted.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.pq import TransactionStatus

from creditapp import database
from creditapp.database import DeadlineConnection, DeadlineCursor
from creditapp.extensions import db
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, start_conversation
from tests.integration.gateway_client import make_key

pytestmark = pytest.mark.postgres_only

USAGE = {"prompt_tokens": 20, "completion_tokens": 5}


@dataclass
class Counted:
    """What the driver sent: each round trip named (the statement's first words)."""

    round_trips: list[str] = field(default_factory=list)
    counting: bool = False
    # The statements of a pipeline being sent: one round trip once it ends.
    pipelined: list[str] | None = None

    @property
    def transactions(self) -> int:
        return sum("BEGIN" in each.split(" + ") for each in self.round_trips)

    def sent(self, what: str) -> None:
        if not self.counting:
            return
        if self.pipelined is not None:
            self.pipelined.append(what)
        else:
            self.round_trips.append(what)

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        self.pipelined = []
        try:
            yield
        finally:
            pipelined, self.pipelined = self.pipelined, None
            if pipelined:
                self.sent(" + ".join(pipelined))


def _counting_connection(counted: Counted) -> type[DeadlineConnection]:
    # Each statement counted once sent (after the BEGIN sent before it).
    class CountingCursor(DeadlineCursor):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            if self.begins_transaction():  # enters a pipeline and executes it there: counted
                return super().execute(query, params, **kwargs)
            executed = super().execute(query, params, **kwargs)
            counted.sent(" ".join(str(query).split()[:3]))
            return executed

        def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
            # psycopg sends its rows and a BEGIN in one pipeline of its own: counted as one.
            with self.connection.pipeline():
                super().executemany(query, params_seq, **kwargs)
                counted.sent(" ".join(str(query).split()[:3]))

    class CountingConnection(DeadlineConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.cursor_factory = CountingCursor

        def _exec_command(self, command: Any, *args: Any, **kwargs: Any) -> Any:
            if bytes(command).startswith(b"BEGIN"):
                counted.sent("BEGIN")  # alone, or with the pipeline it begins
            return (yield from super()._exec_command(command, *args, **kwargs))

        @contextmanager
        def pipeline(self) -> Iterator[Any]:
            with super().pipeline() as pipeline, counted.pipeline():
                yield pipeline

        def _ends(self, command: str) -> None:
            if self.info.transaction_status != TransactionStatus.IDLE:
                counted.sent(command)

        def commit(self) -> None:
            self._ends("COMMIT")
            super().commit()

        def rollback(self) -> None:
            self._ends("ROLLBACK")
            super().rollback()

    return CountingConnection


@contextmanager
def counted_connections(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counted]:
    """The app's database connections, made again as counting ones (the app's own class of
    connection, with its deadline, counting what it sends)."""
    counted = Counted()
    monkeypatch.setattr(database, "DeadlineConnection", _counting_connection(counted))
    with app.app_context():
        db.engine.dispose()
        try:
            yield counted
        finally:
            monkeypatch.undo()
            db.engine.dispose()


@contextmanager
def counting(counted: Counted) -> Iterator[Counted]:
    counted.round_trips.clear()
    counted.counting = True
    try:
        yield counted
    finally:
        counted.counting = False


def _send(client: FlaskClient, person: Person, conversation: str, **body: Any) -> Any:
    return client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "Hello there", **body},
        headers={**person.headers, "Idempotency-Key": secrets.token_hex(8)},
    )


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_message(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    person = person_factory(credits=10**9)
    add_price(app, "openai", "gpt-counted", input="1", output="2")
    conversation = start_conversation(client, person, "openai", "gpt-counted")
    fake_providers.script("openai", Answer(usage=USAGE), Answer(usage=USAGE))
    with counted_connections(app, monkeypatch) as counted:
        warm = _send(client, person, conversation, stream=stream)
        assert warm.status_code == (200 if stream else 201), warm.get_data()
        warm.get_data()
        with counting(counted):
            sent = _send(client, person, conversation, stream=stream)
            sent.get_data()  # a stream settles as its last event is read
        assert sent.status_code == (200 if stream else 201)
    assert (len(counted.round_trips), counted.transactions) == (8 if stream else 7, 2), (
        counted.round_trips
    )


def test_a_refused_hold_rolls_its_claim_back_with_it(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 402 is one transaction: its Idempotency-Key is claimed in it and rolled back with it,
    and nothing is written to free the key after."""
    poor = person_factory()
    add_price(app, "openai", "gpt-counted", input="1", output="2")
    conversation = start_conversation(client, poor, "openai", "gpt-counted")
    with counted_connections(app, monkeypatch) as counted:
        assert _send(client, poor, conversation).status_code == 402
        with counting(counted):
            assert _send(client, poor, conversation).status_code == 402
    assert counted.transactions == 1
    assert counted.round_trips[-1] == "ROLLBACK"
    assert not [each for each in counted.round_trips if each.startswith("DELETE")]


def test_a_gateway_completion(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    person = person_factory(credits=10**9)
    add_price(app, "openai", "gpt-counted", input="1", output="2")
    _id, key = make_key(client, person)
    fake_providers.script("openai", Answer(usage=USAGE), Answer(usage=USAGE))
    call = {"model": "openai/gpt-counted", "messages": [{"role": "user", "content": "Hi"}]}

    def complete() -> Any:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": secrets.token_hex(8)}
        return client.post("/v1/chat/completions", json=call, headers=headers)

    with counted_connections(app, monkeypatch) as counted:
        assert complete().status_code == 200
        with counting(counted):
            assert complete().status_code == 200
    assert (len(counted.round_trips), counted.transactions) == (6, 2), counted.round_trips
