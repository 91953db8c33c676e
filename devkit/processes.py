"""Real processes for the launcher, the tests and the benchmark.

The process classes live in `devkit/pytest_restate.py`, the test harness a user can copy on
its own (it depends on nothing in this repository); this module adds what is particular to
the collection: a pattern served from the checkout as `python -m <pattern>`.
"""

import os
import sys
from pathlib import Path

from devkit import ROOT
from devkit.pytest_restate import (
    Echo,
    ManagedProcess,
    ProcessError,
    RestateServer,
    ServerPorts,
    ServiceProcess,
    admin_query,
    die_with_parent,
    free_port,
    http,
    http_ok,
    port_is_free,
    register,
    wait_until,
)

__all__ = ["Echo", "ManagedProcess", "PatternService", "ProcessError", "RestateServer",
           "ServerPorts", "StandInProcess", "admin_query", "die_with_parent", "free_port", "http",
           "http_ok", "port_is_free", "register", "wait_until"]  # fmt: skip


# A pattern served as users serve it, `python -m <pattern>` (./dev and pytest run from the
# repository's root, so the module is found there).
PatternService = ServiceProcess


class StandInProcess(ManagedProcess):
    """A stand-in that a pattern's folder holds for the systems it calls (`python -m
    <module>`, e.g. persistentfailures.downstream), told its port by `port_env`, ready when
    it answers 200 at `/health`."""

    def __init__(
        self,
        module: str,
        port: int,
        port_env: str,
        log_path: Path,
        settings: dict[str, str] | None = None,
        echo: Echo | None = None,
        name: str = "",
    ) -> None:
        # HOST too: a HOST exported in the user's shell (some set it to the host name) would
        # otherwise make a stand-in that reads it listen beyond loopback
        env = {**os.environ, **(settings or {}), port_env: str(port), "HOST": "127.0.0.1",
               "PYTHONUNBUFFERED": "1"}  # fmt: skip
        argv = [sys.executable, "-m", module]
        super().__init__(name or module, argv, log_path, env=env, cwd=ROOT, echo=echo)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        health = f"{self.url}/health"
        self.wait_ready(lambda: http_ok(health), timeout, f"{self.name} to answer at {health}")
