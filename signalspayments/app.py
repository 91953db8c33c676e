"""Payment signals: combine Stripe's synchronous answer and its webhook in one handler.

    processPayment --(durable step: create + confirm PaymentIntent)--> Stripe
        |  answer "succeeded" / declined ------------------------> done
        |  answer "processing" (or delayedStatus) -> await awakeable
        |                                                 ^
    Stripe --webhook--> processWebhook --resolve awakeable (id in the intent's metadata)

Some payment methods answer "processing" and report the outcome later through a webhook.
The handler waits for whichever path applies, as one long-running durable function: the
awakeable survives crashes and restarts, and the Stripe call is a durable step with an
idempotency key derived from the invocation, so a retried step does not pay twice.
"""

import base64
import binascii
import logging
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import restate
import stripe
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

logger = restate.getLogger(__name__)
# The Stripe library logs every API response at INFO; keep the pattern's own lines visible.
logging.getLogger("stripe").setLevel(logging.WARNING)

CALLBACK_ID = "restate_callback_id"  # metadata key of the PaymentIntent: the awakeable id
# The webhook events that end a payment; others are acknowledged and ignored.
OUTCOME_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed",
                  "payment_intent.canceled")  # fmt: skip


@dataclass(frozen=True)
class Settings:
    # Real Stripe when these two are set (test keys: sk_test_..., whsec_...). `./dev run`
    # sets all three for its local Stripe stand-in.
    stripe_secret_key: str | None = os.environ.get("STRIPE_SECRET_KEY")
    webhook_secret: str | None = os.environ.get("STRIPE_WEBHOOK_SECRET")
    stripe_api_base: str | None = os.environ.get("STRIPE_API_BASE")


SETTINGS = Settings()


class PaymentRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    payment_method_id: str = Field(min_length=1)
    amount: int = Field(gt=0, description="in cents")
    delayed_status: bool = False


class PaymentOutcome(BaseModel):
    intent_id: str
    status: str
    error: str | None = None


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(f"invalid request: {problems}", status_code=400) from None


# --- Stripe --------------------------------------------------------------------------


def stripe_client() -> stripe.StripeClient:
    if not SETTINGS.stripe_secret_key:
        raise restate.TerminalError(
            "Stripe is not configured: set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET "
            "(or start the pattern with ./dev run signalspayments)"
        )
    base = {"api": SETTINGS.stripe_api_base} if SETTINGS.stripe_api_base else None
    return stripe.StripeClient(SETTINGS.stripe_secret_key, base_addresses=base)  # type: ignore[arg-type]


def create_payment_intent(
    request: PaymentRequest, idempotency_key: str, callback_id: str
) -> PaymentOutcome:
    """Create and confirm the PaymentIntent. Declines are an outcome, not an exception:
    other errors (network, Stripe unavailable) raise, and Restate retries the step."""
    client = stripe_client()
    # Cards only, so that confirming needs no return URL. (stripe-python 16's typed params
    # name this `allowed_payment_method_types`; the stand-in only knows the classic name.)
    intent = client.v1.payment_intents.create(
        params={  # type: ignore[typeddict-unknown-key]
            "amount": request.amount,
            "currency": "usd",
            "payment_method": request.payment_method_id,
            "payment_method_types": ["card"],
            "metadata": {CALLBACK_ID: callback_id},
        },
        options={"idempotency_key": idempotency_key},
    )
    try:
        intent = client.v1.payment_intents.confirm(
            intent.id, options={"idempotency_key": f"{idempotency_key}-confirm"}
        )
    except stripe.CardError as error:
        return PaymentOutcome(intent_id=intent.id, status="declined", error=error.user_message)
    return PaymentOutcome(intent_id=intent.id, status=intent.status)


def ensure_success(outcome: PaymentOutcome) -> None:
    if outcome.status == "succeeded":
        logger.info("Payment %s succeeded", outcome.intent_id)
        return
    if outcome.status in ("declined", "requires_payment_method", "canceled"):
        raise restate.TerminalError(
            f"Payment declined: {outcome.error or outcome.status}", status_code=402
        )
    raise restate.TerminalError(f"Unexpected payment status: {outcome.status}")


def verify_event(payload: bytes, signature: str | None) -> dict[str, Any]:
    if not SETTINGS.webhook_secret:
        raise restate.TerminalError("STRIPE_WEBHOOK_SECRET is not set")
    try:
        event = stripe.Webhook.construct_event(payload, signature, SETTINGS.webhook_secret)
    except (ValueError, stripe.SignatureVerificationError):
        raise restate.TerminalError("Invalid Stripe signature", status_code=400) from None
    result: dict[str, Any] = event.to_dict()
    return result


def is_awakeable_id(text: str) -> bool:
    """Restate awakeable ids are "sign_1" + base64 of the invocation id and entry index."""
    if not text.startswith("sign_1"):
        return False
    try:
        return len(base64.urlsafe_b64decode(text[6:] + "==")) >= 20
    except (ValueError, binascii.Error):
        return False


# --- the Restate service -------------------------------------------------------------

payment_service = restate.Service("PaymentService")


@payment_service.handler(name="processPayment", input_serde=BytesSerde())
async def process_payment(ctx: restate.Context, body: bytes) -> None:
    request = parse(PaymentRequest, body)
    idempotency_key = str(ctx.uuid())  # deterministic: the same on every retry
    callback_id, webhook = ctx.awakeable(type_hint=PaymentOutcome)

    outcome = await ctx.run_typed(
        "Stripe call",
        create_payment_intent,
        request=request,
        idempotency_key=idempotency_key,
        callback_id=callback_id,
    )
    if outcome.status != "processing" and not request.delayed_status:
        logger.info("Request %s was processed synchronously!", idempotency_key)
        ensure_success(outcome)
        return

    logger.info(
        "Payment intent for %s still 'processing', awaiting webhook call...", idempotency_key
    )
    outcome = await webhook
    logger.info("Webhook call for %s received!", idempotency_key)
    ensure_success(outcome)


@payment_service.handler(name="processWebhook", input_serde=BytesSerde(), accept="*/*")
async def process_webhook(ctx: restate.Context, body: bytes) -> bool:
    signature = ctx.request().headers.get("stripe-signature")
    # In a step: the signature check depends on the clock (a 5-minute tolerance), and a
    # replay after a crash must not turn a verified event into a rejected one.
    event = await ctx.run_typed("verify signature", verify_event, payload=body, signature=signature)
    if event["type"] not in OUTCOME_EVENTS:
        logger.info("Unhandled event type %s", event["type"])
        return True

    intent = event["data"]["object"]
    callback_id = (intent.get("metadata") or {}).get(CALLBACK_ID)
    if not callback_id:
        raise restate.TerminalError(f"Missing callback property: {CALLBACK_ID}", status_code=400)
    if not is_awakeable_id(callback_id):
        # Resolving a malformed id fails in the server on every retry: refuse it here.
        raise restate.TerminalError(f"Invalid callback property: {callback_id}", status_code=400)
    logger.info("Received webhook call for payment intent %s (%s)", intent["id"], event["type"])
    error = (intent.get("last_payment_error") or {}).get("message")
    outcome = PaymentOutcome(intent_id=intent["id"], status=intent["status"], error=error)
    ctx.resolve_awakeable(callback_id, outcome.model_dump())
    return True


services = [payment_service]
app = restate.app(services)
