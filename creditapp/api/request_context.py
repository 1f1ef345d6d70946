"""Per-request plumbing: bounded bodies, the client's address, request id, JSON-only bodies,
security headers, access log."""

from __future__ import annotations

import io
import ipaddress
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

import structlog
from flask import Flask, Response, g, request
from flask_jwt_extended import get_jwt_identity
from werkzeug.middleware.proxy_fix import ProxyFix

from creditapp.api.identity import GATEWAY_PREFIX, established_principal
from creditapp.errors import PayloadTooLarge, UnsupportedMediaType
from creditapp.metrics import HTTP_DURATION, HTTP_REQUESTS

log = structlog.get_logger("creditapp.access")

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


_TOO_LARGE = "creditapp.body_too_large"
_REFUSED_ADDRESS = "creditapp.refused_client_address"
# How much of a refused forwarded address the log keeps: enough to see what it was.
_LOGGED_CHARS = 100


class BoundedBody:
    """WSGI middleware: a body sent without Content-Length (chunked) is read here, at most one
    byte more than the limit, so that one too large is refused (413) instead of being cut at the
    limit and parsed as if it were whole."""

    def __init__(self, wsgi_app: Any, limit: int):
        self.wsgi_app = wsgi_app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
            body = environ["wsgi.input"].read(self.limit + 1)
            if len(body) > self.limit:
                environ[_TOO_LARGE] = True
                body = b""
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]


def _ip_address(text: str | None) -> str | None:
    """`text` as an IP address in its canonical form (at most 39 characters), or None when it
    is not one. An IPv6 zone ("%eth0") names an interface of the host that wrote it, and is any
    length: not a client's address."""
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return str(address)


class ClientAddress:
    """WSGI middleware, inside ProxyFix: REMOTE_ADDR, which rate limits, audit records and logs
    take as the client's address, is a valid IP address or absent. Behind trusted proxies it
    comes from X-Forwarded-For, passed on from the client by the proxy (only a trusted proxy's
    is read: FromTrustedProxies): an entry that is not an address (any text, of any length) is
    not believed, and the address that connected is used instead."""

    def __init__(self, wsgi_app: Any):
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        claimed = environ.get("REMOTE_ADDR")
        address = _ip_address(claimed)
        if address is None:
            connected = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", claimed)
            if connected != claimed:
                environ[_REFUSED_ADDRESS] = claimed
            address = _ip_address(connected)
        if address is None:
            environ.pop("REMOTE_ADDR", None)
        else:
            environ["REMOTE_ADDR"] = address
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]


def _begin_request() -> None:
    g.started = time.perf_counter()
    offered = request.headers.get("X-Request-ID", "")
    g.request_id = offered if _SANE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=g.request_id)
    refused_address = request.environ.get(_REFUSED_ADDRESS)
    if refused_address is not None:
        log.warning(
            "forwarded_address_refused",
            forwarded=refused_address[:_LOGGED_CHARS],
            client_ip=request.remote_addr,
        )
    if request.environ.get(_TOO_LARGE):
        raise PayloadTooLarge()
    if (
        request.method in ("POST", "PUT", "PATCH")
        and (request.content_length or request.headers.get("Transfer-Encoding"))
        and not request.is_json
    ):
        raise UnsupportedMediaType()


def _finish_response(response: Response) -> Response:
    if response.status_code != 429:
        # The rate limiter adds it to every response, its window's reset: only its refusal
        # says when to come back (on a 503 it would tell clients, OpenAI's SDKs among them, to
        # wait for a window that has nothing to do with what failed).
        response.headers.pop("Retry-After", None)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Content-Security-Policy", _CSP)
    if request.path.startswith(("/api/", f"{GATEWAY_PREFIX}/")):
        response.headers["Cache-Control"] = "no-store"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    took = time.perf_counter() - g.get("started", time.perf_counter())
    # The URL rule, never the raw path: ids must not multiply the label values.
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    method = request.method if request.method in _METHODS else "OTHER"
    HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
    HTTP_DURATION.labels(method, route).observe(took)
    log.info(
        "request",
        method=request.method,
        route=route,
        path=request.path,
        status=response.status_code,
        duration_ms=round(took * 1000),
        **_caller(),
    )
    return response


def _caller() -> dict[str, str | None]:
    """Who called: the established principal (an API key names itself too), else the verified
    token's user: never a database read (the request may be failing because the database is
    down)."""
    who = established_principal()
    if who is not None:
        user_id = None if who.user_id is None else str(who.user_id)
        return {"user_id": user_id, "principal": who.identity}
    return {"user_id": _token_user_id()}


def _token_user_id() -> str | None:
    try:
        subject = get_jwt_identity()
    except RuntimeError:  # no token was verified in this request
        return None
    return None if subject is None else str(subject)


class FromTrustedProxies:
    """WSGI middleware: a request is `proxied` (its forwarded headers believed) when it comes
    from a trusted proxy's address, or over a Unix socket (only this machine reaches one);
    else it goes `direct`, whatever forwarded headers it wrote."""

    def __init__(self, direct: Any, proxied: Any, proxies: tuple[Any, ...]):
        self.direct = direct
        self.proxied = proxied
        self.proxies = proxies

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            peer = ipaddress.ip_address(environ.get("REMOTE_ADDR") or "")
        except ValueError:  # no address: a Unix socket's connection
            trusted = True
        else:
            trusted = any(peer in network for network in self.proxies)
        return (self.proxied if trusted else self.direct)(environ, start_response)  # type: ignore[no-any-return]


def register_request_context(app: Flask) -> None:
    app.wsgi_app = BoundedBody(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])  # type: ignore[method-assign]
    app.wsgi_app = ClientAddress(app.wsgi_app)  # type: ignore[method-assign]
    hops = app.config["TRUSTED_PROXY_HOPS"]
    if hops:
        # The client's address and scheme as the trusted proxies saw them (rate limits, audit
        # records, HSTS); what the client itself sends in those headers is not believed.
        app.wsgi_app = FromTrustedProxies(  # type: ignore[method-assign]
            app.wsgi_app,
            ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops),
            app.config["TRUSTED_PROXY_ADDRESSES"],
        )
    app.before_request(_begin_request)
    app.after_request(_finish_response)
