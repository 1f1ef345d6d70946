"""Google sign-in: verifying a Google ID token with google-auth.

The token must be signed by one of the keys at `certs_url` (Google's own by default), meant for
one of our OAuth client ids (`aud`), issued by Google (`iss`), unexpired, and for a verified
email. The certificates are fetched through a CacheControl session, as google-auth recommends,
so they are cached for as long as Google's response headers allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cachecontrol
import requests
from google.auth import exceptions
from google.auth.transport.requests import Request
from google.oauth2 import id_token

from creditapp.errors import DependencyUnavailable, InvalidIdToken

ISSUERS = ("accounts.google.com", "https://accounts.google.com")
# One cached HTTP session per process: the certificates are fetched once per their max-age.
_certificates = Request(session=cachecontrol.CacheControl(requests.Session()))


@dataclass(frozen=True)
class GoogleIdentity:
    sub: str
    email: str


def verify(token: str, *, client_ids: list[str], certs_url: str) -> GoogleIdentity:
    """The identity a Google ID token proves, or InvalidIdToken naming the check that failed
    (DependencyUnavailable when the certificates cannot be fetched)."""
    if not client_ids:
        raise InvalidIdToken("Google sign-in is not configured (GOOGLE_CLIENT_ID).")
    try:
        claims: dict[str, Any] = dict(
            id_token.verify_token(token, _certificates, audience=client_ids, certs_url=certs_url)
        )
    except exceptions.TransportError as error:
        raise DependencyUnavailable(
            "Google's certificates cannot be fetched.", details={"google_certs": "unreachable"}
        ) from error
    except (ValueError, exceptions.GoogleAuthError) as error:
        # Wrong audience or issuer, expired, a bad signature, an unknown key id, malformed.
        raise InvalidIdToken(f"The ID token was refused: {error}") from error
    if claims.get("iss") not in ISSUERS:
        raise InvalidIdToken(f"The ID token's issuer is not Google: {claims.get('iss')!r}.")
    if claims.get("email_verified") is not True or not isinstance(claims.get("email"), str):
        raise InvalidIdToken("The ID token's email address is not verified.")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidIdToken("The ID token names no subject.")
    return GoogleIdentity(sub=claims["sub"], email=claims["email"])
