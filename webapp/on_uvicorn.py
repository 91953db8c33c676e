"""`python -m webapp.on_uvicorn`: the same web app on uvicorn, which speaks HTTP/1.1 only.

Restate must then call it with one HTTP/1.1 request per invocation step: register it with
`restate -y deployments register --force --use-http1.1 http://localhost:9080/restate`.
Settings: HOST (127.0.0.1), PORT (9080), and those of fastapi_app.py.
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import uvicorn
from restate import server

from .fastapi_app import log_to_stderr, web

host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "9080"))
log_to_stderr()


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave SIGINT and SIGTERM to the hooks below: the SDK's app installs its own
        SIGTERM handler at its first request (a health check is one), after which uvicorn's
        would never run, and SIGTERM would not stop the server."""
        yield


# log_config=None: its lines go through our format; no access log (a line per request)
uv = Server(uvicorn.Config(web, host=host, port=port, log_config=None, access_log=False))


def stop() -> None:  # the invocations in flight get 3 s; Restate resumes the others later
    uv.should_exit = True
    asyncio.get_running_loop().call_later(3, os._exit, 0)


with asyncio.Runner() as runner:
    for signum in signal.SIGINT, signal.SIGTERM:  # through the SDK, whose app owns SIGTERM
        server.install_shutdown_hook(runner.get_loop(), stop, signum)
    runner.run(uv.serve())
