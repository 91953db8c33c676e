"""A client library for the `limiter` object, used inside a Restate handler.

    limiter = Limiter(ctx, "myService-expensiveMethod")
    await limiter.wait()          # take 1 token; sleep (durably) until the rate allows it
    if await limiter.allow(3):    # take 3 tokens only if they are there right now
        ...

`wait` asks the object for a reservation (a request-response call, answered at once) and
then sleeps in *this* invocation, not in the object: the object stays free to serve other
callers, and the sleep is a durable timer that survives crashes and restarts. If this
invocation is cancelled while it sleeps, the reservation's tokens go back to the bucket
(a one-way `cancelReservation`), then the cancellation goes on up as usual.
"""

import math
from datetime import timedelta

import restate

from .limiter import (
    RateState,
    Reservation,
    ReserveRequest,
    SetRateRequest,
    cancel_reservation,
    reserve,
    set_rate,
    state,
)


def refusal(n: int, wait_limit_millis: float | None) -> str:
    """The message of the 429 that `wait` fails with when the reservation is refused."""
    if wait_limit_millis is None:
        return f"rate: Wait(n={n}) would exceed the limiters burst"
    return (
        f"rate: Wait(n={n}) would either exceed the limiters burst or the provided waitLimitMillis"
    )


class Limiter:
    """The token bucket `limiter/<key>`, seen from a handler's context."""

    def __init__(self, ctx: restate.Context, key: str) -> None:
        self.ctx = ctx
        self.key = key

    async def state(self) -> RateState:
        return await self.ctx.object_call(state, self.key, None)

    async def limit(self) -> float:
        """Tokens per second."""
        return (await self.state()).limit

    async def burst(self) -> int:
        """The bucket's capacity, and the largest number of tokens one call may take."""
        return (await self.state()).burst

    async def set_limit(self, new_limit: float) -> None:
        await self.set_rate(SetRateRequest(new_limit=new_limit))

    async def set_burst(self, new_burst: int) -> None:
        await self.set_rate(SetRateRequest(new_burst=new_burst))

    async def set_rate(self, request: SetRateRequest) -> None:
        await self.ctx.object_call(set_rate, self.key, body(request))

    async def reserve(self, n: int = 1, wait_limit_millis: float | None = None) -> Reservation:
        """Take `n` tokens now; the answer says when the caller may act (or `ok: false`)."""
        request = ReserveRequest(n=n, wait_limit_millis=wait_limit_millis)
        return await self.ctx.object_call(reserve, self.key, body(request))

    async def allow(self, n: int = 1) -> bool:
        """Take `n` tokens if they are available now, without waiting."""
        return (await self.reserve(n, wait_limit_millis=0)).ok

    async def wait(self, n: int = 1, wait_limit_millis: float | None = None) -> None:
        """Take `n` tokens and sleep until the rate allows acting on them. Fails with a
        terminal 429 if they cannot be had (more than the burst, or not within the limit)."""
        reservation = await self.reserve(n, wait_limit_millis)
        if not reservation.ok:
            raise restate.TerminalError(refusal(n, wait_limit_millis), status_code=429)
        delay = max(0, math.floor(reservation.date_to_act - reservation.creation_date))
        if delay == 0:
            return
        try:
            await self.ctx.sleep(timedelta(milliseconds=delay), name="wait for rate limit")
        except restate.TerminalError:  # this invocation was cancelled: it will not act
            self.ctx.object_send(cancel_reservation, self.key, body(reservation))
            raise


def body(model: ReserveRequest | SetRateRequest | Reservation) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()
