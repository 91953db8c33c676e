"""Observability: one OpenTelemetry trace from the ingress call to the last step.

`CheckoutService/checkout` reserves stock, asks a fraud check service over HTTP, then
charges the payment (or releases the stock if the fraud check refuses). Tracing follows the
request through three processes, as one trace:

    curl (traceparent: optional) --> restate-server                              [Restate]
        ingress CheckoutService/checkout
        └─ invocation-start
           ├─ invocation-attempt    (one per attempt: after a crash, the retry is here too)
           │  ├─ reserve stock                                         [checkout-service]
           │  ├─ POST /fraud-check   (client span; `traceparent` sent with the call)
           │  │  └─ POST /fraud-check                                      [fraud-check]
           │  └─ charge payment
           └─ invocation-end

- restate-server (given `--tracing-endpoint`) makes the spans of the invocation and of each
  attempt to run the handler, and sends the attempt's span along with the request to the
  service, as its `traceparent`.
- The service makes one span per step, inside the step's function: a step that the journal
  replays does not run, so it makes no second span (`restate.ext.tracing` also makes no
  span while a handler replays).
- The fraud check continues the trace from the `traceparent` header of the HTTP call.
- The log lines of a request carry its trace id next to its invocation id.
"""

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeVar

import httpx
import restate
from opentelemetry import propagate, trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

from .telemetry import TraceIdInLogs, restate_tracer, tracer_provider


@dataclass(frozen=True)
class Settings:
    fraud_check_url: str = os.environ.get("FRAUD_CHECK_URL", "http://localhost:9081")
    fraud_check_timeout: timedelta = timedelta(
        seconds=float(os.environ.get("FRAUD_CHECK_TIMEOUT_SECONDS", "10"))
    )


SETTINGS = Settings()

logger = restate.getLogger(__name__)  # no line twice when a handler replays
logger.addFilter(TraceIdInLogs())
tracer = restate_tracer(tracer_provider("checkout-service"), __name__)
http = httpx.AsyncClient(timeout=SETTINGS.fraud_check_timeout.total_seconds())
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="forbid"
    )


class Order(Model):
    order_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    amount: float = Field(gt=0, strict=True, allow_inf_nan=False)  # no "42", no true


class Verdict(Model):
    approved: bool
    score: float


class Outcome(Model):
    order_id: str
    status: Literal["confirmed", "refused"]


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


# --- the steps: each makes its span while it runs ----------------------------------------


async def reserve_stock(order: Order) -> None:
    with tracer.start_as_current_span("reserve stock", attributes={"order.id": order.order_id}):
        logger.info("Reserved stock for order %s", order.order_id)


async def fraud_check(order: Order) -> Verdict:
    """POST the order to the fraud check, with the trace context in the headers."""
    with tracer.start_as_current_span(
        "POST /fraud-check", kind=trace.SpanKind.CLIENT, attributes={"order.id": order.order_id}
    ) as span:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # traceparent: this span, so the callee's span is its child
        response = await http.post(
            f"{SETTINGS.fraud_check_url}/fraud-check",
            json={"orderId": order.order_id, "amount": order.amount},
            headers=headers,
        )
        span.set_attribute("http.response.status_code", response.status_code)
        response.raise_for_status()  # an error is retried by Restate, the span says so
        return Verdict.model_validate(response.json())


async def charge_payment(order: Order) -> None:
    with tracer.start_as_current_span("charge payment", attributes={"order.id": order.order_id}):
        logger.info("Charged %.2f for order %s", order.amount, order.order_id)


async def release_stock(order: Order) -> None:
    with tracer.start_as_current_span("release stock", attributes={"order.id": order.order_id}):
        logger.info("Released the stock of order %s", order.order_id)


# --- the service ---------------------------------------------------------------------------

checkout_service = restate.Service("CheckoutService")


@checkout_service.handler(name="checkout", input_serde=BytesSerde())
async def checkout(ctx: restate.Context, body: bytes) -> Outcome:
    """Reserve, check, charge: `{"orderId", "status": "confirmed" | "refused"}`."""
    order = parse(Order, body)
    await ctx.run_typed("reserve stock", reserve_stock, order=order)
    verdict = await ctx.run_typed("fraud check", fraud_check, order=order)
    logger.info("Fraud check of order %s: score %.2f", order.order_id, verdict.score)
    if not verdict.approved:
        await ctx.run_typed("release stock", release_stock, order=order)
        return Outcome(order_id=order.order_id, status="refused")
    await ctx.run_typed("charge payment", charge_payment, order=order)
    return Outcome(order_id=order.order_id, status="confirmed")


services = [checkout_service]
app = restate.app(services)
