"""Serve a pattern with another event loop or several hypercorn workers (`./dev bench`).

`BENCH_LOOP=uvloop BENCH_WORKERS=2 python -m devkit.bench_serve <module>` (defaults:
asyncio, 1). With one worker it runs the pattern's own `__main__.py` unchanged, only with
the chosen event loop; with more, hypercorn's worker processes serve the pattern's app with
the hypercorn settings of that same file. The benchmark compares these with the plain
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

from devkit.processes import _die_with_parent


def _log_like_the_serving_file(module: str) -> None:
    """In a worker process: the log format of `python -m <pattern>` (main() is not run)."""
    serving = importlib.import_module(f"{module}.__main__")
    handler = logging.StreamHandler()
    handler.addFilter(serving.InvocationTag())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)-5s %(invocation)s%(name)s - %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), handlers=[handler])


def worker_app() -> Any:
    """The app of BENCH_MODULE, for hypercorn's workers (`devkit.bench_serve:worker_app()`)."""
    _die_with_parent()
    module = os.environ["BENCH_MODULE"]
    _log_like_the_serving_file(module)
    return importlib.import_module(f"{module}.app").app


def main(module: str, loop: str, workers: int) -> None:
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if workers <= 1:
        sys.argv = [module]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    serving = importlib.import_module(f"{module}.__main__")
    config = serving.hypercorn_config()
    config.workers = workers
    config.worker_class = loop
    config.application_path = "devkit.bench_serve:worker_app()"
    config.errorlog = None  # a Logger does not travel to the spawned workers
    os.environ["BENCH_MODULE"] = module
    sys.exit(hypercorn.run.run(config))


if __name__ == "__main__":
    main(
        sys.argv[1],
        os.environ.get("BENCH_LOOP", "asyncio"),
        int(os.environ.get("BENCH_WORKERS", "1")),
    )
