"""The production edge: Debian's nginx with the shipped deploy/nginx/creditapp.conf in front of
a real gunicorn. Slow clients do not hold gunicorn's threads, nginx's own errors are JSON in the
contract's shape, and the app sees the client's address (TRUSTED_PROXY_HOPS=1)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from creditapp.ledger.models import AuditRecord
from tests.conftest import Person
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import add_price, scalar, start_conversation
from tests.integration.live_server import free_port, live_server
from tests.integration.nginx import nginx_in_front

pytestmark = pytest.mark.real_clock


def _port(base: str) -> int:
    port = urlsplit(base).port
    assert port is not None
    return port


@contextmanager
def _edge(app: Flask) -> Iterator[tuple[str, str]]:
    """(nginx, gunicorn): eight gunicorn threads behind nginx. In one process, so that ten
    stalled clients are sure to take all eight (two processes might share them unevenly)."""
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "TRUSTED_PROXY_HOPS": "1"}
    with (
        live_server(env, workers=1, threads=8) as gunicorn,
        nginx_in_front(_port(gunicorn)) as nginx,
    ):
        yield nginx, gunicorn


def _request(
    base: str, method: str, path: str, **options: Any
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, sent as given (headers, body, source address)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1",
        _port(base),
        timeout=options.get("timeout", 10),
        source_address=options.get("source"),
    )
    try:
        connection.request(
            method, path, body=options.get("body"), headers=options.get("headers", {})
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _assert_json_error(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got, headers, body = answer
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert (error["code"], error["details"]) == (code, {})
    assert error["request_id"] == headers["X-Request-ID"] and error["message"]


@contextmanager
def _slow_clients(base: str, person: Person, count: int) -> Iterator[None]:
    """`count` clients that send their headers and half a body, then nothing."""
    clients = []
    head = (
        "POST /api/admin/credit/grant HTTP/1.1\r\nHost: creditapp\r\n"
        f"Authorization: Bearer {person.token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 60000\r\n\r\n"
    ).encode()
    try:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", _port(base)))
            client.sendall(head + b"{" + b" " * 30_000)
            clients.append(client)
        time.sleep(0.5)  # let the server take them in
        yield
    finally:
        for client in clients:
            with suppress(OSError):
                client.close()


def test_ten_slow_clients_do_not_delay_balance_reads(app: Flask, admin: Person) -> None:
    with _edge(app) as (nginx, gunicorn):
        # Without nginx, ten stalled bodies hold all eight of gunicorn's threads.
        with _slow_clients(gunicorn, admin, 10), pytest.raises(TimeoutError):
            _request(gunicorn, "GET", "/api/credit/balance", headers=_auth(admin), timeout=2)
        with _slow_clients(nginx, admin, 10):
            connection = http.client.HTTPConnection("127.0.0.1", _port(nginx), timeout=10)
            timings = []
            for _ in range(60):
                started = time.perf_counter()
                connection.request("GET", "/api/credit/balance", headers=_auth(admin))
                response = connection.getresponse()
                response.read()
                timings.append(time.perf_counter() - started)
                assert response.status == 200
            connection.close()
    p95 = statistics.quantiles(timings, n=20)[-1]
    assert p95 < 0.1, f"p95 {p95 * 1000:.1f} ms"


def _auth(person: Person) -> dict[str, str]:
    return {"Authorization": f"Bearer {person.token}"}


def test_nginx_answers_oversized_requests_in_json(app: Flask, admin: Person) -> None:
    with _edge(app) as (nginx, _gunicorn):
        big_header = {"X-Padding": "x" * 16_000}
        _assert_json_error(
            _request(nginx, "GET", "/api/me", headers=big_header), 431, "headers_too_large"
        )
        _assert_json_error(_request(nginx, "GET", "/api/me?" + "q" * 10_000), 414, "uri_too_long")
        body = json.dumps({"user_id": str(admin.id), "amount": "1", "reason": "x" * 70_000})
        headers = {**_auth(admin), "Content-Type": "application/json"}
        _assert_json_error(
            _request(nginx, "POST", "/api/admin/credit/grant", body=body, headers=headers),
            413,
            "payload_too_large",
        )
        chunks = (body[start : start + 8192].encode() for start in range(0, len(body), 8192))
        _assert_json_error(
            _request(nginx, "POST", "/api/admin/credit/grant", body=chunks, headers=headers),
            413,
            "payload_too_large",
        )
        # Under /v1, OpenAI's shape, which OpenAI's SDKs read.
        status, answer_headers, answer = _request(
            nginx, "POST", "/v1/chat/completions", body=body, headers=headers
        )
        assert (status, json.loads(answer)) == (
            413,
            {
                "error": {
                    "message": "The request body is larger than 64 KiB.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "payload_too_large",
                    "request_id": answer_headers["X-Request-ID"],
                }
            },
        )
        # The client's own sane request id is kept, by nginx's errors and the app alike.
        status, answer_headers, _ = _request(
            nginx,
            "POST",
            "/api/admin/credit/grant",
            body=body,
            headers={**headers, "X-Request-ID": "trace-42"},
        )
        assert (status, answer_headers["X-Request-ID"]) == (413, "trace-42")
        status, answer_headers, _ = _request(
            nginx, "GET", "/api/me", headers={**_auth(admin), "X-Request-ID": "trace-43"}
        )
        assert (status, answer_headers["X-Request-ID"]) == (200, "trace-43")


def test_gunicorns_own_errors_are_json_and_nginx_lets_through_what_it_takes(
    app: Flask, admin: Person
) -> None:
    with _edge(app) as (nginx, gunicorn):
        # A request line of 6 KiB is within nginx's limit: gunicorn takes it too (its default
        # 4 KiB would answer an HTML 414 that nginx passed on). The docs page takes any query.
        long_query = "/api/docs?" + "q" * 6_000
        assert _request(nginx, "GET", long_query, headers=_auth(admin))[0] == 200
        # What gunicorn refuses itself, before the app, is JSON in the contract's shape.
        _assert_json_error(
            _request(gunicorn, "GET", "/api/me?" + "q" * 10_000), 414, "uri_too_long"
        )
        _assert_json_error(
            _request(gunicorn, "GET", "/api/me", headers={"X-Padding": "x" * 16_000}),
            431,
            "headers_too_large",
        )
        with socket.create_connection(("127.0.0.1", _port(gunicorn)), timeout=10) as raw:
            raw.sendall(b"GET /api/me HTTP/9.9\r\nHost: creditapp\r\n\r\n")
            answer = raw.makefile("rb").read()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in head
        assert json.loads(body)["error"]["code"] == "bad_request"


def test_an_unreachable_gunicorn_is_a_json_502() -> None:
    with nginx_in_front(free_port()) as nginx:
        _assert_json_error(_request(nginx, "GET", "/api/me"), 502, "bad_gateway")


@pytest.fixture(scope="module")
def lone_nginx() -> Iterator[str]:
    """nginx with nothing behind it: what it answers here, it answers itself."""
    with nginx_in_front(free_port()) as nginx:
        yield nginx


def _raw(
    base: str, request: bytes, tls: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A request sent byte for byte, as no HTTP library would send it (over `tls` if given)."""
    with (
        socket.create_connection(("127.0.0.1", _port(base)), timeout=10) as plain,
        plain if tls is None else tls.wrap_socket(plain) as connection,
    ):
        connection.sendall(request)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


HOST = b"Host: creditapp\r\n"
GRANT_LINE = b"POST /api/admin/credit/grant HTTP/1.1\r\n"
BODY = b"Content-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"TRACE /api/me HTTP/1.1\r\n" + HOST + b"\r\n", 405, "method_not_allowed"),
        (b"CONNECT /api/me HTTP/1.1\r\n" + HOST + b"\r\n", 405, "method_not_allowed"),
        (GRANT_LINE + HOST + b"Transfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
        (GRANT_LINE + HOST + b"Transfer-Encoding: identity\r\n" + BODY, 501, "not_implemented"),
        (
            b"GET /api/me HTTP/3.0\r\n" + HOST + b"\r\n",
            505,
            "http_version_not_supported",
        ),
        (b"GET /api/me HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
        (b"GET /__creditapp_error HTTP/1.1\r\n" + HOST + b"\r\n", 404, "not_found"),
        (
            GRANT_LINE + HOST + b"Transfer-Encoding: chunked\r\n" + BODY,
            400,
            "bad_request",
        ),
        (
            b"POST /api/admin/credit/grant HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "bad_request",
        ),
    ],
    ids=[
        "TRACE",
        "CONNECT",
        "gzip body",
        "identity body",
        "HTTP/3.0",
        "no Host",
        "the error page",
        "length and chunked",
        "HTTP/1.0 chunked",
    ],
)
def test_every_refusal_of_nginx_itself_is_json(
    lone_nginx: str, request_bytes: bytes, status: int, code: str
) -> None:
    _assert_json_error(_raw(lone_nginx, request_bytes), status, code)


def test_nginxs_405_says_which_methods_the_api_takes(lone_nginx: str, app: Flask) -> None:
    """nginx refuses TRACE before it knows the resource: it names every method the API serves
    (the app's own 405 names the resource's)."""
    _status, headers, _body = _raw(lone_nginx, b"TRACE /api/me HTTP/1.1\r\n" + HOST + b"\r\n")
    served = {method for rule in app.url_map.iter_rules() for method in rule.methods or ()}
    assert headers["Allow"].split(", ") == sorted(served)


def test_with_tls_terminated_at_nginx_plain_http_is_a_json_400() -> None:
    """nginx's 497 (plain HTTP to its TLS port) is answered as the 400 it is, in JSON."""
    with nginx_in_front(free_port(), tls=True) as nginx:
        answer = _raw(nginx, b"GET /api/me HTTP/1.1\r\n" + HOST + b"\r\n")
        _assert_json_error(answer, 400, "bad_request")
        # Over TLS, nginx's own errors are the same JSON.
        self_signed = ssl.create_default_context()
        self_signed.check_hostname, self_signed.verify_mode = False, ssl.CERT_NONE
        answer = _raw(nginx, b"TRACE /api/me HTTP/1.1\r\n" + HOST + b"\r\n", self_signed)
        _assert_json_error(answer, 405, "method_not_allowed")


def test_the_app_sees_the_clients_address_not_what_the_client_claims(
    app: Flask, admin: Person
) -> None:
    body = json.dumps({"user_id": str(admin.id), "amount": "1", "reason": "where from"})
    headers = {**_auth(admin), "Content-Type": "application/json", "X-Forwarded-For": "6.6.6.6"}
    with _edge(app) as (nginx, _gunicorn):
        status, _, answer = _request(
            nginx,
            "POST",
            "/api/admin/credit/grant",
            body=body,
            headers=headers,
            source=("127.0.0.2", 0),
        )
    assert status == 201, answer
    seen = select(AuditRecord.client_ip).where(AuditRecord.action == "grant")
    assert scalar(app, seen) == "127.0.0.2"


def test_a_streamed_reply_passes_nginx_event_by_event(
    app: Flask, client: FlaskClient, person_factory: Any, fake_providers: FakeProviders
) -> None:
    person = person_factory(credits=100 * 1_000_000)
    add_price(app, "openai", "gpt-edge", input="1", output="1")
    conversation = start_conversation(client, person, "openai", "gpt-edge")
    words = 10
    text = " ".join(f"word{index}" for index in range(words))
    fake_providers.script("openai", Answer(text=text, piece_delay=0.2))
    with _edge(app) as (nginx, _gunicorn):
        connection = http.client.HTTPConnection("127.0.0.1", _port(nginx), timeout=30)
        connection.request(
            "POST",
            f"/api/conversations/{conversation}/messages",
            body=json.dumps({"content": "Stream it", "stream": True}),
            headers={
                **_auth(person),
                "Content-Type": "application/json",
                "Idempotency-Key": "edge-stream",
            },
        )
        response = connection.getresponse()
        assert response.status == 200
        while not response.readline().startswith(b"event: delta"):
            pass
        # The first word is here while the provider is still sending the rest: not buffered.
        (provider_stream,) = fake_providers.streams
        assert provider_stream.sent < words and not provider_stream.finished
        assert b"event: done" in response.read()
        connection.close()
