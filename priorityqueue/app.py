"""Priority queue: at most 10 callers run an expensive operation at once, by priority.

    curl .../myService/expensiveMethod  {"left": 1, "right": 2, "priority": 2}
        |
        | 1. create an awakeable, send push({awakeable, priority}) one-way, wait on it
        v
    queue/myService%2FexpensiveMethod      state: items    = tickets waiting
        push / done / drop, then tick:            admitted = tickets let in
        while fewer than 10 admitted and tickets wait:
            take the lowest priority number (earliest pushed among equals),
            resolve its awakeable  ------------------------------------------+
        log "Tick end. Queue length: <waiting>, In Flight: <admitted>"        |
                                                                              |
    myService/expensiveMethod  <--- 2. awakeable resolved: my turn ----------+
        3. the expensive operation, a journaled step (5 s), -> left + right
        4. send done(awakeable) one-way: the slot goes to the next ticket

The queue is a Virtual Object: its handlers run one at a time per key, so the tickets and
the set of admitted callers in its state need no locks. The waiting happens in the callers:
each one is parked on its own awakeable, a durable future that the queue resolves when the
caller's turn comes, so a caller can wait as long as it takes without holding anything, and
a crash of the service or of Restate in between changes nothing (the ticket is in the
queue's state, the awakeable in the caller's journal).

Unlike a bare in-flight counter, the queue remembers which tickets it admitted: `done` and
`drop` name their ticket, so a duplicate or stray one changes nothing and the number in
flight stays between 0 and the limit. A caller that never reports back (its invocation was
killed) gives its slot back when the ticket's lease runs out.

The TypeScript original's callers send `done` with no body: such a `done` gives back the
slot of the ticket admitted first (the count never goes below zero), so that collection's
own queue client works against this object unchanged. Prefer the ticket id: a duplicate
bodiless `done` frees a slot that is still in use, and a queue whose callers mix both kinds
may keep one slot too few until a lease runs out (the bodiless `done` of one caller frees
another's ticket, whose own `done` is then ignored).
"""

import asyncio
import json
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


def env_float(name: str, default: str) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    # how many callers may run the expensive operation at the same time
    max_in_flight: int = field(
        default_factory=lambda: int(os.environ.get("QUEUE_MAX_IN_FLIGHT", "10"))
    )
    # how long the expensive operation takes (it stands for heavy CPU work)
    work_duration: timedelta = field(
        default_factory=lambda: timedelta(seconds=env_float("EXPENSIVE_WORK_SECONDS", "5"))
    )
    # an admitted ticket whose caller has not reported back after this long gives its slot
    # back (0: never); it must be far longer than the operation, retries included
    lease: timedelta = field(
        default_factory=lambda: timedelta(seconds=env_float("QUEUE_LEASE_SECONDS", "3600"))
    )


SETTINGS = Settings()

QUEUE_KEY = "myService/expensiveMethod"  # one queue per protected operation
ITEMS = "items"  # state: the tickets waiting, in arrival order
ADMITTED = "admitted"  # state: the tickets admitted whose callers have not reported back
IN_FLIGHT = "inFlight"  # state: how many that is (len(admitted)), as in the original

MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer a JSON (JavaScript) number holds exactly


def js_number(value: float) -> float | int:
    """A number as JavaScript writes it: 3, not 3.0."""
    return int(value) if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER else value


# A JSON number: no NaN or Infinity, no numeric strings or booleans; integral values are
# written back without ".0".
Number = Annotated[
    float,
    Field(strict=True, allow_inf_nan=False),
    PlainSerializer(js_number, return_type=Any),
]
# What `ctx.awakeable()` gives out: "sign_1" and 28 bytes in base64url (the invocation id
# and an index). Restate refuses to resolve anything else, and would make the queue retry
# forever: so a ticket must carry exactly this form.
AwakeableId = Annotated[str, Field(pattern=r"^sign_1[A-Za-z0-9_-]{37}[AQgw]$")]


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ExpensiveRequest(Model):
    """`{"left": 1, "right": 2, "priority": 1}`: lower priority numbers go first."""

    left: Number
    right: Number
    priority: Number = 1


class Ticket(Model):
    """A place in the queue: the caller's awakeable, resolved when its turn comes."""

    awakeable: AwakeableId
    priority: Number


# the body of `done` and `drop`: the awakeable id of the ticket, a JSON string
TICKET_ID = TypeAdapter(AwakeableId)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """The request body as `model`, or a 400 that names each bad field by its JSON path."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(
            f"invalid {model.__name__}: {problems}", status_code=400
        ) from None


def parse_ticket_id(body: bytes) -> str:
    """The awakeable id in a `done`/`drop` body (a JSON string), or a 400 that says so."""
    if not body:
        raise restate.TerminalError(
            "awakeable: missing; send the awakeable id of the ticket as a JSON string",
            status_code=400,
        )
    try:
        return TICKET_ID.validate_json(body)
    except ValidationError as error:
        raise restate.TerminalError(
            f"awakeable: {error.errors()[0]['msg']} (expected the awakeable id of a ticket, "
            "a JSON string)",
            status_code=400,
        ) from None


def parse_done_body(body: bytes) -> str | None:
    """The ticket a `done` names, or None for the original's `done` without one (no body or
    `null`)."""
    if not body or body.strip() == b"null":
        return None
    return parse_ticket_id(body)


def as_body(value: BaseModel | str) -> bytes:
    """A handler's JSON body (the queue's handlers take raw bytes and validate them)."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(by_alias=True).encode()
    return json.dumps(value).encode()


# --- the queue ------------------------------------------------------------------------------

queue = restate.VirtualObject("queue")


def select_and_pop_item(items: list[Ticket]) -> Ticket:
    """The ticket to admit next, removed from `items`: the lowest priority number, and among
    equal priorities the one pushed first. Custom selection logic goes here."""
    index = min(range(len(items)), key=lambda i: (items[i].priority, i))
    return items.pop(index)


async def tick(ctx: restate.ObjectContext, items: list[Ticket], admitted: list[str]) -> None:
    """Admit waiting tickets while there is room, then store the queue."""
    while len(admitted) < SETTINGS.max_in_flight and items:
        ticket = select_and_pop_item(items)
        admitted.append(ticket.awakeable)
        ctx.resolve_awakeable(ticket.awakeable, None)
        if SETTINGS.lease > timedelta(0):
            ctx.object_send(expire, ctx.key(), ticket.awakeable, send_delay=SETTINGS.lease)
        logger.info("Admitted %s (priority %s)", ticket.awakeable, js_number(ticket.priority))
    ctx.set(ITEMS, [ticket.model_dump(by_alias=True) for ticket in items])
    ctx.set(ADMITTED, admitted)
    ctx.set(IN_FLIGHT, len(admitted))
    logger.info("Tick end. Queue length: %d, In Flight: %d", len(items), len(admitted))


async def load(ctx: restate.ObjectContext) -> tuple[list[Ticket], list[str]]:
    items = await ctx.get(ITEMS, type_hint=list[dict[str, Any]]) or []
    admitted = await ctx.get(ADMITTED, type_hint=list[str]) or []
    return [Ticket.model_validate(item) for item in items], admitted


@queue.handler(input_serde=restate.serde.BytesSerde())
async def push(ctx: restate.ObjectContext, body: bytes) -> None:
    """A caller wants its turn: queue its ticket (internal, sent one-way by the caller)."""
    ticket = parse(Ticket, body)
    items, admitted = await load(ctx)
    if ticket.awakeable in admitted or any(t.awakeable == ticket.awakeable for t in items):
        logger.warning("Ticket %s is in the queue already: push ignored", ticket.awakeable)
    else:
        items.append(ticket)
        logger.info("Queued %s (priority %s)", ticket.awakeable, js_number(ticket.priority))
    await tick(ctx, items, admitted)


@queue.handler(input_serde=restate.serde.BytesSerde())
async def done(ctx: restate.ObjectContext, body: bytes) -> None:
    """An admitted caller has finished: its slot goes to the next ticket (internal). The body
    names the caller's ticket; without one (the original's call) the ticket admitted first
    gives its slot back."""
    awakeable = parse_done_body(body)
    items, admitted = await load(ctx)
    if awakeable is None:
        if admitted:
            freed = admitted.pop(0)
            logger.info("Done without a ticket id: the slot of %s (admitted first) is free", freed)
        else:
            logger.warning("Done without a ticket id while none is in flight: ignored")
    elif awakeable in admitted:
        admitted.remove(awakeable)
        logger.info("Done %s", awakeable)
    else:  # reported twice, or its lease ran out, or never admitted: the count stays right
        logger.warning("Done for %s, which is not in flight: ignored", awakeable)
    await tick(ctx, items, admitted)


@queue.handler(input_serde=restate.serde.BytesSerde())
async def drop(ctx: restate.ObjectContext, body: bytes) -> None:
    """A caller gave up (it was cancelled): forget its ticket, or free its slot (internal)."""
    awakeable = parse_ticket_id(body)
    items, admitted = await load(ctx)
    waiting = [t for t in items if t.awakeable != awakeable]
    if len(waiting) < len(items):
        items = waiting
        logger.info("Dropped %s from the queue", awakeable)
    elif awakeable in admitted:
        admitted.remove(awakeable)
        logger.info("Dropped %s, which was in flight", awakeable)
    else:
        logger.warning("Drop for %s, which is neither waiting nor in flight: ignored", awakeable)
    await tick(ctx, items, admitted)


@queue.handler(ingress_private=True)
async def expire(ctx: restate.ObjectContext, awakeable: str) -> None:
    """The lease of an admitted ticket ran out: if its caller still has not reported back
    (say its invocation was killed), take the slot back."""
    items, admitted = await load(ctx)
    if awakeable not in admitted:
        return  # reported back in time: nothing to do, nothing to store
    admitted.remove(awakeable)
    logger.warning("Lease of %s ran out before it reported back: slot taken back", awakeable)
    await tick(ctx, items, admitted)


# --- the protected operation ----------------------------------------------------------------

my_service = restate.Service("myService")


@my_service.handler(name="expensiveMethod", input_serde=restate.serde.BytesSerde())
async def expensive_method(ctx: restate.Context, body: bytes) -> float | int:
    """Wait for a slot in the queue, run the expensive operation, give the slot back."""
    request = parse(ExpensiveRequest, body)
    if not math.isfinite(request.left + request.right):
        raise restate.TerminalError("left + right: the sum is too large", status_code=400)

    awakeable, my_turn = ctx.awakeable(type_hint=type(None))
    ticket = Ticket(awakeable=awakeable, priority=request.priority)
    ctx.object_send(push, QUEUE_KEY, as_body(ticket))
    logger.info("Waiting in the queue as %s", awakeable)
    try:
        await my_turn
    except restate.TerminalError:  # cancelled while waiting: leave the queue
        ctx.object_send(drop, QUEUE_KEY, as_body(awakeable))
        raise

    try:
        result = await ctx.run_typed(
            "expensive operation", expensive_operation, left=request.left, right=request.right
        )
    except restate.TerminalError:  # failed for good, or cancelled: the slot is free again
        ctx.object_send(done, QUEUE_KEY, as_body(awakeable))
        raise
    ctx.object_send(done, QUEUE_KEY, as_body(awakeable))
    return result


async def expensive_operation(left: float, right: float) -> float | int:
    """Stands for heavy CPU work: takes EXPENSIVE_WORK_SECONDS, then returns the sum."""
    logger.info("Expensive operation started: %s + %s", js_number(left), js_number(right))
    await asyncio.sleep(SETTINGS.work_duration.total_seconds())
    result = js_number(left + right)
    logger.info("Expensive operation finished: %s", result)
    return result


services: list[restate.Service | restate.VirtualObject] = [queue, my_service]
app = restate.app(services)
