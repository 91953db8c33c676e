"""`python -m <pattern>` serves app.py's services; the same file in every pattern folder.

HOST (127.0.0.1), PORT (9080), LOG_LEVEL (INFO), SERVER (hypercorn, or granian), LOOP (asyncio;
uvloop on granian if installed), IDENTITY_KEYS (serve only requests Restate signed): docs/serving.md
"""

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal

import restate
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from restate.extensions import current_context
from restate.server import install_shutdown_hook

from .app import app, services

env = os.environ.get
keys = [key.strip() for key in env("IDENTITY_KEYS", "").split(",") if key.strip()]
host, port = env("HOST", "127.0.0.1"), int(env("PORT", "9080"))
server = env("SERVER", "hypercorn")


def tag(record: logging.LogRecord) -> bool:
    """Prefix lines logged inside a handler with `[Service/handler][invocation id] `."""
    with contextlib.suppress(LookupError):
        ctx = current_context()
        assert ctx is not None
        h = ctx.handler  # type: ignore[attr-defined]
        record.invocation = f"[{h.service_tag.name}/{h.name}][{ctx.request().id}] "
    return True


async def serve(asgi: object) -> None:
    stop, loop = asyncio.Event(), asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    install_shutdown_hook(loop, stop.set, signal.SIGTERM)  # the SDK owns SIGTERM: join it
    if server == "hypercorn":
        config = Config.from_mapping(bind=f"{host}:{port}", h2_max_concurrent_streams=2**16)
        # Restate keeps one HTTP/2 connection open for its invocations: never close it
        config.keep_alive_max_requests, config.keep_alive_timeout = 2**31 - 1, 86400.0
        config.errorlog = logging.getLogger("hypercorn.error")  # one format for all lines
        task = asyncio.ensure_future(hypercorn_serve(asgi, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    else:
        from granian.constants import Interfaces
        from granian.http import HTTP2Settings
        from granian.server.embed import Server

        h2 = HTTP2Settings(max_concurrent_streams=2**16)
        logs = {"loggers": {"_granian": {"propagate": True}}}  # one format for all lines
        embedded = Server(
            asgi, host, port, interface=Interfaces.ASGINL, http2_settings=h2, log_dictconfig=logs
        )
        task = asyncio.ensure_future(embedded.serve())
        asyncio.ensure_future(stop.wait()).add_done_callback(lambda _: embedded.stop())  # type: ignore[no-untyped-call]
    task.add_done_callback(lambda _: stop.set())  # a server that fails to start ends it too
    await stop.wait()
    # Either server waits for the invocations in flight, which go on as long as Restate keeps
    # their connection open: give them 3 s, then end (Restate resumes them when we are back).
    if (await asyncio.wait([task], timeout=3))[0]:
        task.result()  # raises what the server raised
    os._exit(0)


if server not in ("hypercorn", "granian"):
    raise SystemExit(f"SERVER={server}: hypercorn (the default) or granian")
if server == "granian" and not importlib.util.find_spec("granian"):
    raise SystemExit("SERVER=granian needs granian: pip install granian uvloop")
handler = logging.StreamHandler()
handler.addFilter(tag)
fmt = "%(asctime)s %(levelname)-5s %(invocation)s%(name)s - %(message)s"
handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S", defaults={"invocation": ""}))
logging.basicConfig(level=env("LOG_LEVEL", "INFO"), handlers=[handler])
logging.getLogger("hypercorn.error").addFilter(lambda r: "Lifespan" not in r.getMessage())
asgi = restate.app(services, identity_keys=keys) if keys else app  # a bad key fails here
if keys:
    logging.getLogger(__name__).info("Serving only requests signed by %d key(s)", len(keys))
on_uvloop = server == "granian" and importlib.util.find_spec("uvloop")  # it helps granian most
loop = env("LOOP") or ("uvloop" if on_uvloop else "asyncio")
with asyncio.Runner(loop_factory=importlib.import_module(loop).new_event_loop) as runner:
    runner.run(serve(asgi))
