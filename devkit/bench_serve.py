"""Serve a pattern with another event loop or several hypercorn workers (`./dev bench`).

`BENCH_LOOP=uvloop BENCH_WORKERS=2 python -m devkit.bench_serve <module>` (defaults:
asyncio, 1). With one worker it runs the pattern's own `__main__.py` unchanged, with the
chosen event loop as the default loop policy; with more, hypercorn's worker processes
serve the pattern's `app` (from app.py) with the hypercorn settings the serving file uses
(Restate's connection kept open). The benchmark compares these with the plain
`python -m <pattern>` (the ways of serving in devkit/bench/scenarios.py).
"""

import asyncio
import importlib
import logging
import os
import runpy
import sys
from typing import Any

import hypercorn.run
from hypercorn.config import Config

from devkit.processes import die_with_parent


def worker_app() -> Any:
    """The app of BENCH_MODULE, for hypercorn's workers (`devkit.bench_serve:worker_app()`)."""
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)-5s %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    return importlib.import_module(f"{os.environ['BENCH_MODULE']}.app").app


def main(module: str, loop: str, workers: int) -> None:
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if workers <= 1:
        sys.argv = [module]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    config = Config()
    config.bind = [f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '9080')}"]
    # as in the serving file: Restate keeps one HTTP/2 connection open, never close it
    config.keep_alive_max_requests = 2**31 - 1
    config.keep_alive_timeout = 24 * 3600
    config.h2_max_concurrent_streams = 2**16
    config.workers = workers
    config.worker_class = loop
    config.application_path = "devkit.bench_serve:worker_app()"
    os.environ["BENCH_MODULE"] = module
    sys.exit(hypercorn.run.run(config))


if __name__ == "__main__":
    main(
        sys.argv[1],
        os.environ.get("BENCH_LOOP", "asyncio"),
        int(os.environ.get("BENCH_WORKERS", "1")),
    )
