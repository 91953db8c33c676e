"""Payment state machine.

`PaymentProcessor` is a Virtual Object keyed by the payment id (a stripe-style token that
the caller chooses). Its state `status` moves along

    NEW --makePayment--> COMPLETED_SUCCESSFULLY --cancelPayment--> CANCELLED (money returned)
     |                                                                ^
     +-------------------------cancelPayment--------------------------+ (a later payment is refused)

and `expire`, a delayed call to itself, clears the payment's state after a while.

- A payment is charged once: a repeated `makePayment` finds the payment completed.
- A cancellation that overtakes its payment (on the caller's network path) still wins: the
  payment finds the id cancelled and charges nothing.
- Restate runs the calls for one payment id one at a time, so a payment and its
  cancellation never interleave: the account is never charged without a recorded payment,
  and a payment is never refunded twice. No locks, no careful synchronisation.
- Expiry uses Restate's durable timers: the delayed `expire` call survives crashes.

`Account` is a Virtual Object keyed by account id, holding the `balance` in cents.
"""

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Literal, TypeVar

import pydantic
import restate
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # how long a payment id (its status and payment) is remembered
    payment_expiry: timedelta = field(
        default_factory=lambda: timedelta(
            seconds=float(os.environ.get("PAYMENT_EXPIRY_SECONDS", str(24 * 3600)))
        )
    )


SETTINGS = Settings()

PaymentStatus = Literal["NEW", "COMPLETED_SUCCESSFULLY", "CANCELLED"]


class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


class PaymentRequest(Model):
    account_id: str = pydantic.Field(min_length=1)
    amount_cents: int = pydantic.Field(gt=0, strict=True)


class Result(Model):
    success: bool
    reason: str


ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)

Cents = Annotated[int, pydantic.Field(gt=0, strict=True)]
_cents = pydantic.TypeAdapter(Cents)


def _problems(error: pydantic.ValidationError, prefix: str = "") -> str:
    return "; ".join(
        f"{'.'.join([prefix, *(str(part) for part in e['loc'])]).strip('.') or 'body'}: {e['msg']}"
        for e in error.errors()
    )


def parse(model: type[ModelT], body: bytes) -> ModelT:
    """Validate a JSON body; bad input is a 400 that names each faulty field."""
    try:
        return model.model_validate_json(body or b"null")
    except pydantic.ValidationError as error:
        raise restate.TerminalError(
            f"Invalid request: {_problems(error)}", status_code=400
        ) from None


def parse_cents(body: bytes) -> int:
    """Validate a body that is an amount in cents (a JSON number > 0)."""
    try:
        return _cents.validate_json(body or b"null")
    except pydantic.ValidationError as error:
        raise restate.TerminalError(
            f"Invalid request: {_problems(error, 'amountCents')}", status_code=400
        ) from None


# --------------------------------------------------------------------------------------
# Account: the balance of one account (the object key), in cents.

account = restate.VirtualObject("Account")


async def get_balance(ctx: restate.ObjectContext) -> int:
    balance = await ctx.get("balance", type_hint=int)
    if balance is None:
        # a new account starts with some money; ctx.random() is deterministic on replay
        balance = ctx.random().randint(1_000, 100_000)
        logger.info("Account %s opened with %d cents", ctx.key(), balance)
    return balance


@account.handler(name="withdraw", input_serde=restate.serde.BytesSerde(), ingress_private=True)
async def withdraw(ctx: restate.ObjectContext, body: bytes) -> Result:
    """Take `amountCents` (the body, a number) from the account, if it holds enough."""
    amount_cents = parse_cents(body)
    balance = await get_balance(ctx)
    if balance < amount_cents:
        ctx.set("balance", balance)
        logger.info("Account %s: insufficient funds for %d cents", ctx.key(), amount_cents)
        return Result(success=False, reason=f"Insufficient funds: {balance} cents")
    ctx.set("balance", balance - amount_cents)
    logger.info("Account %s: withdrew %d cents", ctx.key(), amount_cents)
    return Result(success=True, reason="Withdrawal successful")


@account.handler(name="deposit", input_serde=restate.serde.BytesSerde(), ingress_private=True)
async def deposit(ctx: restate.ObjectContext, body: bytes) -> None:
    """Add `amountCents` (the body, a number) to the account."""
    amount_cents = parse_cents(body)
    balance = await get_balance(ctx)
    ctx.set("balance", balance + amount_cents)
    logger.info("Account %s: deposited %d cents", ctx.key(), amount_cents)


# --------------------------------------------------------------------------------------
# PaymentProcessor: the state machine of one payment (the object key is the payment id).

payment_processor = restate.VirtualObject("PaymentProcessor")


@payment_processor.handler(name="makePayment", input_serde=restate.serde.BytesSerde())
async def make_payment(ctx: restate.ObjectContext, body: bytes) -> Result:
    """Charge the account once for this payment id, unless it was cancelled or paid."""
    payment = parse(PaymentRequest, body)
    status = await ctx.get("status", type_hint=str) or "NEW"
    if status == "CANCELLED":
        return Result(success=False, reason="Payment already cancelled")
    if status == "COMPLETED_SUCCESSFULLY":
        return Result(success=False, reason="Payment already completed in prior call")

    result = await ctx.object_call(
        withdraw, key=payment.account_id, arg=str(payment.amount_cents).encode()
    )
    # Remember the payment only if the money was taken: after a refusal (insufficient
    # funds) the caller may try again with the same payment id.
    if result.success:
        ctx.set("status", "COMPLETED_SUCCESSFULLY")
        ctx.set("payment", payment)
        expire_later(ctx)
        logger.info(
            "Payment %s completed: %d cents from account %s",
            ctx.key(),
            payment.amount_cents,
            payment.account_id,
        )
    return result


@payment_processor.handler(name="cancelPayment")
async def cancel_payment(ctx: restate.ObjectContext) -> None:
    """Cancel the payment: refuse it later if it has not happened, else give the money back."""
    status = await ctx.get("status", type_hint=str) or "NEW"
    if status == "NEW":
        # The cancellation may have overtaken the payment on the caller's network path:
        # remember it, so that the payment is refused when it arrives.
        ctx.set("status", "CANCELLED")
        expire_later(ctx)
        logger.info("Payment %s cancelled before it was made", ctx.key())
    elif status == "COMPLETED_SUCCESSFULLY":
        payment = await ctx.get("payment", type_hint=PaymentRequest)
        if payment is None:  # cannot happen: stored together with the status
            raise restate.TerminalError(f"Payment {ctx.key()} has no record", status_code=500)
        ctx.set("status", "CANCELLED")
        # give the money back; the call is journaled, so it happens exactly once
        await ctx.object_call(
            deposit, key=payment.account_id, arg=str(payment.amount_cents).encode()
        )
        logger.info(
            "Payment %s cancelled: %d cents back to account %s",
            ctx.key(),
            payment.amount_cents,
            payment.account_id,
        )
    # CANCELLED: nothing to do


def expire_later(ctx: restate.ObjectContext) -> None:
    """Forget this payment id after the expiry time (a durable, delayed call to `expire`)."""
    ctx.object_send(expire, key=ctx.key(), arg=None, send_delay=SETTINGS.payment_expiry)


@payment_processor.handler(name="expire", ingress_private=True)
async def expire(ctx: restate.ObjectContext) -> None:
    """Clear the payment's state: the id may then be used for a new payment."""
    ctx.clear_all()
    logger.info("Payment %s expired", ctx.key())


services = [payment_processor, account]
app = restate.app(services)
