"""Real processes for the launcher, the tests and the benchmark.

The process classes live in `devkit/pytest_restate.py`, the test harness a user can copy on
its own (it depends on nothing in this repository); this module adds what is particular to
the collection: a pattern served from the checkout as `python -m <pattern>`.
"""

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
           "ServerPorts", "admin_query", "die_with_parent", "free_port", "http", "http_ok",
           "port_is_free", "register", "wait_until"]  # fmt: skip


# A pattern served as users serve it, `python -m <pattern>` (./dev and pytest run from the
# repository's root, so the module is found there).
PatternService = ServiceProcess
