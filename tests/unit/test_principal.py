"""One principal per door: what follows from it (rate-limit key, Idempotency-Key scope, audit
actor) is derived in one place; a user's doors share one budget and one scope of keys, and
two users' never meet."""

from __future__ import annotations

import pytest

from creditapp.auth.models import User
from creditapp.auth.principal import Principal
from creditapp.errors import CallerUnidentified


def _user(user_id: int, role: str = "user") -> User:
    return User(id=user_id, email=f"u{user_id}@example.com", role=role, tier_name="free")


def test_a_user_counts_as_one_caller_whichever_door() -> None:
    user = _user(7)
    doors = [
        Principal.signed_in(user),
        Principal.with_api_key(7, owner=user),  # a key whose id happens to equal its owner's
        Principal.with_api_key(8, owner=user),
        Principal.verified_sender("stripe"),
        Principal.verified_sender("github"),
        Principal.signed_in(_user(8)),
    ]
    expected = ["user:7", "user:7", "user:7", "webhook:stripe", "webhook:github", "user:8"]
    assert [door.rate_limit_key for door in doors] == expected
    assert [door.idempotency_scope for door in doors] == expected


def test_a_user_and_their_api_keys_share_an_idempotency_scope() -> None:
    """Contract section 4: the same user and key is the same request, whether it came signed
    in or through any of their API keys."""
    user = _user(7)
    signed_in = Principal.signed_in(user)
    keys = [Principal.with_api_key(key_id, owner=user) for key_id in (3, 4)]
    assert {door.idempotency_scope for door in (signed_in, *keys)} == {"user:7"}


def test_a_user_is_one_caller_across_sessions() -> None:
    """Limits count per user, not per token: the same user signed in twice shares them."""
    user = _user(7)
    assert Principal.signed_in(user).rate_limit_key == Principal.signed_in(user).rate_limit_key
    assert Principal.signed_in(user) == Principal.signed_in(user)


def test_the_audit_actor_of_each_door() -> None:
    user, admin = _user(7), _user(9, role="admin")
    assert Principal.signed_in(user).actor == ("user", "7")
    assert Principal.signed_in(admin).actor == ("admin", "9")
    # An API key never acts with its owner's admin role.
    assert Principal.with_api_key(3, owner=admin).actor == ("user", "9")
    assert Principal.verified_sender("stripe").actor == ("system", "webhook:stripe")


def test_a_principal_has_what_its_kind_needs() -> None:
    with pytest.raises(CallerUnidentified):
        Principal("user")
    with pytest.raises(CallerUnidentified):
        Principal("api_key", user=_user(7))
    with pytest.raises(CallerUnidentified):
        Principal("webhook")
    with pytest.raises(CallerUnidentified):
        Principal("webhook", user=_user(7), sender="stripe")


def test_a_request_has_one_principal() -> None:
    from flask import Flask

    from creditapp.api import identity

    user = _user(7)
    with Flask(__name__).test_request_context("/api/me"):
        with pytest.raises(RuntimeError):
            identity.principal()
        established = identity.establish(Principal.signed_in(user))
        assert identity.principal() is established and identity.caller() is user
        # The same caller again (a second check in the same request) is the same principal.
        assert identity.establish(Principal.signed_in(user)) is established
        with pytest.raises(RuntimeError):
            identity.establish(Principal.with_api_key(3, owner=user))
        assert identity.request_principal() is established
    with Flask(__name__).test_request_context("/api/webhooks/stripe"):
        sender = identity.establish(Principal.verified_sender("stripe"))
        assert identity.principal().rate_limit_key == "webhook:stripe"
        assert identity.principal() is sender
        with pytest.raises(RuntimeError):
            identity.caller()  # a webhook sender acts for no user
