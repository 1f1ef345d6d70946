"""Who is calling: one object for every door. A signed-in user (an access token), an API key
(the gateway's door) or a verified webhook sender (no user at all: a signature). What follows
from the caller is derived here once: the identity written in logs and audit records, the key
its rate limits are counted under, and the scope its Idempotency-Keys live in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from creditapp.auth.models import User

PrincipalKind = Literal["user", "api_key", "webhook"]


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    # The user acting: the signed-in user, or the API key's owner; None for a webhook sender.
    user: User | None = None
    api_key_id: int | None = None
    # A verified webhook sender's name ("stripe").
    sender: str | None = None

    @classmethod
    def signed_in(cls, user: User) -> Principal:
        return cls("user", user=user)

    @property
    def identity(self) -> str:
        """Who this is, for logs and rate limits: `user:<id>`, `key:<id>`, `webhook:<sender>`."""
        if self.kind == "api_key":
            return f"key:{self.api_key_id}"
        if self.kind == "webhook":
            return f"webhook:{self.sender}"
        return f"user:{self.user_id}"

    @property
    def user_id(self) -> int | None:
        return None if self.user is None else self.user.id

    @property
    def rate_limit_key(self) -> str:
        """A key's calls are counted per key; a user's across every session of theirs."""
        return self.identity

    @property
    def idempotency_scope(self) -> str:
        """Idempotency-Keys are the caller's own: the same key from two callers never meets."""
        return self.identity
