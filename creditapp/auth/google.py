"""Google sign-in: verifying a Google ID token with google-auth, and the user it signs in as.

The token must be signed by one of the keys at `certs_url` (Google's own by default), meant for
one of our OAuth client ids (`aud`), issued by Google (`iss`), unexpired, and for a verified
email. The certificates are fetched through a CacheControl session, as google-auth recommends,
so they are cached for as long as Google's response headers allow. Its claims are then input
like any request's: each one we read must be text both databases can store, of its form.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cachecontrol
import requests
from google.auth import exceptions
from google.auth.transport.requests import Request
from google.oauth2 import id_token
from sqlalchemy import select

from creditapp import ledger
from creditapp.auth import users
from creditapp.auth.models import User
from creditapp.database import DbSession
from creditapp.errors import (
    AccountExists,
    Conflict,
    DependencyUnavailable,
    InvalidIdToken,
    ValidationFailed,
)
from creditapp.text import is_text

ISSUERS = ("accounts.google.com", "https://accounts.google.com")
# Google's bound on its account ids, and the length of `users.google_sub`.
MAX_SUB_LENGTH = 255
MAX_DOMAIN_LENGTH = 253
# Addresses Google itself hosts: it is their authority, not only their verifier.
GOOGLE_MAIL_DOMAINS = ("gmail.com", "googlemail.com")
# Fetching Google's certificates gives up after this (a sign-in then answers 503), rather than
# google-auth's 120 s: a certificates endpoint that hangs must not hang sign-in.
GOOGLE_CERTS_TIMEOUT_SECONDS = 5


class _BoundedRequest(Request):  # type: ignore[misc]
    """google-auth's transport, with our timeout as every request's default."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", GOOGLE_CERTS_TIMEOUT_SECONDS)
        return super().__call__(*args, **kwargs)


# One cached HTTP session per process: the certificates are fetched once per their max-age.
_certificates = _BoundedRequest(session=cachecontrol.CacheControl(requests.Session()))


@dataclass(frozen=True)
class GoogleIdentity:
    sub: str
    email: str
    # `hd`: the Google Workspace domain the account belongs to, if any.
    hosted_domain: str | None

    @property
    def vouches_for_email(self) -> bool:
        """Whether Google is authoritative for the address: a Gmail address, or one of the
        Workspace domain that holds the account. Any other address Google has only verified
        (anyone may open a Google account on it), which says nothing about who signed up here
        with it; Google's guidance is to link accounts by email only in these two cases."""
        domain = self.email.rpartition("@")[2]
        return domain in GOOGLE_MAIL_DOMAINS or domain == self.hosted_domain


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
    if claims.get("email_verified") is not True:
        raise InvalidIdToken("The ID token's email address is not verified.")
    if not is_text(claims.get("sub"), max_length=MAX_SUB_LENGTH):
        raise InvalidIdToken("The ID token's subject is not a Google account id.")
    hosted_domain = claims.get("hd")
    if hosted_domain is not None and not is_text(hosted_domain, max_length=MAX_DOMAIN_LENGTH):
        raise InvalidIdToken("The ID token's hosted domain is not a domain.")
    return GoogleIdentity(
        sub=claims["sub"],
        email=_email_of(claims.get("email")),
        hosted_domain=None if hosted_domain is None else hosted_domain.lower(),
    )


def _email_of(claim: object) -> str:
    """The token's email address, by the rule of every address we take."""
    if isinstance(claim, str):
        try:
            return users.normalize_email(claim)
        except ValidationFailed:
            pass
    raise InvalidIdToken("The ID token's email address is not a valid address.")


def user_of(
    session: DbSession,
    *,
    identity: GoogleIdentity,
    context: ledger.AuditContext,
    now: datetime,
) -> User:
    """The user a verified Google identity signs in as (the caller's transaction): matched by
    Google's `sub`; else the user who already has this email and no Google identity yet, now
    linked (audited: `google_account_linked`), if Google vouches for the address and they are
    no admin (else AccountExists); else a new user of the default tier with their first grant.
    Two first sign-ins at once make one user: the unique email and `google_sub` keys refuse the
    second (IntegrityError), or it finds the first user's email taken (Conflict); its caller
    retries once and then finds the first."""
    user = session.scalars(select(User).where(User.google_sub == identity.sub)).one_or_none()
    if user is not None:
        return user
    user = users.find_by_email(session, identity.email)
    if user is None:
        user = users.create(session, email=identity.email, context=context, now=now)
        user.google_sub = identity.sub
        session.flush()
        return user
    # The same `sub` here means a sign-in that raced this one committed after the lookup above.
    if user.google_sub == identity.sub:
        return user
    if user.google_sub is not None:
        raise Conflict("This email belongs to a user of another Google account.")
    if user.is_admin:
        raise AccountExists(user_id=user.id, refusal="admin")
    if not identity.vouches_for_email:
        raise AccountExists(user_id=user.id, refusal="google_not_authoritative")
    user.google_sub = identity.sub
    session.flush()
    # Whoever holds this Google account signs in as the user from now on: audited.
    ledger.record_action(
        session,
        action="google_account_linked",
        context=context,
        now=now,
        account_id=users.personal_account_id(session, user.id),
        details={"google_sub": identity.sub, "email": identity.email},
    )
    return user
