"""The simplest possible handler, the yardstick of `./dev bench`.

It is served by the same `__main__.py` as every pattern (a byte-for-byte copy), so that the
difference between a pattern's numbers and these is what the pattern itself costs.
"""

import restate

noop = restate.Service("Noop")


@noop.handler(name="call")
async def call(ctx: restate.Context) -> None:
    """Do nothing: one invocation, no state, no steps."""


services = [noop]
app = restate.app(services)
