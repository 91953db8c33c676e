"""Durable RPC, idempotency and concurrency.

Restate stands between the client and `ProductService`:

    client --reserve(idempotency-key: reservationId)--> Restate --> ProductService/<productId>
                                                          |
                    remembers the answer per idempotency key and runs
                    the calls for one product one at a time

- Durable RPC: once Restate has accepted a request it is processed, even if this service
  is down at that moment (Restate retries until the service answers).
- Exactly once: a request repeated with the same idempotency key gets the first answer;
  the handler does not run again.
- Concurrency: a Virtual Object handles one request per key at a time, so the
  read-then-write of the `reserved` flag below needs no locks.
"""

import restate

logger = restate.getLogger(__name__)

product_service = restate.VirtualObject("ProductService")


@product_service.handler()
async def reserve(ctx: restate.ObjectContext) -> bool:
    """Reserve the product (the object key); `true` if this call reserved it."""
    if await ctx.get("reserved", type_hint=bool):
        logger.info("Product %s was already reserved", ctx.key())
        return False
    ctx.set("reserved", True)
    logger.info("Product %s reserved", ctx.key())
    return True


services = [product_service]
app = restate.app(services)
