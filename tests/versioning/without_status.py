"""A stand-in for a v2 of `versioning` that only drops the `status` handler (same service
type, same `renew`), served on PORT: the README says restate-server 1.7.12 registers such a
revision without refusing it, and the walkthrough test proves it."""

import asyncio
import os

import hypercorn.asyncio
import restate
from hypercorn.config import Config

from versioning.app import renew

subscription = restate.VirtualObject("Subscription")
subscription.handler(name="renew", input_serde=restate.serde.BytesSerde())(renew)
app = restate.app([subscription])

if __name__ == "__main__":
    config = Config()
    config.bind = [f"127.0.0.1:{os.environ.get('PORT', '9080')}"]
    asyncio.run(hypercorn.asyncio.serve(app, config))
