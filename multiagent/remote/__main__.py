"""`python -m <pattern>` serves app.py's services; the same file in every pattern folder.

Settings: HOST (127.0.0.1), PORT (9080), LOG_LEVEL (INFO), SERVER (hypercorn, or granian),
LOOP (asyncio; uvloop on granian), IDENTITY_KEYS. What each does and why: docs/serving.md
"""

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
from typing import Any

import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config
from restate import extensions, server

from .app import app, services

env, path = os.environ.get, contextvars.ContextVar("path", default="")
host, port, serving = env("HOST", "127.0.0.1"), int(env("PORT", "9080")), env("SERVER", "hypercorn")
keys = [key for key in env("IDENTITY_KEYS", "").replace(" ", "").split(",") if key]
if keys:  # the SDK checks each request's signature; a malformed key stops it here
    app = restate.app(services, identity_keys=keys)


async def asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":  # and no lifespan: the SDK's app has none
        path.set("/".join(scope["path"].split("/")[-2:]))  # <Service>/<handler> when invoked
        await app(scope, receive, send)


def tag(record: logging.LogRecord) -> bool:
    """Start the lines logged inside a handler with `[Service/handler][invocation id] `."""
    record.invocation = ""
    with contextlib.suppress(LookupError):  # not inside a handler
        ctx = extensions.current_context()
        record.invocation = f"[{path.get()}][{ctx.request().id}] " if ctx else ""
    return True


def stop() -> None:  # the invocations in flight get 3 s; Restate resumes the others later
    halt()
    asyncio.get_running_loop().call_later(3, os._exit, 0)


fmt = "%(asctime)s %(levelname)-5s %(invocation)s%(name)s - %(message)s"
logging.basicConfig(level=env("LOG_LEVEL", "INFO"), format=fmt, datefmt="%Y-%m-%d %H:%M:%S")
logging.root.handlers[0].addFilter(tag)
if serving == "hypercorn":  # Restate keeps one HTTP/2 connection open: never close it
    settings = Config.from_mapping(bind=f"{host}:{port}", keep_alive_timeout=86400.0)
    settings.keep_alive_max_requests = settings.h2_max_concurrent_streams = 2**31 - 1
    settings.errorlog, stopped = logging.getLogger("hypercorn.error"), asyncio.Event()
    run, halt = serve(asgi, settings, shutdown_trigger=stopped.wait), stopped.set
elif serving == "granian":  # embedded: this process is the service, on its event loop
    try:
        from granian.constants import Interfaces
        from granian.http import HTTP2Settings
        from granian.server.embed import Server
    except ImportError:
        raise SystemExit("SERVER=granian needs granian: pip install granian uvloop") from None
    h2, nl = HTTP2Settings(max_concurrent_streams=2**16), Interfaces.ASGINL  # ASGI, no lifespan
    log = {"loggers": {"_granian": {"propagate": True}}}  # one format for all lines
    # backpressure: at granian's default (128 requests) HTTP/1.1 calls stall while Restate
    # keeps more idle connections open (measured: a 100-subtask fan-out 30 s instead of 1)
    granian = Server(
        asgi, host, port, interface=nl, backpressure=2**16, http2_settings=h2, log_dictconfig=log
    )
    run, halt = granian.serve(), granian.stop
else:
    raise SystemExit(f"SERVER={serving}: hypercorn (the default) or granian")
loop = env("LOOP") or ("uvloop" if serving == "granian" else "asyncio")
with asyncio.Runner(loop_factory=__import__(loop).new_event_loop) as runner:
    for signum in signal.SIGINT, signal.SIGTERM:  # through the SDK, whose app owns SIGTERM
        server.install_shutdown_hook(runner.get_loop(), stop, signum)
    runner.run(run)
