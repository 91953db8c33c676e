"""Serve a pattern with another event loop or several hypercorn workers (`./dev bench`).

`python -m devkit.bench_serve <module> <asyncio|uvloop> <workers>`. With one worker it
runs the pattern's own `__main__.py` unchanged, with LOOP set to the chosen event loop (the
serving file reads SERVER and LOOP itself: `SERVER=granian LOOP=uvloop python -m <module>`
needs no help from here). With more, hypercorn's worker processes serve the pattern's app
with the hypercorn settings and the log format of that same file (repeated below: the
serving file runs when imported).
"""

import contextlib
import importlib
import logging
import os
import runpy
import sys
from typing import Any

import hypercorn.run
from hypercorn.config import Config
from restate.extensions import current_context

from devkit.processes import _die_with_parent


def _tag(record: logging.LogRecord) -> bool:
    """As the serving file's: `[Service/handler][invocation id] ` in front of handler lines."""
    with contextlib.suppress(LookupError):
        ctx: Any = current_context()
        h = ctx.handler
        record.invocation = f"[{h.service_tag.name}/{h.name}][{ctx.request().id}] "
    return True


def _log_like_the_serving_file() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_tag)
    fmt = "%(asctime)s %(levelname)-5s %(invocation)s%(name)s - %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S", defaults={"invocation": ""}))
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), handlers=[handler])


def worker_app() -> Any:
    """The app of BENCH_MODULE, for hypercorn's workers (`devkit.bench_serve:worker_app()`)."""
    _die_with_parent()
    _log_like_the_serving_file()
    return importlib.import_module(f"{os.environ['BENCH_MODULE']}.app").app


def main(module: str, loop: str, workers: int) -> None:
    if workers <= 1:
        os.environ["LOOP"] = loop
        sys.argv = [module]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "9080")
    config = Config.from_mapping(bind=f"{host}:{port}", h2_max_concurrent_streams=2**16)
    config.keep_alive_max_requests, config.keep_alive_timeout = 2**31 - 1, 86400.0
    config.workers = workers
    config.worker_class = loop
    config.application_path = "devkit.bench_serve:worker_app()"
    config.errorlog = None  # a Logger does not travel to the spawned workers
    os.environ["BENCH_MODULE"] = module
    sys.exit(hypercorn.run.run(config))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
