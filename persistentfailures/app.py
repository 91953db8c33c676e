"""Failures that do not go away: give up and compensate, pause and resume, wait as told,
and keep a blocking call off the event loop.

`Order/<orderId>/place` takes an order through four systems (in `downstream.py`, a local
stand-in), and each step meets a failure that retrying alone does not cure:

    reserve stock ──> charge card ──────────> book shipping label ──> render invoice ──> done
         ▲                │                          │                        │
         │   503 at every attempt: give  the carrier down longer     a blocking client:
         │   up after 3 (RunOptions);    than the retries: PAUSE     run in a thread, so
         │   402: at once; 429: again    (the handler's policy);     the event loop goes
         │   when told (Retry-After)     resume once it is fixed     on meanwhile
         │                │
         └─ release stock ┘  (the compensation; the caller gets 502 or 402)

- Before the card is charged, giving up is cheap. `RunOptions(max_attempts=3)` limits the
  charge step: when the provider fails at every attempt, the step raises a `TerminalError`,
  the handler releases the stock it reserved (the compensation) and fails the order.
- After the card is charged, giving up would mean refunds and apologies. The later steps
  keep the handler's own retry policy, `InvocationRetryPolicy(max_attempts=3,
  on_max_attempts="pause")`: when the attempts run out, Restate pauses the invocation
  (its journal, payment included, is kept) instead of failing it. `restate invocations
  list --status paused` shows it; once the cause is fixed (the carrier is back, or a
  deployment with the right settings is registered), `restate invocations resume` runs it
  on from where it stopped. The same policy pauses an order while this service is down.
- A provider that answers 429 with Retry-After is asked again when it says, not when the
  backoff would: the step raises `RetryableError(retry_after=...)`.
- The invoice renderer has only a blocking client. The step runs it in a worker thread
  (`asyncio.to_thread`), so this process's event loop, which serves every invocation,
  goes on meanwhile; on the loop it would stop all of them (RENDER_IN_THREAD=false shows it).

Both retry limits are set here, per step and per handler, so that they do not depend on the
server's defaults (whose policy retries 70 times, then pauses).
"""

import asyncio
import email.utils
import functools
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.exceptions import RetryableError
from restate.serde import BytesSerde

logger = restate.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request


@dataclass(frozen=True)
class Settings:
    # the warehouse, the payment provider and the invoice renderer (downstream.py)
    downstream_url: str = os.environ.get("DOWNSTREAM_URL", "http://127.0.0.1:9081")
    # the carrier; a wrong one makes the misconfigured deployment of the README
    carrier_url: str = os.environ.get("CARRIER_URL") or downstream_url
    # how long one call of a downstream system may take
    downstream_timeout: timedelta = timedelta(
        seconds=float(os.environ.get("DOWNSTREAM_TIMEOUT_SECONDS", "10"))
    )
    # the charge step: attempts before it gives up, and the first pause between them
    charge_max_attempts: int = int(os.environ.get("CHARGE_MAX_ATTEMPTS", "3"))
    charge_retry_interval: timedelta = timedelta(
        seconds=float(os.environ.get("CHARGE_RETRY_INTERVAL_SECONDS", "1"))
    )
    # the handler: attempts before Restate pauses the order, the pauses between them
    order_max_attempts: int = int(os.environ.get("ORDER_MAX_ATTEMPTS", "3"))
    order_retry_interval: timedelta = timedelta(
        seconds=float(os.environ.get("ORDER_RETRY_INTERVAL_SECONDS", "1"))
    )
    order_retry_max_interval: timedelta = timedelta(
        seconds=float(os.environ.get("ORDER_RETRY_MAX_INTERVAL_SECONDS", "10"))
    )
    # false runs the blocking renderer call on the event loop: the mistake, to see it
    render_in_thread: bool = os.environ.get("RENDER_IN_THREAD", "true").lower() != "false"


SETTINGS = Settings()

# The charge step's own limits: after the last attempt, `ctx.run_typed` raises TerminalError.
CHARGE_LIMITS = restate.RunOptions[str](
    max_attempts=SETTINGS.charge_max_attempts,
    initial_retry_interval=SETTINGS.charge_retry_interval,
    retry_interval_factor=2.0,
)

# The handler's: any other failure is retried this way, then the invocation is paused.
ORDER_RETRY_POLICY = restate.InvocationRetryPolicy(
    initial_interval=SETTINGS.order_retry_interval,
    exponentiation_factor=2.0,
    max_interval=SETTINGS.order_retry_max_interval,
    max_attempts=SETTINGS.order_max_attempts,
    on_max_attempts="pause",
)


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


class OrderRequest(Model):
    item: str = Field(min_length=1)
    card: str = Field(min_length=1)  # a card token: tok_visa, tok_unavailable, ...


class OrderResult(Model):
    order_id: str
    payment_id: str
    tracking_number: str
    invoice: str


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; a 400 naming each bad field (camelCase path) if it is wrong."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise restate.TerminalError(f"Invalid order: {problems}", status_code=400) from None


# --- the calls of the downstream systems (each one a durable step of `place`) -------------


class DownstreamError(Exception):
    """A downstream system answered with an error: transient, as far as we know."""

    def __repr__(self) -> str:  # the message Restate shows for a failed attempt
        return str(self)


@functools.cache
def client() -> httpx.AsyncClient:
    """One client for the process (a new one costs ~20 ms of CPU), created on its loop."""
    return httpx.AsyncClient(timeout=SETTINGS.downstream_timeout.total_seconds())


async def call(system: str, method: str, url: str, body: object = None) -> httpx.Response:
    """One call of a downstream system; not reaching it is a (transient) DownstreamError."""
    try:
        return await client().request(method, url, json=body)
    except httpx.HTTPError as error:
        raise DownstreamError(
            f"{system} did not answer ({type(error).__name__}: {error})"
        ) from None


def expect_ok(response: httpx.Response, system: str) -> None:
    if not response.is_success:
        raise DownstreamError(
            f"{system} answered {response.status_code} {response.reason_phrase}: "
            f"{error_of(response)}"
        )


def error_of(response: httpx.Response) -> str:
    """The error a downstream system gives: its JSON `error`, or the start of its body."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


async def reserve_stock(order_id: str, item: str) -> None:
    url = f"{SETTINGS.downstream_url}/stock/reservations"
    response = await call("warehouse", "POST", url, {"orderId": order_id, "item": item})
    expect_ok(response, "warehouse")
    logger.info("Reserved %s for %s", item, order_id)


async def release_stock(order_id: str) -> None:
    url = f"{SETTINGS.downstream_url}/stock/reservations/{order_id}"
    response = await call("warehouse", "DELETE", url)
    expect_ok(response, "warehouse")
    logger.info("Released the stock of %s", order_id)


async def charge_card(order_id: str, card: str) -> str:
    url = f"{SETTINGS.downstream_url}/payments"
    response = await call("payment provider", "POST", url, {"orderId": order_id, "card": card})
    if response.status_code == 429:  # retry when the provider says, not when backoff would
        delay = retry_after(response)
        when = f"in {delay.total_seconds():g} s, as it asks" if delay else "after the backoff"
        logger.info("Payment provider busy: charging %s again %s", order_id, when)
        raise RetryableError("payment provider answered 429 Too Many Requests", retry_after=delay)
    if 400 <= response.status_code < 500:  # the provider refuses: asking again will not help
        raise restate.TerminalError(
            f"payment refused: {error_of(response)}", status_code=response.status_code
        )
    expect_ok(response, "payment provider")  # 5xx: retried, within CHARGE_LIMITS
    payment_id = str(response.json()["paymentId"])
    logger.info("Charged %s: %s", order_id, payment_id)
    return payment_id


def retry_after(response: httpx.Response) -> timedelta | None:
    """The wait a Retry-After header asks for (seconds, or an HTTP date); None without one,
    which leaves the wait to the step's backoff."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except ValueError:
        return None
    if when.tzinfo is None:  # HTTP dates are in GMT
        when = when.replace(tzinfo=UTC)
    return max(when - datetime.now(UTC), timedelta(0))


async def book_label(order_id: str) -> str:
    url = f"{SETTINGS.carrier_url}/labels"
    response = await call("carrier", "POST", url, {"orderId": order_id})
    expect_ok(response, "carrier")
    tracking_number = str(response.json()["trackingNumber"])
    logger.info("Booked shipping label %s for %s", tracking_number, order_id)
    return tracking_number


async def render_invoice(order_id: str) -> str:
    if SETTINGS.render_in_thread:
        # the loop goes on: other orders' steps, Restate's messages, this service's health
        invoice = await asyncio.to_thread(render_invoice_blocking, order_id)
    else:
        # the mistake: until the renderer answers, nothing else in this process runs
        invoice = render_invoice_blocking(order_id)
    logger.info("Rendered invoice %s for %s", invoice, order_id)
    return invoice


def render_invoice_blocking(order_id: str) -> str:
    """The renderer's client library is synchronous (urllib stands for it here): the call
    holds its thread until the answer comes."""
    request = urllib.request.Request(
        f"{SETTINGS.downstream_url}/invoices",
        data=json.dumps({"orderId": order_id}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    timeout = SETTINGS.downstream_timeout.total_seconds()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(json.load(response)["invoice"])
    except urllib.error.HTTPError as error:
        raise DownstreamError(f"invoice renderer answered {error.code} {error.reason}") from None
    except OSError as error:  # not reached, or no answer in time
        raise DownstreamError(f"invoice renderer did not answer ({error})") from None


# --- the order ----------------------------------------------------------------------------

STATUS = "status"  # paid, completed, cancelled

order = restate.VirtualObject("Order")


@order.handler(name="place", input_serde=BytesSerde(), invocation_retry_policy=ORDER_RETRY_POLICY)
async def place(ctx: restate.ObjectContext, body: bytes) -> OrderResult:
    """Reserve, charge, ship and invoice the order (the object key) once."""
    request = parse(OrderRequest, body)
    order_id = ctx.key()
    if await ctx.get(STATUS, type_hint=str) is not None:
        raise restate.TerminalError(f"Order {order_id} was placed already", status_code=409)

    await ctx.run_typed("reserve stock", reserve_stock, order_id=order_id, item=request.item)
    try:
        payment_id = await ctx.run_typed(
            "charge card", charge_card, CHARGE_LIMITS, order_id=order_id, card=request.card
        )
    except restate.TerminalError as error:
        # refused (4xx), or failed at every attempt: undo the reservation, fail the order
        await ctx.run_typed("release stock", release_stock, order_id=order_id)
        ctx.set(STATUS, "cancelled")
        gave_up = error.status_code >= 500
        reason = (
            f"payment failed {SETTINGS.charge_max_attempts} times, the last: {error.message}"
            if gave_up
            else error.message
        )
        raise restate.TerminalError(
            f"Order {order_id} cancelled and its stock released: {reason}",
            status_code=502 if gave_up else error.status_code,
        ) from None
    ctx.set(STATUS, "paid")

    # From here on the customer has paid: no step gives up. A failure that lasts pauses the
    # order (ORDER_RETRY_POLICY) until someone fixes the cause and resumes it.
    tracking_number = await ctx.run_typed("book shipping label", book_label, order_id=order_id)
    invoice = await ctx.run_typed("render invoice", render_invoice, order_id=order_id)
    ctx.set(STATUS, "completed")
    return OrderResult(
        order_id=order_id, payment_id=payment_id, tracking_number=tracking_number, invoice=invoice
    )


services = [order]
app = restate.app(services)
