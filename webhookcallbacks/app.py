"""Webhook callbacks: a plain Restate handler is the target URL of a Stripe webhook.

    Stripe --POST event--> Restate ingress --> WebhookCallbackRouter/onStripeEvent
                           (durable from here)     |  1. Stripe-Signature valid? else 400
                                                   |  2. a well-formed event?   else 400
                                                   |  3. route on the event type:
         invoice.payment_failed    --one-way send--+--> PaymentTracker/<invoice id>/onPaymentFailure
         invoice.payment_succeeded --one-way send--+--> PaymentTracker/<invoice id>/onPaymentSuccess
         any other type: acknowledged and ignored  |     (idempotency key: the event id)
                                                   v
                                              200, empty body

Once the ingress has accepted the request, Restate owns the event: if the service is down
or crashes, Restate retries it until it is processed; no queue, no "events" table. The
invoice id is the key of the `PaymentTracker` Virtual Object, so all events of one invoice
meet in one object, one at a time. Stripe delivers an event at least once (again when it
sees no timely 2xx): the forwarded send carries the event id as its idempotency key, so a
redelivered event reaches the tracker once.

`PaymentTracker` here only logs and records what it was told. It has the interface of the
schedulingtasks pattern's tracker (same names, same event fields), which sends reminder
emails on durable timers: register that one instead and the router feeds it unchanged.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import restate
import stripe
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # Stripe's signing secret of the webhook endpoint (whsec_...). Without it, events are
    # accepted unsigned: anyone who can reach the ingress can then post events.
    webhook_secret: str | None = os.environ.get("STRIPE_WEBHOOK_SECRET") or None
    # how old a signature's timestamp may be (Stripe's libraries allow 5 minutes)
    signature_tolerance_seconds: int = int(
        os.environ.get("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "300")
    )
    # how long a forwarded event id is remembered (Stripe retries an event for 3 days)
    deduplication_retention: timedelta = timedelta(
        seconds=float(os.environ.get("EVENT_DEDUPLICATION_SECONDS", str(7 * 24 * 3600)))
    )


SETTINGS = Settings()


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        # Stripe events carry many more fields, and Stripe adds new ones: ignore them
        extra="ignore",
    )


# --- the Stripe event, as the webhook delivers it -------------------------------------


class EventData(Model):
    object: dict[str, Any]


class StripeEvent(Model):
    """Any Stripe event: `{"id", "type", "created", "data": {"object": {...}}}`."""

    id: str = Field(min_length=1)
    type: str
    created: int
    data: EventData


class Invoice(Model):
    id: str = Field(min_length=1)
    customer: str


class InvoiceData(Model):
    object: Invoice


class InvoiceEvent(Model):
    """The data of an `invoice.*` event: its object is the invoice."""

    data: InvoiceData


# --- the event the tracker takes (the schedulingtasks pattern's PaymentTracker event) --


class TrackerEventData(Model):
    id: str  # the id of the event that reports the payment outcome
    customer: str


class TrackerEvent(Model):
    type: str
    created: int
    data: TrackerEventData


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


def header(ctx: restate.Context, name: str) -> str | None:
    """A request header, whatever the case the sender spelled it in."""
    return next((v for k, v in ctx.request().headers.items() if k.lower() == name), None)


def verify_signature(payload: bytes, signature: str | None, secret: str) -> None:
    """Stripe signs `<timestamp>.<raw body>` with HMAC-SHA256 and the endpoint's secret."""
    if not signature:
        raise restate.TerminalError("Missing Stripe-Signature header", status_code=400)
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, secret, SETTINGS.signature_tolerance_seconds
        )
    except stripe.SignatureVerificationError as error:
        raise restate.TerminalError(
            f"Invalid Stripe-Signature header: {error.user_message}", status_code=400
        ) from None
    except ValueError:  # a body that is not UTF-8 cannot have been signed by Stripe
        raise restate.TerminalError(
            "Invalid Stripe-Signature header: the body is not UTF-8 text", status_code=400
        ) from None


_warned_unsigned = False


def warn_unsigned_once() -> None:
    global _warned_unsigned
    if not _warned_unsigned:
        _warned_unsigned = True
        logger.warning("STRIPE_WEBHOOK_SECRET is not set: accepting unsigned events")


# --- the tracker: one Virtual Object per invoice ---------------------------------------

PAID = "paid"
PAYMENT_FAILURES = "payment_failures"

payment_tracker = restate.VirtualObject(
    "PaymentTracker", idempotency_retention=SETTINGS.deduplication_retention
)


def notify_payment_failed(invoice: str, event: TrackerEvent) -> None:
    # stands in for a reminder email (the schedulingtasks pattern sends them on timers)
    logger.info(
        "Payment failed for invoice %s (event %s): reminding customer %s",
        invoice,
        event.data.id,
        event.data.customer,
    )


def record_payment(invoice: str, event: TrackerEvent) -> None:
    # stands in for booking the payment in the accounting system
    logger.info("Invoice %s paid (event %s)", invoice, event.data.id)


@payment_tracker.handler(name="onPaymentFailure", input_serde=BytesSerde())
async def on_payment_failure(ctx: restate.ObjectContext, body: bytes) -> None:
    event = parse(TrackerEvent, body)
    if await ctx.get(PAID, type_hint=bool):
        logger.info("Invoice %s is paid already; event %s ignored", ctx.key(), event.data.id)
        return
    failures = await ctx.get(PAYMENT_FAILURES, type_hint=int) or 0
    ctx.set(PAYMENT_FAILURES, failures + 1)
    await ctx.run_typed("notify customer", notify_payment_failed, invoice=ctx.key(), event=event)


@payment_tracker.handler(name="onPaymentSuccess", input_serde=BytesSerde())
async def on_payment_success(ctx: restate.ObjectContext, body: bytes) -> None:
    event = parse(TrackerEvent, body)
    ctx.set(PAID, True)
    await ctx.run_typed("record payment", record_payment, invoice=ctx.key(), event=event)


# --- the router: the webhook's target URL ----------------------------------------------

# event type -> (tracker handler, its name on the wire)
ROUTES = {
    "invoice.payment_failed": (on_payment_failure, "onPaymentFailure"),
    "invoice.payment_succeeded": (on_payment_success, "onPaymentSuccess"),
}

router = restate.Service("WebhookCallbackRouter")


@router.handler(name="onStripeEvent", input_serde=BytesSerde(), accept="*/*")
async def on_stripe_event(ctx: restate.Context, body: bytes) -> None:
    """Check, parse and route one event; answer 200 (empty) once it is durably routed."""
    secret = SETTINGS.webhook_secret
    if secret:
        # In a step: the check depends on the clock (the tolerance), and a replay after a
        # crash must not turn a verified event into a rejected one.
        signature = header(ctx, "stripe-signature")
        await ctx.run_typed(
            "verify signature", verify_signature, payload=body, signature=signature, secret=secret
        )
    else:
        warn_unsigned_once()

    event = parse(StripeEvent, body)
    route = ROUTES.get(event.type)
    if route is None:
        logger.info("Ignoring event %s of type %s", event.id, event.type)
        return

    handler, handler_name = route
    invoice = parse(InvoiceEvent, body).data.object
    forwarded = TrackerEvent(
        type=event.type,
        created=event.created,
        data=TrackerEventData(id=event.id, customer=invoice.customer),
    )
    # One-way, keyed by the invoice. The event id is the idempotency key: a redelivered
    # event finds the invocation the first delivery created (Restate remembers it for
    # EVENT_DEDUPLICATION_SECONDS) and runs nothing again.
    send = ctx.object_send(
        handler,
        key=invoice.id,
        arg=forwarded.model_dump_json().encode(),
        idempotency_key=event.id,
    )
    logger.info(
        "Event %s (%s) -> PaymentTracker/%s/%s, invocation %s",
        event.id,
        event.type,
        invoice.id,
        handler_name,
        await send.invocation_id(),
    )


services: list[restate.Service | restate.VirtualObject] = [router, payment_tracker]
app = restate.app(services)
