"""The Virtual Object `limiter`: one token bucket per key (modelled on Go's x/time/rate).

The bucket holds up to `burst` tokens and refills at `limit` tokens per second. Refill is
computed on demand from the time of the last update, never by a timer. A reservation takes
`n` tokens now, even if that drives the balance below zero: the negative balance is the
tokens promised to callers that are still waiting, and the reservation says when its
caller may act (`dateToAct`). The object never waits itself; it answers at once and the
caller sleeps (see client.py).

Every clock read and the arithmetic that depends on it happen inside one journaled step
(`ctx.run_typed`), so a retry or replay sees the same time and makes the same decision.

Numbers on the wire are always finite: "no wait limit" is an absent or `null`
`waitLimitMillis`, and a reservation whose wait would be infinite (a rate of 0 with an
empty bucket) or beyond the latest date JavaScript can represent is refused. There is no
infinite rate: set a high one.
"""

import math
import time
from typing import Annotated, TypeVar

import pydantic
import restate
from pydantic.alias_generators import to_camel

MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer every JSON reader (JavaScript) keeps exact
LATEST_DATE_MS = 8_640_000_000_000_000  # the latest date JavaScript can represent (year 275760)

limiter = restate.VirtualObject("limiter")

STATE = "state"  # one state entry per key: the bucket (RateState)


class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
        strict=True,  # no "1" for 1, no true for 1, no 2.0 for an integer
        allow_inf_nan=False,  # JSON has no Infinity or NaN: never read or write them
    )


Count = Annotated[int, pydantic.Field(ge=0, le=MAX_SAFE_INTEGER)]
Rate = Annotated[float, pydantic.Field(ge=0)]
Millis = Annotated[int, pydantic.Field(ge=0, le=LATEST_DATE_MS)]


class RateState(Model):
    """The bucket. All zeros (no key yet) means no events are allowed."""

    limit: float = 0.0  # tokens per second
    burst: int = 0  # capacity, and the largest single reservation
    tokens: float = 0.0  # balance at `last`; negative = promised to waiting callers
    last: int = 0  # epoch ms of the last balance update
    last_event: int = 0  # epoch ms of the latest reserved action (may be in the future)


class Reservation(Model):
    ok: bool
    tokens: Count  # tokens taken (0 if refused)
    creation_date: Millis  # epoch ms when the reservation was made
    date_to_act: Millis  # epoch ms when the caller may act (0 if refused)
    limit: Rate  # the rate at reservation time


class ReserveRequest(Model):
    n: Count = 1
    wait_limit_millis: Rate | None = None  # absent or null: no wait limit


class SetRateRequest(Model):
    new_limit: Rate | None = None  # absent or null: keep the limit
    new_burst: Count | None = None  # absent or null: keep the burst


class ReserveOutcome(Model):
    """What the `reserve` step decided: journaled as one value."""

    reservation: Reservation
    state: RateState | None  # the new bucket, or None if nothing changed


M = TypeVar("M", bound=pydantic.BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a request body; a 400 naming each bad field (by its JSON name) if invalid."""
    try:
        return model.model_validate_json(body or b"null")
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(problems, status_code=400) from None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the bucket's arithmetic (pure functions of the state and a time) ----------------------


def tokens_from_duration(millis: float, limit: float) -> float:
    return millis / 1000 * limit if limit > 0 else 0.0


def duration_from_tokens(tokens: float, limit: float) -> float:
    """Milliseconds it takes to accrue `tokens` at `limit` (infinite at a rate of 0)."""
    return tokens / limit * 1000 if limit > 0 else math.inf


def advance(state: RateState, now: int) -> float:
    """The balance at `now`: refilled since `last`, capped at `burst`."""
    elapsed = max(0, now - state.last)  # the clock may have gone back: no refill then
    return min(float(state.burst), state.tokens + tokens_from_duration(elapsed, state.limit))


def reserve_at(state: RateState, now: int, n: int, wait_limit: float | None) -> ReserveOutcome:
    balance = advance(state, now) - n
    wait = 0.0 if balance >= 0 else duration_from_tokens(-balance, state.limit)
    # whole milliseconds, rounded up (acting a fraction of a ms late keeps the rate)
    date_to_act = now + math.ceil(wait - 1e-6) if wait <= LATEST_DATE_MS - now else None
    ok = (
        n <= state.burst
        and date_to_act is not None  # never grant a wait that is infinite
        and (wait_limit is None or wait <= wait_limit)
    )
    if not ok or date_to_act is None:
        refused = Reservation(
            ok=False, tokens=0, creation_date=now, date_to_act=0, limit=state.limit
        )
        return ReserveOutcome(reservation=refused, state=None)
    granted = Reservation(
        ok=True, tokens=n, creation_date=now, date_to_act=date_to_act, limit=state.limit
    )
    updated = state.model_copy(update={"last": now, "tokens": balance, "last_event": date_to_act})
    return ReserveOutcome(reservation=granted, state=updated)


def set_rate_at(state: RateState, now: int, request: SetRateRequest) -> RateState:
    """Refill up to `now` at the old rate, then change the rate and/or the burst."""
    update: dict[str, float | int] = {"tokens": advance(state, now), "last": now}
    if request.new_limit is not None:
        update["limit"] = request.new_limit
    if request.new_burst is not None:
        update["burst"] = request.new_burst
    return state.model_copy(update=update)


def cancel_at(state: RateState, now: int, r: Reservation) -> RateState | None:
    """Give back the tokens of a reservation whose caller will not act; None: no change.

    Tokens that accrue between the reservation's `dateToAct` and the latest reserved action
    were promised to later reservations: those stay spent."""
    if r.tokens == 0 or r.date_to_act < now:
        return None  # refused, or its time to act has passed (it may have acted)
    promised_later = tokens_from_duration(state.last_event - r.date_to_act, r.limit)
    restore = r.tokens - promised_later
    if restore <= 0:
        return None
    tokens = min(float(state.burst), advance(state, now) + restore)
    last_event = state.last_event
    if r.date_to_act == state.last_event:  # it was the latest: move the latest back
        previous = r.date_to_act - duration_from_tokens(r.tokens, r.limit)
        if math.isfinite(previous) and previous >= now:
            last_event = math.floor(previous)
    return state.model_copy(update={"tokens": tokens, "last": now, "last_event": last_event})


# --- the handlers ----------------------------------------------------------------------------


async def get_state(ctx: restate.ObjectSharedContext | restate.ObjectContext) -> RateState:
    return await ctx.get(STATE, type_hint=RateState) or RateState()


@limiter.handler(name="state", kind="shared")
async def state(ctx: restate.ObjectSharedContext) -> RateState:
    """The bucket as stored (all zeros if never set); read-only, so it never queues."""
    return await get_state(ctx)


@limiter.handler(name="tokens", kind="shared")
async def tokens(ctx: restate.ObjectSharedContext) -> float:
    """The number of tokens available now (negative while callers wait); changes nothing."""
    bucket = await get_state(ctx)
    return await ctx.run_typed("count tokens", count_now, restate.RunOptions(), bucket)


def count_now(bucket: RateState) -> float:
    return advance(bucket, now_ms())


@limiter.handler(name="reserve", input_serde=restate.serde.BytesSerde())
async def reserve(ctx: restate.ObjectContext, body: bytes) -> Reservation:
    """Take `n` tokens (default 1); the answer says when the caller may act. Refused
    (`ok: false`) if `n` exceeds the burst, or the wait would exceed `waitLimitMillis`."""
    request = parse(ReserveRequest, body)
    bucket = await get_state(ctx)
    # the clock read and the decision in one step: a replay sees the same time
    outcome = await ctx.run_typed("reserve", reserve_now, restate.RunOptions(), bucket, request)
    if outcome.state is not None:
        ctx.set(STATE, outcome.state)
    return outcome.reservation


def reserve_now(bucket: RateState, request: ReserveRequest) -> ReserveOutcome:
    return reserve_at(bucket, now_ms(), request.n, request.wait_limit_millis)


@limiter.handler(name="setRate", input_serde=restate.serde.BytesSerde())
async def set_rate(ctx: restate.ObjectContext, body: bytes) -> None:
    """Change the limit (tokens per second) and/or the burst; existing reservations keep
    their times."""
    request = parse(SetRateRequest, body)
    if request.new_limit is None and request.new_burst is None:
        return
    bucket = await get_state(ctx)
    updated = await ctx.run_typed("set rate", set_rate_now, restate.RunOptions(), bucket, request)
    ctx.set(STATE, updated)


def set_rate_now(bucket: RateState, request: SetRateRequest) -> RateState:
    return set_rate_at(bucket, now_ms(), request)


@limiter.handler(name="cancelReservation", input_serde=restate.serde.BytesSerde())
async def cancel_reservation(ctx: restate.ObjectContext, body: bytes) -> None:
    """Return a reservation's tokens: its caller will not act (it was cancelled)."""
    reservation = parse(Reservation, body)
    bucket = await get_state(ctx)
    updated = await ctx.run_typed(
        "return tokens", cancel_now, restate.RunOptions(), bucket, reservation
    )
    if updated.state is not None:
        ctx.set(STATE, updated.state)


class CancelOutcome(Model):
    """What the `return tokens` step decided: the new bucket, or None if nothing changed."""

    state: RateState | None


def cancel_now(bucket: RateState, reservation: Reservation) -> CancelOutcome:
    return CancelOutcome(state=cancel_at(bucket, now_ms(), reservation))
