"""The price book: which price is in force, and what a call costs under it.

Cost arithmetic (contract sections 1 and 3) is exact: `Decimal` USD per million tokens in,
an integer number of micro-credits out, rounded up once. 1 USD per 1M tokens is 1,000
micro-credits per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.exc import IntegrityError

from creditapp.database import DbSession
from creditapp.errors import Conflict, ModelNotPriced, PriceTooPrecise, ValidationFailed
from creditapp.kept import Kept
from creditapp.ledger import AuditContext, record_action
from creditapp.metering.usage import Usage
from creditapp.pricing.models import Price

MICRO_CREDITS_PER_USD_PER_MILLION_TOKENS = Decimal(1000)
RATE_NAMES = ("input", "output", "cached_input", "cache_write")
# A price may take effect a little before the request arrives (clock skew), never earlier:
# a row in the past would claim a price was in force when calls were charged otherwise.
EFFECTIVE_FROM_SKEW = timedelta(seconds=60)


@dataclass(frozen=True)
class CostLine:
    """One token bucket of a call's cost: tokens at a rate (USD per 1M), exactly so many
    micro-credits (not rounded: the sum of a call's lines is rounded up once)."""

    bucket: str  # input (not cached), cached_input, cache_write, output
    tokens: int
    usd_per_million: Decimal
    micro_credits: Decimal


@dataclass(frozen=True)
class Rates:
    """The four per-token prices of one tier of a price row, in USD per 1M tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None

    def lines(self, usage: Usage) -> list[CostLine]:
        """The cost of each token bucket, exact (contract section 3); a missing cached or
        cache-write price is the input price."""
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write is None else self.cache_write
        return [
            CostLine(bucket, tokens, rate, tokens * rate * MICRO_CREDITS_PER_USD_PER_MILLION_TOKENS)
            for bucket, tokens, rate in (
                ("input", usage.uncached_input_tokens, self.input),
                ("cached_input", usage.cached_tokens, cached_rate),
                ("cache_write", usage.cache_write_tokens, write_rate),
                ("output", usage.output_tokens, self.output),
            )
        ]

    def exact_micro_credits(self, usage: Usage) -> Decimal:
        """The exact cost in micro-credits, before rounding."""
        return sum((line.micro_credits for line in self.lines(usage)), Decimal(0))

    @property
    def highest_input(self) -> Decimal:
        return max(
            rate for rate in (self.input, self.cached_input, self.cache_write) if rate is not None
        )

    @property
    def free(self) -> bool:
        """Input and output 0: a call that reads and writes no cache would be charged nothing
        (cache rates alone do not make a price)."""
        return self.input == 0 and self.output == 0


def _decimal_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def tiers_of(price: Price) -> list[tuple[int, Rates]]:
    """The row's rates by prompt size: [(above_input_tokens, rates)], the base rates at 0."""
    tiers = [(0, Rates(price.input, price.output, price.cached_input, price.cache_write))]
    for tier in price.prompt_tiers or ():
        tiers.append(
            (
                int(tier["above_input_tokens"]),
                Rates(
                    Decimal(str(tier["input"])),
                    Decimal(str(tier["output"])),
                    _decimal_or_none(tier.get("cached_input")),
                    _decimal_or_none(tier.get("cache_write")),
                ),
            )
        )
    return sorted(tiers, key=lambda pair: pair[0])


def tier_for(price: Price, input_tokens: int) -> tuple[int, Rates]:
    """The tier a call falls in: the last whose threshold its input tokens exceed."""
    tiers = tiers_of(price)
    applicable = tiers[0]
    for tier in tiers[1:]:
        if input_tokens > tier[0]:
            applicable = tier
    return applicable


def round_up(exact: Decimal) -> int:
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


def cost(price: Price, usage: Usage) -> int:
    """What a call costs, in micro-credits, rounded up once."""
    _threshold, rates = tier_for(price, usage.input_tokens)
    return round_up(rates.exact_micro_credits(usage))


def worst_case(price: Price, *, input_tokens: int, max_output_tokens: int) -> int:
    """The most a call can cost: every input token at the model's highest input rate (any tier,
    cached or not) and `max_output_tokens` at its highest output rate."""
    all_rates = [rates for _threshold, rates in tiers_of(price)]
    highest_input = max(rates.highest_input for rates in all_rates)
    highest_output = max(rates.output for rates in all_rates)
    exact = (
        input_tokens * highest_input + max_output_tokens * highest_output
    ) * MICRO_CREDITS_PER_USD_PER_MILLION_TOKENS
    return round_up(exact)


def in_force(*, provider: str, model: str, at: datetime) -> ColumnElement[bool]:
    """The model's rows that took effect at or before `at` (the newest of them is in force)."""
    return and_(Price.provider == provider, Price.model == model, Price.effective_from <= at)


def not_priced(*, provider: str, model: str) -> ModelNotPriced:
    return ModelNotPriced(
        f"{provider}:{model} has no price in force.",
        details={"provider": provider, "model": model},
    )


def charges_nothing(price: Price) -> bool:
    """Whether a call of the row's model would be charged nothing whatever it sends: it is
    not callable (a call is never charged zero, and a hold must reserve something)."""
    return all(rates.free for _threshold, rates in tiers_of(price))


def priced_at_zero(*, provider: str, model: str) -> ModelNotPriced:
    return ModelNotPriced(
        f"{provider}:{model} is priced at zero: a call is never charged nothing, so it cannot"
        " be called.",
        details={"provider": provider, "model": model},
    )


def price_in_force(session: DbSession, *, provider: str, model: str, at: datetime) -> Price:
    """The newest row that took effect at or before `at`, or ModelNotPriced."""
    price = session.scalars(
        select(Price)
        .where(in_force(provider=provider, model=model, at=at))
        .order_by(Price.effective_from.desc())
        .limit(1)
    ).first()
    if price is None:
        raise not_priced(provider=provider, model=model)
    return price


# Every row of a model, newest first, as a metered call reads them (kept: `creditapp.kept`).
# Rows are never edited, and one added in this process drops the model's copy at once.
_kept_rows: Kept[tuple[str, str], tuple[Price, ...]] = Kept()


def kept_in_force(session: DbSession, *, provider: str, model: str, at: datetime) -> Price | None:
    """The row in force at `at`, from this process's copy of the model's rows, or None."""

    def load() -> tuple[Price, ...]:
        rows = tuple(
            session.scalars(
                select(Price)
                .where(Price.provider == provider, Price.model == model)
                .order_by(Price.effective_from.desc())
            )
        )
        for row in rows:  # shared by every thread: out of this session, never expired by it
            session.expunge(row)
        return rows

    rows = _kept_rows.get(session, (provider, model), load, worth_keeping=bool)
    return next((row for row in rows if row.effective_from <= at), None)


def all_in_force(*, at: datetime) -> Select[Price]:
    """The row in force at `at` of every priced model, by provider and model."""
    newest = (
        select(Price.provider, Price.model, func.max(Price.effective_from).label("since"))
        .where(Price.effective_from <= at)
        .group_by(Price.provider, Price.model)
        .subquery()
    )
    return (
        select(Price)
        .join(
            newest,
            and_(
                Price.provider == newest.c.provider,
                Price.model == newest.c.model,
                Price.effective_from == newest.c.since,
            ),
        )
        .order_by(Price.provider, Price.model)
    )


def get_all(
    *, provider: str | None = None, model: str | None = None, containing: str | None = None
) -> Select[Price]:
    """Price rows of `provider` and `model` when given, and whose provider or model name
    contains `containing` (any case; `%` and `_` match themselves)."""
    query = select(Price)
    if provider is not None:
        query = query.where(Price.provider == provider)
    if model is not None:
        query = query.where(Price.model == model)
    if containing:
        part = containing.lower()
        query = query.where(
            or_(
                func.lower(Price.model).contains(part, autoescape=True),
                func.lower(Price.provider).contains(part, autoescape=True),
            )
        )
    return query


def _check_precision(field_name: str, price: Decimal | None) -> None:
    """Counted on the digits themselves: arithmetic would round a long price to 28 digits."""
    if price is None or not price.is_finite():
        return
    _sign, digits, exponent = price.as_tuple()
    assert isinstance(exponent, int)
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if exponent + min(trailing_zeros, -exponent if exponent < 0 else 0) < -6:
        raise PriceTooPrecise(field_name, price)


def add(
    session: DbSession,
    *,
    provider: str,
    model: str,
    rates: Rates,
    effective_from: datetime,
    source: str,
    context: AuditContext,
    now: datetime,
    prompt_tiers: list[dict[str, Any]] | None = None,
) -> Price:
    """Add a row to the book, audited (the caller's transaction; rows are never edited)."""
    for field_name in RATE_NAMES:
        _check_precision(field_name, getattr(rates, field_name))
    for tier in prompt_tiers or ():
        for field_name in RATE_NAMES:
            _check_precision("prompt_tiers", _decimal_or_none(tier.get(field_name)))
    price = Price(
        provider=provider,
        model=model,
        effective_from=effective_from,
        input=rates.input,
        output=rates.output,
        cached_input=rates.cached_input,
        cache_write=rates.cache_write,
        prompt_tiers=prompt_tiers,
        source=source,
        created_at=now,
    )
    session.add(price)
    session.flush()
    _kept_rows.drop(session, (provider, model))
    record_action(
        session,
        action="price_added",
        context=context,
        now=now,
        details={
            "price_id": str(price.id),
            "provider": provider,
            "model": model,
            **{name: _usd(getattr(rates, name)) for name in RATE_NAMES},
            "effective_from": effective_from.isoformat(),
            "prompt_tiers": prompt_tiers,
            "source": source,
        },
    )
    return price


def _usd(rate: Decimal | None) -> str | None:
    return None if rate is None else format(rate.normalize(), "f")


def put(
    session: DbSession,
    *,
    provider: str,
    model: str,
    rates: Rates,
    effective_from: datetime | None,
    context: AuditContext,
    now: datetime,
) -> Price:
    """An admin's new price row, audited: it takes effect at `effective_from` (default now),
    never in the past, and never at a moment another row of the model takes effect."""
    if rates.free:
        raise ValidationFailed(
            details={
                "output": ["Input and output cannot both be 0: a call is never charged nothing."]
            }
        )
    effective_from = effective_from or now
    if effective_from < now - EFFECTIVE_FROM_SKEW:
        raise ValidationFailed(details={"effective_from": ["Must not be in the past."]})
    try:
        # The model's row at that moment is refused by its unique key (a look first would let
        # two admins' requests at once both pass, and the second fail on the key).
        with session.begin_nested():
            return add(
                session,
                provider=provider,
                model=model,
                rates=rates,
                effective_from=effective_from,
                source=f"{context.actor_type}:{context.actor_id}",
                context=context,
                now=now,
            )
    except IntegrityError as error:
        raise Conflict("A price for this model takes effect at that moment already.") from error
