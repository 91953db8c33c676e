"""Serve this pattern's services: `python -m <pattern>` listens on 127.0.0.1:9080.

This file is the same in every pattern folder, so that a folder still runs on its own
when you copy it into your project. Environment: PORT (default 9080), HOST (default
127.0.0.1), LOG_LEVEL (default INFO), IDENTITY_KEYS (optional: comma-separated public keys
`publickeyv1_...`; then only requests that a Restate server signed with the matching
private key are served: "Closed doors" in the collection's README). Stop it with
Ctrl-C or SIGTERM.
"""

import asyncio
import logging
import os
import signal

import hypercorn.asyncio
from hypercorn.config import Config
from restate._internal import (  # type: ignore[import-not-found]  # the SDK's verifier, no stub
    IdentityVerificationException,
    PyIdentityVerifier,
)
from restate.extensions import current_context
from restate.server import install_shutdown_hook
from restate.server_types import Receive, RestateAppT, Scope, Send

from .app import app


class InvocationTag(logging.Filter):
    """Prefixes lines logged inside a handler with `[Service/handler][invocation id]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            ctx = current_context()
        except LookupError:  # not inside a handler
            ctx = None
        handler = getattr(ctx, "handler", None)
        if ctx is None or handler is None:
            record.invocation = ""
        else:
            record.invocation = f"[{handler.service_tag.name}/{handler.name}][{ctx.request().id}] "
        return True


def require_identity(asgi_app: RestateAppT) -> RestateAppT:
    """With IDENTITY_KEYS set, answer 401 to any request (but the health check) that a
    Restate server holding the matching private key did not sign. The SDK's own check
    (`restate.app(..., identity_keys=[...])`), applied here so that app.py stays as is."""
    keys = [key.strip() for key in os.environ.get("IDENTITY_KEYS", "").split(",") if key.strip()]
    if not keys:
        return asgi_app
    verifier = PyIdentityVerifier(keys)  # refuses a malformed key at start
    logging.getLogger(__name__).info("Serving only requests signed by %d key(s)", len(keys))

    async def checked(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["type"] == "http" and path.rstrip("/").rsplit("/", 1)[-1] != "health":
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            try:
                verifier.verify(headers, path)
            except IdentityVerificationException:
                await send(
                    {"type": "http.response.start", "status": 401, "headers": [], "trailers": False}
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        await asgi_app(scope, receive, send)

    return checked


def hypercorn_config() -> Config:
    config = Config()
    config.bind = [f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '9080')}"]
    # Restate keeps one HTTP/2 connection open for many invocations; hypercorn's defaults
    # would close it after 1000 requests or 5 s idle, breaking invocations in flight.
    config.keep_alive_max_requests = 2**31 - 1
    config.keep_alive_timeout = 24 * 3600
    config.h2_max_concurrent_streams = 2**16
    config.errorlog = logging.getLogger("hypercorn.error")  # one format for all lines
    return config


async def serve() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # The SDK owns the SIGTERM handler (it drains invocations); add ourselves to it.
    install_shutdown_hook(loop, stop.set, signal.SIGTERM)
    served = require_identity(app)
    await hypercorn.asyncio.serve(served, hypercorn_config(), shutdown_trigger=stop.wait)


def main() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(InvocationTag())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)-5s %(invocation)s%(name)s - %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), handlers=[handler])
    # The SDK's app has no ASGI lifespan events; hypercorn would warn about it at each start.
    logging.getLogger("hypercorn.error").addFilter(lambda r: "Lifespan" not in r.getMessage())
    asyncio.run(serve())


if __name__ == "__main__":
    main()
