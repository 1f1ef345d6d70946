"""Who is calling: one object for every door. A signed-in user (an access token), an API key
(the gateway's door) or a verified webhook sender (no user at all: a signature). What follows
from the caller is derived here once: the identity written in logs and audit records, the key
its rate limits are counted under, and the scope its Idempotency-Keys live in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from creditapp.auth.models import User
from creditapp.errors import CallerUnidentified

PrincipalKind = Literal["user", "api_key", "webhook"]


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    # The user acting: the signed-in user, or the API key's owner; None for a webhook sender.
    user: User | None = None
    api_key_id: int | None = None
    # A verified webhook sender's name ("stripe").
    sender: str | None = None
    # The user's id, read once when the principal is made: reading it from the user later
    # (after a rollback expired it) would be a database read, and the request's log line and
    # error answer must not need the database (it may be what failed).
    user_id: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_id", None if self.user is None else self.user.id)
        if self.kind == "user" and self.user is None:
            raise CallerUnidentified("a signed-in principal needs its user")
        if self.kind == "api_key" and (self.api_key_id is None or self.user is None):
            raise CallerUnidentified("an API key's principal needs the key's id and its owner")
        if self.kind == "webhook" and (not self.sender or self.user is not None):
            raise CallerUnidentified("a webhook sender is named, and acts for no user")

    @classmethod
    def signed_in(cls, user: User) -> Principal:
        return cls("user", user=user)

    @classmethod
    def with_api_key(cls, api_key_id: int, *, owner: User) -> Principal:
        """A call made with an API key: it spends, and is rate limited, as the key's owner (the
        member who made it, for a team's key); its Idempotency-Keys are its owner's."""
        return cls("api_key", user=owner, api_key_id=api_key_id)

    @classmethod
    def verified_sender(cls, sender: str) -> Principal:
        """A webhook whose signature was verified: `sender` names who signed it ("stripe")."""
        return cls("webhook", sender=sender)

    @property
    def identity(self) -> str:
        """Who this is, for logs: `user:<id>`, `key:<id>`, `webhook:<sender>`."""
        if self.kind == "api_key":
            return f"key:{self.api_key_id}"
        if self.kind == "webhook":
            return f"webhook:{self.sender}"
        return f"user:{self.user_id}"

    @property
    def rate_limit_key(self) -> str:
        """A user's calls are counted together, across every session and API key of theirs
        (contract, section 4: limits are keyed by user id): a new key buys no new budget."""
        if self.kind == "api_key":
            return f"user:{self.user_id}"
        return self.identity

    @property
    def idempotency_scope(self) -> str:
        """Idempotency-Keys are the user's (contract, section 4: "same user + key"), whichever
        session or API key of theirs sends them: a retry through another key is the same
        request, not a second charge. Two users' keys never meet."""
        return self.rate_limit_key

    @property
    def actor(self) -> tuple[str, str]:
        """Who the audit records name (`actor_type`, `actor_id`): a signed-in user as user or
        admin; an API key's call as its owner (a key never acts with the admin role); a webhook
        sender as the system, by name."""
        if self.kind == "webhook":
            return "system", f"webhook:{self.sender}"
        assert self.user is not None  # __post_init__: users and keys have one
        if self.kind == "user" and self.user.is_admin:
            return "admin", str(self.user_id)
        return "user", str(self.user_id)
