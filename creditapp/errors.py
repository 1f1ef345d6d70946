"""One exception class per broken rule; the HTTP layer renders each in the contract's shape."""

from __future__ import annotations

from typing import Any


class ConfigurationError(RuntimeError):
    """The service cannot start with these settings (a missing secret, a bad number)."""


class CreditAppError(Exception):
    """A request broke a rule. `code` and `status` are what the client sees."""

    code = "error"
    status = 400
    message = "The request could not be completed."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        self.message = message or self.message
        self.details = details or {}
        super().__init__(self.message)


class ValidationFailed(CreditAppError):
    """A field of the request is missing or not of the allowed form; `details` names each field."""

    code = "validation_error"
    status = 400
    message = "The request is not valid."


class MalformedJson(CreditAppError):
    """The body claims to be JSON but does not parse (NaN and Infinity are not JSON either)."""

    code = "malformed_json"
    status = 400
    message = "The request body is not valid JSON."


class Unauthorized(CreditAppError):
    """The request needs a valid, unexpired, correctly signed access token."""

    code = "unauthorized"
    status = 401
    message = "A valid access token is required."


class CallerUnidentified(Unauthorized):
    """Every caller is named by what its door proves: a signed-in user by their user, an API key
    by its id and its owner, a webhook sender by its name and no user. A caller missing any of
    it is not identified, and is refused as an unauthenticated request."""

    code = "caller_unidentified"
    message = "The caller could not be identified."


class InvalidApiKey(Unauthorized):
    """The gateway (`/v1`) is entered with a live API key only: a missing, unknown, revoked or
    expired key is refused, and so is an access token (keys and tokens open different doors)."""

    code = "invalid_api_key"
    message = "Invalid API key."


class Forbidden(CreditAppError):
    """The caller is authenticated but their role may not do this."""

    code = "forbidden"
    status = 403
    message = "Your role does not allow this."


class NotFound(CreditAppError):
    """The object does not exist, or it belongs to someone else (the two look the same)."""

    code = "not_found"
    status = 404
    message = "Not found."


class UserNotFound(NotFound):
    """A team member is added by the email of a user who has signed up: no user has it."""

    code = "user_not_found"
    message = "No user has this email: they must sign up first."


class NotTeamManager(Forbidden):
    """A team's owner and admins manage it (its members, their roles and caps) and see every
    member's spending; a member sees their own."""

    code = "team_managers_only"
    message = "Only the team's owner and admins may do this."


class TeamOwnerOnly(Forbidden):
    """An admin manages the team's plain members; the admins are the owner's: adding an admin,
    making a member one, changing an admin's role or cap (their own included) or the owner's
    cap, and removing another admin are the owner's to do (a cap an admin, or an admin they
    made, could lift would bind nothing; the admins the owner chose stay until the owner says
    otherwise, or they leave). So are adding members and changing members' caps when the admin
    has a cap of their own: a member they add or uncap may be themselves under another account
    (as many as they like), and their cap would bind nothing either."""

    code = "team_owner_only"
    message = "Only the team's owner may change this member."


class AlreadyTeamMember(CreditAppError):
    """A user is a member of a team once, with one role and one cap."""

    code = "already_team_member"
    status = 409
    message = "This user is already a member of the team."


class TeamOwnerFixed(CreditAppError):
    """A team's owner stays its owner: they cannot be removed, and their role does not change."""

    code = "team_owner_fixed"
    status = 409
    message = "The team's owner cannot be removed or given another role."


class ModelNotFound(NotFound):
    """The gateway calls a model by its price book name, `provider/model`: a name of no
    provider, or of a model with no price in force, names no model it can call."""

    code = "model_not_found"
    message = "No such model."


class InsufficientCredits(CreditAppError):
    """A hold needs `required` micro-credits available; the account has only `available`."""

    code = "insufficient_credits"
    status = 402
    message = "Not enough credits available."

    def __init__(self, *, required: int, available: int):
        # Amounts cross the wire as credit strings; money is imported lazily to keep this
        # module free of dependencies.
        from creditapp.money import format_credits

        super().__init__(
            details={"required": format_credits(required), "available": format_credits(available)}
        )
        self.required = required
        self.available = available


class MaxCreditsExceeded(CreditAppError):
    """A call that names `max_credits` is refused, before any provider call, when the worst
    case it would hold (`required`) is above it; a call that passes is never charged above it."""

    code = "max_credits_exceeded"
    status = 402
    message = "The call could cost more than the most it may be charged."

    def __init__(self, *, required: int, max_credits: int):
        from creditapp.money import format_credits

        super().__init__(
            details={
                "required": format_credits(required),
                "max_credits": format_credits(max_credits),
            }
        )
        self.required = required
        self.max_credits = max_credits


class SpendCapReached(CreditAppError):
    """A spending cap bounds what one spender may spend from an account per period: a hold is
    refused when what the spender spent this period, plus what its open holds reserve, plus the
    new hold would pass it (`required`; `remaining` is what the cap still allows)."""

    code = "spend_cap_reached"
    status = 402
    message = "This call's worst case is more than a spending cap leaves for the period."

    def __init__(self, *, cap_id: int, required: int, limit: int, spent: int, reserved: int):
        from creditapp.money import format_credits

        super().__init__(
            details={
                "required": format_credits(required),
                "limit": format_credits(limit),
                "spent": format_credits(spent),
                "reserved": format_credits(reserved),
                "remaining": format_credits(max(limit - spent - reserved, 0)),
            }
        )
        self.required = required
        self.cap_id = cap_id


class KeyLimitReached(SpendCapReached):
    """An API key's `limit` bounds what its calls may spend per `limit_period`: a hold is
    refused when what the key spent this period, plus what its open holds reserve, plus the
    new hold would pass it."""

    code = "key_limit_reached"
    message = "This call's worst case is more than this API key's limit leaves for the period."


class MemberCapReached(SpendCapReached):
    """A team member's `cap` bounds what they may spend from the team's account per
    `cap_period` (UTC day or calendar month), whichever door they call through: a hold is
    refused when their spending this period, plus their open holds, plus the new hold would
    pass it."""

    code = "member_cap_reached"
    message = "This call's worst case is more than your cap in this team leaves for the period."


class TransferToSameAccount(CreditAppError):
    """A transfer moves credits between two different accounts."""

    code = "transfer_to_same_account"
    status = 400
    message = "Credits are transferred between two different accounts."


class BalanceWouldGoNegative(CreditAppError):
    """A negative adjustment may take at most the available credits: a balance is never below
    zero, and credits reserved by open holds are not the admin's to take."""

    code = "balance_would_go_negative"
    status = 409
    message = "The adjustment would take more than the account has available."

    def __init__(self, *, requested: int, available: int):
        from creditapp.money import format_credits

        super().__init__(
            details={"requested": format_credits(requested), "available": format_credits(available)}
        )


class AmountNotPositive(CreditAppError):
    """Grants and holds move a positive number of micro-credits; zero or less moves nothing."""

    code = "amount_not_positive"
    status = 400
    message = "The amount must be positive."

    def __init__(self, message: str | None = None):
        super().__init__(message, details={"amount": [message or self.message]})


class UnknownGrantSource(CreditAppError):
    """Credits come from a subscription, a purchase, a promotion or an admin; nothing else."""

    code = "unknown_grant_source"
    status = 400
    message = "The grant source must be subscription, purchase, promo or admin."

    def __init__(self, source: str):
        super().__init__(details={"source": [f"Unknown source {source!r}."]})


class SubscriptionCreditsByRefreshOnly(CreditAppError):
    """Subscription credits are granted only by the subscription refresh, once per period; an
    admin grants purchase, promo or admin credits."""

    code = "subscription_credits_by_refresh_only"
    status = 400
    message = "Subscription credits are granted only by the subscription refresh."

    def __init__(self) -> None:
        super().__init__(details={"source": [self.message]})


class TransferCreditsByTransferOnly(CreditAppError):
    """Transfer credits arrive only by a member's transfer to a team, keeping the expiry of
    the credits moved; an admin grants purchase, promo or admin credits."""

    code = "transfer_credits_by_transfer_only"
    status = 400
    message = "Transfer credits arrive only by a transfer."

    def __init__(self) -> None:
        super().__init__(details={"source": [self.message]})


class ExpiryNotInFuture(CreditAppError):
    """What expires (a grant, an API key) must expire after the moment it is made: credits
    born expired would be written off at once, a key born expired could never be used."""

    code = "expiry_not_in_future"
    status = 400
    message = "A grant must expire in the future."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, details={"expires_at": ["Must be in the future."]})


class ZeroAdjustment(CreditAppError):
    """An adjustment changes the balance: adding or taking zero credits is not one."""

    code = "zero_adjustment"
    status = 400
    message = "An adjustment must not be zero."

    def __init__(self) -> None:
        super().__init__(details={"amount": [self.message]})


class NegativeCharge(CreditAppError):
    """A settle charges what a call cost, which is never below zero."""

    code = "negative_charge"
    status = 400
    message = "A charge cannot be negative."


class HoldNotExpired(CreditAppError):
    """Only a hold past its expiry time may be expired; before that it belongs to its request."""

    code = "hold_not_expired"
    status = 409
    message = "The hold has not expired yet."


class PriceTooPrecise(CreditAppError):
    """Prices carry at most 6 decimals of USD per 1M tokens, so that each is stored exactly."""

    code = "price_too_precise"
    status = 400
    message = "A price has at most 6 decimals."

    def __init__(self, field: str, value: object):
        super().__init__(details={field: [f"At most 6 decimals, got {value}."]})


class InconsistentUsage(CreditAppError):
    """Token counts are whole numbers >= 0; cached and cache-write tokens are part of the input,
    reasoning tokens part of the output. A provider answer that breaks this cannot be priced."""

    code = "inconsistent_usage"
    status = 502
    message = "The AI provider reported token counts that contradict each other."


class IdempotencyKeyReused(CreditAppError):
    """An Idempotency-Key names one request: same method, path and body."""

    code = "idempotency_key_reused"
    status = 409
    message = "This Idempotency-Key was used with a different request."


class RequestInProgress(CreditAppError):
    """A request with this Idempotency-Key is still running; retry after it finishes."""

    code = "request_in_progress"
    status = 409
    message = "A request with this Idempotency-Key is still in progress."


class ModelNotPriced(CreditAppError):
    """A model is only used once the price book has a price for it in force; never charged zero."""

    code = "model_not_priced"
    status = 400
    message = "This model has no price in force."


class ModelNotAllowed(CreditAppError):
    """A tier's `allowed_models` names the models its users may chat with."""

    code = "model_not_allowed"
    status = 403
    message = "Your tier does not allow this model."


class ProviderFailed(CreditAppError):
    """The AI provider failed, timed out or answered something unusable; nothing is charged,
    unless it failed during a streamed reply (what it delivered is charged, as the message
    says) or `details` says what was charged and refunded."""

    code = "provider_error"
    status = 502
    message = "The AI provider failed; nothing was charged."
    message_after_words = "The AI provider failed during the reply: what it delivered is charged."


class StreamClosedEarly(CreditAppError):
    """A stream its client closed before its first word is charged for its input (the provider
    was asked), and nothing is refunded: what a retry with its Idempotency-Key replays says so."""

    code = "stream_closed"
    status = 499
    message = "The stream was closed before its reply came: its input is charged."


class StreamTimedOut(CreditAppError):
    """A stream is settled by its deadline (a tenth of its hold's life before the hold
    expires), for what it delivered by then, however much is still to come: its reply is cut
    there. Only ever the last event of a stream, never a response's status."""

    code = "stream_timed_out"
    status = 504
    message = "The reply was not taken in time and is cut here: what it delivered is charged."


class AlreadyRefunded(CreditAppError):
    """A message's charge is refunded at most once."""

    code = "already_refunded"
    status = 409
    message = "This message was already refunded."


class Conflict(CreditAppError):
    """The request conflicts with the current state of the object."""

    code = "conflict"
    status = 409
    message = "The request conflicts with the current state."


class PayloadTooLarge(CreditAppError):
    """Request bodies are limited to 64 KiB."""

    code = "payload_too_large"
    status = 413
    message = "The request body is larger than 64 KiB."


class UnsupportedMediaType(CreditAppError):
    """Request bodies must be JSON (`Content-Type: application/json`)."""

    code = "unsupported_media_type"
    status = 415
    message = "The request body must be JSON (Content-Type: application/json)."


class RateLimited(CreditAppError):
    """Too many requests in the current window; `Retry-After` says when to come back."""

    code = "rate_limited"
    status = 429
    message = "Too many requests."


class DependencyUnavailable(CreditAppError):
    """A service the request needs (database, Redis) cannot be reached."""

    code = "service_unavailable"
    status = 503
    message = "A service this request needs is unavailable."


class CapChangedMeanwhile(CreditAppError):
    """A spending cap that did not reserve a hold is read again to say why; when it was changed
    in between (its ceiling lifted or raised, PostgreSQL: an update that matched no row locked
    none), the hold is tried again, since a call that fits a cap is never refused. A cap that
    keeps changing under every try is a 503, for the client to retry."""

    code = "spending_cap_changed"
    status = 503
    message = "A spending cap changed while the call was being held; try again."


class TokenRevoked(CreditAppError):
    """A token of a session that was signed out, revoked by an admin, or whose rotated-away
    refresh token was presented again (a stolen copy), is refused."""

    code = "token_revoked"
    status = 401
    message = "The token was revoked."


class InvalidIdToken(CreditAppError):
    """A sign-in needs a Google ID token that is correctly signed by Google, meant for this
    service (`aud`), issued by Google (`iss`), unexpired, and for a verified email address."""

    code = "invalid_id_token"
    status = 401
    message = "The ID token is not valid."


class AccountExists(CreditAppError):
    """A Google sign-in joins an existing account by its email only where Google is authoritative
    for the address (its own mail domains, or the Workspace domain the token names in `hd`), and
    never an admin's: anyone can open a Google account on any other address and have Google
    verify it, which proves nothing about who signed up with it here. The person signs in the
    way they signed up. `user_id` and `refusal` are for the security log, not the client."""

    code = "account_exists"
    status = 409
    message = "An account with this email address already exists: sign in the way you signed up."

    def __init__(self, *, user_id: int, refusal: str):
        super().__init__()
        self.user_id = user_id
        self.refusal = refusal


class PaymentProviderUnavailable(DependencyUnavailable):
    """A purchase needs Stripe to answer: while it cannot be reached (or fails), no purchase
    is started and nothing is stored."""

    code = "payment_provider_unavailable"
    message = "The payment provider cannot be reached; nothing was charged. Try again later."


class CheckoutSessionUnknown(CreditAppError):
    """Stripe refuses to look up a purchase's Checkout Session (a 4xx of its own: no such
    session, as when the secret key is another account's, or test and live modes mixed): that
    purchase cannot be settled from Stripe's side and is left to an admin; Stripe still answers
    for the others."""

    code = "checkout_session_unknown"
    status = 502
    message = "Stripe does not know this purchase's Checkout Session."


class PurchasesUnavailable(DependencyUnavailable):
    """Credits are sold only where Stripe is configured: STRIPE_SECRET_KEY to start a purchase
    and STRIPE_WEBHOOK_SECRET to learn that it was paid, both."""

    code = "purchases_unavailable"
    message = "Buying credits is not available on this service."


class WebhookSignatureInvalid(CreditAppError):
    """A webhook is believed only with a valid signature over its raw body, made with the
    shared secret within the tolerance (five minutes): anything else changes nothing."""

    code = "invalid_signature"
    status = 400
    message = "The webhook's signature is missing, invalid or too old."


class WebhookUrlRefused(CreditAppError):
    """Webhooks are posted only to https URLs of public hosts: no loopback, private,
    link-local or cloud-metadata address, checked when the endpoint is saved and again after
    DNS resolution at every delivery (unless WEBHOOK_ALLOW_PRIVATE, in tests and development)."""

    code = "webhook_url_refused"
    status = 400
    message = "Webhooks can only be sent to https URLs of public hosts."


class ThresholdsInvalid(CreditAppError):
    """An account has at most 10 low-balance thresholds, each a positive amount of credits."""

    code = "invalid_thresholds"
    status = 400
    message = "Alert thresholds are up to 10 distinct positive amounts of credits."


class WebhookEndpointDisabled(CreditAppError):
    """Nothing is sent to a disabled endpoint (by its owner, or by the service after it
    answered 410 Gone): a test event or a retry waits until it is enabled again."""

    code = "webhook_endpoint_disabled"
    status = 409
    message = "This endpoint is disabled: enable it first."


class AlreadyDelivered(CreditAppError):
    """A delivered event is not sent again on request: its receiver acknowledged it."""

    code = "already_delivered"
    status = 409
    message = "This delivery was delivered already."


class TooManyWebhookEndpoints(CreditAppError):
    """An account has at most 10 webhook endpoints (deleted ones do not count): each event is
    posted to every one that listens to it."""

    code = "too_many_webhook_endpoints"
    status = 409
    message = "This account has as many webhook endpoints as it may have."
