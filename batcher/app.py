"""Batching: group items into batches, sending undersized ones after a linger period.

    curl .../Batcher/myKey/receive -d 1 ... -d 10
                 |
                 v
    Batcher/myKey  state: items = [1, 2, ...]
      - first item of a batch: schedule expire() in 1 s  (a delayed call to itself)
      - 10th item:             send the batch now, cancel that expire()
      - expire() fires first:  send the undersized batch
                 |
                 v
    BatchReceiver/myKey  receive([1, ..., 10])  -> logs the batch

A Virtual Object processes the calls for one key one at a time, so the read-append-write
of the batch in its state needs no locks, and batches of different keys never mix. The
batch is sent with a one-way message (`object_send`): Restate delivers it exactly once,
even if this service crashes right after, and the receiver gets the batches of one key in
the order they were sent.
"""

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import restate

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    max_batch_size: int = field(default_factory=lambda: int(os.environ.get("BATCH_MAX_SIZE", "10")))
    linger: timedelta = field(
        default_factory=lambda: timedelta(
            seconds=float(os.environ.get("BATCH_LINGER_SECONDS", "1"))
        )
    )


SETTINGS = Settings()

ITEMS = "items"  # state: the items of the batch being built
EXPIRY = "expiry"  # state: the invocation id of the pending expire() call

batcher = restate.VirtualObject("Batcher")
batch_receiver = restate.VirtualObject("BatchReceiver")


@batcher.handler(input_serde=restate.serde.BytesSerde())
async def receive(ctx: restate.ObjectContext, body: bytes) -> None:
    """Add one item (any JSON value) to this key's batch."""
    item = parse_item(body)
    items: list[Any] = await ctx.get(ITEMS, type_hint=list[Any]) or []
    items.append(item)
    if len(items) >= SETTINGS.max_batch_size:
        await send_batch(ctx, items)
        return
    if len(items) == 1:
        # the first item of a batch: send the batch at the latest after the linger period
        handle = ctx.object_send(expire, ctx.key(), None, send_delay=SETTINGS.linger)
        ctx.set(EXPIRY, await handle.invocation_id())
    ctx.set(ITEMS, items)


@batcher.handler(ingress_private=True)
async def expire(ctx: restate.ObjectContext) -> None:
    """The linger period of a batch is over: send it, however small."""
    # A batch that was sent full cancels its expire() call; should that call have started
    # already, it is not the current batch's expiry, and it does nothing.
    if await ctx.get(EXPIRY, type_hint=str) != ctx.request().id:
        return
    items = await ctx.get(ITEMS, type_hint=list[Any]) or []
    logger.info("Linger period over: sending a batch of %d items", len(items))
    await send_batch(ctx, items)


async def send_batch(ctx: restate.ObjectContext, items: list[Any]) -> None:
    logger.info("Sending a batch of %d items", len(items))
    ctx.object_send(receive_batch, ctx.key(), json.dumps(items).encode())
    expiry = await ctx.get(EXPIRY, type_hint=str)
    if expiry is not None and expiry != ctx.request().id:
        ctx.cancel_invocation(expiry)
    ctx.clear(ITEMS)
    ctx.clear(EXPIRY)


@batch_receiver.handler(
    name="receive", ingress_private=True, input_serde=restate.serde.BytesSerde()
)
async def receive_batch(ctx: restate.ObjectContext, body: bytes) -> None:
    """The batches' real destination: here it only logs each batch, once."""
    items = parse_batch(body)
    await ctx.run_typed("deliver batch", deliver, restate.RunOptions(), ctx.key(), items)


def deliver(key: str, items: list[Any]) -> None:
    logger.info("Received batch of %d items for %s: %s", len(items), key, json.dumps(items))


def parse_item(body: bytes) -> Any:
    """The item: any JSON value; a body that is not JSON is a 400."""
    try:
        return json.loads(body)
    # RecursionError: JSON nested deeper than Python's recursion limit (about 1,000 levels)
    except (ValueError, RecursionError):
        raise restate.TerminalError(
            'item: expected a JSON value, e.g. 123 or {"id": 1}', status_code=400
        ) from None


def parse_batch(body: bytes) -> list[Any]:
    """A batch: a JSON array of items; anything else is a 400."""
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        items = None
    if not isinstance(items, list):
        raise restate.TerminalError("items: expected a JSON array, e.g. [1, 2]", status_code=400)
    return items


services = [batcher, batch_receiver]
app = restate.app(services)
