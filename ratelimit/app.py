"""Rate limiting: a token bucket per Virtual Object key, waited for with durable sleeps.

`myService/expensiveMethod` may run only as fast as the bucket
`limiter/myService-expensiveMethod` allows (set with `setRate`: `newLimit` tokens per
second, at most `newBurst` at once):

    caller --> myService/expensiveMethod
                 |  1. reserve 1 token ------------> limiter/myService-expensiveMethod
                 |  <-- {ok, dateToAct} ------------   (answers at once; one call at a
                 |                                      time per key, no locks needed)
                 |  2. durable sleep until dateToAct
                 |     (cancelled? --cancelReservation--> tokens go back to the bucket)
                 |  3. the expensive work ("expensive!")
    caller <-- 200

The bucket never blocks: the object only does arithmetic and answers; the waiting happens
in the callers, in parallel, as durable timers that survive crashes of this service and
of Restate. A reservation that cannot be granted (more tokens than the burst; before any
`setRate` the burst is 0) fails the caller at once with a 429.

Files: limiter.py (the object and its arithmetic), client.py (the library used here).
"""

import json
import os
from dataclasses import dataclass, field

import restate

from .client import Limiter
from .limiter import MAX_SAFE_INTEGER, limiter

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # the bucket (limiter key) that myService's handlers take their tokens from
    limiter_key: str = field(
        default_factory=lambda: os.environ.get("LIMITER_KEY", "myService-expensiveMethod")
    )
    # how many tokens expensiveMethodBatch takes when called without a body
    default_batch_size: int = field(
        default_factory=lambda: int(os.environ.get("BATCH_SIZE_DEFAULT", "20"))
    )


SETTINGS = Settings()

my_service = restate.Service("myService")


@my_service.handler(name="expensiveMethod")
async def expensive_method(ctx: restate.Context) -> None:
    """Wait for one token, then do the expensive work."""
    await Limiter(ctx, SETTINGS.limiter_key).wait()
    await ctx.run_typed("expensive work", expensive_work, restate.RunOptions(), 1)


@my_service.handler(name="expensiveMethodBatch", input_serde=restate.serde.BytesSerde())
async def expensive_method_batch(ctx: restate.Context, body: bytes) -> None:
    """Wait for `batchSize` tokens (a JSON number; default 20), then do that much work.
    A batch larger than the burst is refused with a 429 (the README's burst is 1)."""
    batch_size = parse_batch_size(body)
    await Limiter(ctx, SETTINGS.limiter_key).wait(batch_size)
    await ctx.run_typed("expensive work", expensive_work, restate.RunOptions(), batch_size)


def expensive_work(times: int) -> None:
    for _ in range(times):
        logger.info("expensive!")


def parse_batch_size(body: bytes) -> int:
    """The batch size: a JSON integer >= 0; no body (or `null`) means the default."""
    try:
        value = json.loads(body) if body else None
    except (ValueError, RecursionError):
        value = ...
    if value is None:
        return SETTINGS.default_batch_size
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INTEGER:
        raise restate.TerminalError(
            f"batchSize: expected an integer from 0 to {MAX_SAFE_INTEGER}, e.g. 5",
            status_code=400,
        )
    return value


services: list[restate.Service | restate.VirtualObject] = [limiter, my_service]
app = restate.app(services)
