"""A local stand-in for Google's certificates endpoint, with keys the test generates, and ID
tokens signed by them as Google would sign them (RS256, `kid` in the header)."""

from __future__ import annotations

import json
import secrets
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers import self_signed_certificate

CLIENT_ID = "creditapp-web.apps.googleusercontent.com"


def _key_and_certificate() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, self_signed_certificate(key, "test.googleapis.com").decode()


class GoogleCertificates:
    """Serves `{kid: PEM certificate}` as Google's v1 certificates endpoint does."""

    def __init__(self) -> None:
        self.key, certificate = _key_and_certificate()
        self.kid = "test-key-1"
        # The service caches the certificates by URL for their max-age: a later instance on a
        # port an earlier one had (ports are reused) must not be served the earlier's keys.
        self._path = f"/oauth2/v1/certs/{secrets.token_hex(8)}"
        self.fetches = 0
        certificates = json.dumps({self.kid: certificate}).encode()
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                served.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(certificates)))
                self.end_headers()
                self.wfile.write(certificates)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._path}"

    def id_token(self, *, key: Any = None, kid: str | None = None, **claims: Any) -> str:
        """An ID token as Google issues it; `claims` override or (as None) remove the defaults."""
        now = datetime.now(UTC)
        payload = {
            "iss": "https://accounts.google.com",
            "aud": CLIENT_ID,
            "sub": "110169484474386276334",
            "email": "ada@example.com",
            "email_verified": True,
            "iat": now,
            "exp": now + timedelta(hours=1),
            **claims,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(
            payload, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid}
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
