"""The mistake webapp/README.md warns of: the web app served by a plain `uvicorn.run(web)`,
with uvicorn's own signal handlers. `uvicorn.Server(uvicorn.Config(web, ...)).run()` is
what `uvicorn.run` does without reload or workers; the server is kept in a name here so that
one route added for the test can tell who handles SIGTERM now and whether uvicorn was told
to exit (`GET /test/sigterm`). Served on HOST and PORT."""

import os
import signal

import uvicorn

from webapp.fastapi_app import web

server = uvicorn.Server(
    uvicorn.Config(web, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ["PORT"]))
)


@web.get("/test/sigterm")
async def sigterm() -> dict[str, object]:
    """On the event loop: any signal already delivered has had its Python handler run."""
    handler = signal.getsignal(signal.SIGTERM)
    return {"handler": getattr(handler, "__qualname__", repr(handler)),
            "shouldExit": server.should_exit}  # fmt: skip


if __name__ == "__main__":
    server.run()
