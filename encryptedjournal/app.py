"""Encrypted journal: Restate stores only ciphertext of what a service journals.

Restate persists every value a handler receives, journals and keeps: the request, each
step's result, the K/V state, the answer. Here a journal value codec (`codec.py`) encrypts
each of them inside the service process, before it leaves for Restate, and decrypts it on
the way back. The server, its data folder, `restate sql`, `restate kv get` and the UI see
ciphertext; the callers encrypt requests and decrypt answers with the same codec
(`client.py`):

    client.py --AES-GCM(body)--> Restate ingress --(ciphertext)--> Customer/<id>/charge
        ^                        journal: input,   |  decrypt input, state, step results
        |                        step results,     |  "charge card" step  -> encrypted result
        +---decrypt(answer)----- state, output     |  settlement timer
                                 all ciphertext    |  "email receipt" step
                                                   |  encrypt state and answer

Every value names the key it was encrypted with. JOURNAL_KEYS lists the keys, newest
first: new values use the newest, older ones still decrypt with theirs, so a key rotates
by putting a new one in front and restarting the service (and the clients); an invocation
that started under the old key finishes under the new one. A value under a key that is not
listed makes the invocation retry, with the key id in its error, until the key is back; a
value whose bytes were changed fails the invocation (500, naming the key id). Neither is
ever read as a wrong value.

`Customer` (key: customer id) keeps a payment profile and charges it:
`register` stores name, email and card number; `charge` charges the card in a step, waits
for the settlement, emails a receipt in a step and records the payment; `get` shows the
profile (card masked) and the payments.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

from .codec import from_environment

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # how long the card network takes to settle a charge before the receipt goes out
    settlement_delay: timedelta = timedelta(
        seconds=float(os.environ.get("SETTLEMENT_DELAY_SECONDS", "3"))
    )


SETTINGS = Settings()

if os.environ.get("IDENTITY_KEYS"):  # see README "Request identity"
    raise SystemExit(
        "encryptedjournal: IDENTITY_KEYS is set, and then __main__.py builds the app anew, "
        "without the journal codec: the service would store plaintext. Unset IDENTITY_KEYS."
    )

# JOURNAL_KEYS (newest first), or a development key with a warning; malformed: exits here
codec = from_environment()


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="forbid"
    )


class Profile(Model):
    name: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    card_number: str = Field(pattern=r"^[0-9]{12,19}$")


class ChargeRequest(Model):
    amount_cents: int = Field(gt=0)
    description: str = Field(min_length=1)


class Payment(Model):
    payment_id: str
    amount_cents: int
    description: str


class Payments(Model):
    payments: list[Payment] = []


class Receipt(Payment):
    customer_id: str
    card_ending: str


class CustomerView(Model):
    name: str
    email: str
    card_ending: str
    payments: list[Payment]


M = TypeVar("M", bound=BaseModel)
AnyContext = restate.ObjectContext | restate.ObjectSharedContext


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


def charge_card(profile: Profile, request: ChargeRequest, payment_id: str) -> Payment:
    # stands in for a call to a payment provider with the card number
    logger.info(
        "Charged %d.%02d to card ending %s for %r (payment %s)",
        *divmod(request.amount_cents, 100),
        profile.card_number[-4:],
        request.description,
        payment_id,
    )
    return Payment(
        payment_id=payment_id, amount_cents=request.amount_cents, description=request.description
    )


def email_receipt(customer_id: str, payment: Payment) -> None:
    # stands in for an email service
    logger.info("Receipt for payment %s sent to customer %s", payment.payment_id, customer_id)


PROFILE = "profile"
PAYMENTS = "payments"

# what goes over the ingress is ciphertext, not JSON: the ingress then refuses a JSON body
# before it reaches the handler, and the handlers' descriptions in the UI say so
ENCRYPTED = "application/octet-stream"

customer = restate.VirtualObject("Customer")


async def profile_of(ctx: AnyContext) -> Profile:
    profile = await ctx.get(PROFILE, type_hint=Profile)
    if profile is None:
        raise restate.TerminalError(f"unknown customer {ctx.key()}", status_code=404)
    return profile


@customer.handler(accept=ENCRYPTED, content_type=ENCRYPTED, input_serde=BytesSerde())
async def register(ctx: restate.ObjectContext, body: bytes) -> CustomerView:
    """Store (or replace) the customer's name, email and card number."""
    profile = parse(Profile, body)
    ctx.set(PROFILE, profile)
    logger.info("Customer %s registered", ctx.key())
    return await view(ctx, profile)


@customer.handler(accept=ENCRYPTED, content_type=ENCRYPTED, input_serde=BytesSerde())
async def charge(ctx: restate.ObjectContext, body: bytes) -> Receipt:
    """Charge the card on file, wait for the settlement, email a receipt, record it."""
    request = parse(ChargeRequest, body)
    profile = await profile_of(ctx)
    payment_id = f"pay_{ctx.uuid().hex[:16]}"
    payment = await ctx.run_typed(
        "charge card", charge_card, profile=profile, request=request, payment_id=payment_id
    )
    await ctx.sleep(SETTINGS.settlement_delay, name="settlement")
    await ctx.run_typed("email receipt", email_receipt, customer_id=ctx.key(), payment=payment)
    history = await ctx.get(PAYMENTS, type_hint=Payments) or Payments()
    history.payments.append(payment)
    ctx.set(PAYMENTS, history)
    return Receipt(
        **payment.model_dump(), customer_id=ctx.key(), card_ending=profile.card_number[-4:]
    )


@customer.handler(kind="shared", content_type=ENCRYPTED)
async def get(ctx: restate.ObjectSharedContext) -> CustomerView:
    """The profile (card number masked) and the payments."""
    return await view(ctx, await profile_of(ctx))


async def view(ctx: AnyContext, profile: Profile) -> CustomerView:
    history = await ctx.get(PAYMENTS, type_hint=Payments) or Payments()
    return CustomerView(
        name=profile.name,
        email=profile.email,
        card_ending=profile.card_number[-4:],
        payments=history.payments,
    )


services = [customer]
app = restate.app(services, journal_value_codec=codec)
