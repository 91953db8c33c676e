"""Serve a pattern with several hypercorn workers (`./dev bench`), the one way of serving
that the serving file cannot give (it keeps one process, one PID).

`BENCH_WORKERS=2 BENCH_LOOP=asyncio|uvloop python -m devkit.bench_serve <module>` (defaults:
2, asyncio): hypercorn's worker processes serve the pattern's `app` (from app.py) with the
hypercorn settings the serving file uses (Restate's connection kept open). The benchmark
compares it with the plain `python -m <pattern>` (the ways of serving in
devkit/bench/scenarios.py); another event loop needs no wrapper, the serving file reads
LOOP.
"""

import importlib
import logging
import os
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
        int(os.environ.get("BENCH_WORKERS", "2")),
    )
