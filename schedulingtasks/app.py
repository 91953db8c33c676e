"""Scheduling tasks: Restate as scheduler for payment reminders.

`PaymentTracker` handles Stripe-like payment events for one invoice (the object key):

    onPaymentFailure(event)                    onPaymentSuccess(event)
      paid?  -> done                             paid := true
      reminders sent < 3?
        -> send a reminder email (step)
        -> call onPaymentFailure(event) again after REMINDER_INTERVAL (durable timer)
      else
        -> escalate the invoice to the support team (step)

The reminder chain is a series of delayed calls of the object to itself. Restate keeps
the timer across crashes and restarts and triggers the next call when it is due; the
object's K/V state (`paid`, `reminder_count`) correlates the events of one invoice.

Duplicate failure events (a webhook delivered twice, a second failed charge while
reminders are already scheduled) do not start a second chain: the object remembers the
invocation id of the reminder call it scheduled (`next_reminder`), and a failure event
that arrives while another reminder is pending is logged and ignored.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    reminder_interval: timedelta = timedelta(
        seconds=float(os.environ.get("REMINDER_INTERVAL_SECONDS", str(24 * 3600)))
    )
    max_reminders: int = int(os.environ.get("MAX_REMINDERS", "3"))


SETTINGS = Settings()


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        # Stripe events carry many more fields, and Stripe adds new ones: ignore them
        extra="ignore",
    )


class EventData(Model):
    id: str
    customer: str


class StripeEvent(Model):
    """The parts of a Stripe event that the tracker uses."""

    type: str
    created: int
    data: EventData


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a request body; a 400 naming each bad field (by its JSON name) if invalid."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(problems, status_code=400) from None


def send_reminder_email(event: StripeEvent) -> None:
    # stands in for a call to an email service
    logger.info("Sending reminder email for event %s", event.data.id)


def escalate_to_support_team(event: StripeEvent) -> None:
    # stands in for opening a ticket with the support team
    logger.info("Escalating %s invoice to support team", event.data.id)


PAID = "paid"
REMINDER_COUNT = "reminder_count"
NEXT_REMINDER = "next_reminder"

payment_tracker = restate.VirtualObject("PaymentTracker")


@payment_tracker.handler(name="onPaymentSuccess", input_serde=restate.serde.BytesSerde())
async def on_payment_success(ctx: restate.ObjectContext, body: bytes) -> None:
    """The invoice is paid: no more reminders."""
    parse(StripeEvent, body)
    ctx.set(PAID, True)
    # a reminder call still scheduled will find the invoice paid and do nothing
    ctx.clear(NEXT_REMINDER)


@payment_tracker.handler(name="onPaymentFailure", input_serde=restate.serde.BytesSerde())
async def on_payment_failure(ctx: restate.ObjectContext, body: bytes) -> None:
    """Remind the customer, again after the interval; escalate after the last reminder."""
    event = parse(StripeEvent, body)
    if await ctx.get(PAID, type_hint=bool):
        return

    pending = await ctx.get(NEXT_REMINDER, type_hint=str)
    if pending is not None and pending != ctx.request().id:
        logger.info(
            "Reminders for invoice %s are already scheduled; event %s ignored",
            ctx.key(),
            event.data.id,
        )
        return

    reminders = await ctx.get(REMINDER_COUNT, type_hint=int) or 0
    if reminders < SETTINGS.max_reminders:
        ctx.set(REMINDER_COUNT, reminders + 1)
        await ctx.run_typed("send reminder email", send_reminder_email, event=event)
        # Durable timer: Restate calls this handler again when the interval is over.
        next_call = ctx.object_send(
            on_payment_failure,
            key=ctx.key(),
            arg=event.model_dump_json().encode(),
            send_delay=SETTINGS.reminder_interval,
        )
        ctx.set(NEXT_REMINDER, await next_call.invocation_id())
    else:
        await ctx.run_typed("escalate to support team", escalate_to_support_team, event=event)
        ctx.clear(NEXT_REMINDER)


services = [payment_tracker]
app = restate.app(services)
