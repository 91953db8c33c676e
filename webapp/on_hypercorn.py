"""`python -m webapp.on_hypercorn`: the web app, Restate's endpoint included, on hypercorn.

hypercorn speaks HTTP/2 (cleartext, prior knowledge) to Restate and HTTP/1.1 to browsers
and curl on the same port; Restate registers it as bidirectional streaming:
`restate -y deployments register --force http://localhost:9080/restate`.
Settings: HOST (127.0.0.1), PORT (9080), and those of fastapi_app.py.
"""

import asyncio
import logging
import os
import signal
from typing import cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework
from restate import server

from .fastapi_app import log_to_stderr, web

host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "9080"))
log_to_stderr()
# Restate keeps one HTTP/2 connection open for many invocations: hypercorn's defaults would
# close it after 1,000 requests or 5 s idle, and allow only 100 streams at once
config = Config.from_mapping(bind=f"{host}:{port}", keep_alive_timeout=86400.0)
config.keep_alive_max_requests = config.h2_max_concurrent_streams = 2**31 - 1
config.errorlog, stopped = logging.getLogger("hypercorn.error"), asyncio.Event()


def stop() -> None:  # the invocations in flight get 3 s; Restate resumes the others later
    stopped.set()
    asyncio.get_running_loop().call_later(3, os._exit, 0)


with asyncio.Runner() as runner:
    for signum in signal.SIGINT, signal.SIGTERM:  # through the SDK, whose app owns SIGTERM
        server.install_shutdown_hook(runner.get_loop(), stop, signum)
    # cast: Starlette and hypercorn spell the same ASGI interface with types of their own
    runner.run(serve(cast(ASGIFramework, web), config, shutdown_trigger=stopped.wait))
