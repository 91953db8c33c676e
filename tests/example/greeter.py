"""A user's own service, as the README's "Test your own service" shows it: one Virtual
Object that counts the greetings per name, served on PORT by hypercorn."""

import asyncio
import os

import hypercorn.asyncio
import restate
from hypercorn.config import Config

greeter = restate.VirtualObject("Greeter")


@greeter.handler()
async def greet(ctx: restate.ObjectContext, greeting: str) -> str:
    count = (await ctx.get("count", type_hint=int) or 0) + 1
    ctx.set("count", count)
    return f"{greeting} {ctx.key()}, greeting number {count}"


app = restate.app([greeter])

if __name__ == "__main__":
    config = Config()
    config.bind = [f"127.0.0.1:{os.environ.get('PORT', '9080')}"]
    asyncio.run(hypercorn.asyncio.serve(app, config))
