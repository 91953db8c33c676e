"""Fixtures: one real Restate server for the session, pattern services per test.

PATTERNS_ALWAYS_REPLAY=1 makes the server suspend the invocation at every await and
replay it from the journal on the next step, which shakes out non-deterministic code.
"""

import atexit
import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from devkit import binaries
from devkit.processes import (
    ManagedProcess,
    PatternService,
    RestateServer,
    ServerPorts,
    free_port,
    register,
)
from tests.harness import Admin, Ingress

ALWAYS_REPLAY = os.environ.get("PATTERNS_ALWAYS_REPLAY") == "1"

SERVER_SETTINGS = {
    # a small server: the suite runs on 2-core machines next to other work
    "RESTATE_DEFAULT_NUM_PARTITIONS": "4",
    "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "256 MiB",
    "RESTATE_WORKER__INVOKER__MEMORY_LIMIT": "256 MiB",
    "RESTATE_ADMIN__QUERY_ENGINE__MEMORY_SIZE": "128 MiB",
    # after a crash, retry the service every second at most, not every minute
    "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": "1s",
}
if ALWAYS_REPLAY:
    SERVER_SETTINGS["RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT"] = "0s"

_live: list[ManagedProcess] = []


@atexit.register
def _kill_leftovers() -> None:  # e.g. after Ctrl-C in the middle of a fixture
    for process in _live:
        process.kill()


_PROCESSES = pytest.StashKey[list[ManagedProcess]]()


def _attach(request: pytest.FixtureRequest, process: ManagedProcess) -> None:
    """Show this process's log if the test fails."""
    request.node.stash.setdefault(_PROCESSES, []).append(process)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in item.stash.get(_PROCESSES, []):
            report.sections.append(
                (f"log of {process.name} (pid {process.pid})", process.log_tail(80))
            )
    return report


@pytest.fixture(scope="session")
def session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    base_dir = tmp_path_factory.mktemp("restate")
    server = RestateServer(
        binaries.find(binaries.SERVER),
        base_dir,
        ServerPorts.free(),
        base_dir / "server.log",
        settings=SERVER_SETTINGS,
    )
    _live.append(server)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(
    session_server: RestateServer, request: pytest.FixtureRequest
) -> Iterator[RestateServer]:
    """The session's server; a test may kill and restart it (same ports, same state)."""
    _attach(request, session_server)
    yield session_server
    if not session_server.running():  # a test that crashed it left it down
        session_server.start()


@pytest.fixture
def ingress(server: RestateServer) -> Ingress:
    return Ingress(server)


@pytest.fixture
def admin(server: RestateServer) -> Admin:
    return Admin(server)


StartService = Callable[..., PatternService]


@pytest.fixture
def start_service(
    server: RestateServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[StartService]:
    """Start `python -m <pattern>` on a free port with the given settings, and register it."""
    started: list[PatternService] = []

    def start(pattern: str, settings: dict[str, str] | None = None) -> PatternService:
        service = PatternService(
            pattern, free_port(), tmp_path / f"{pattern}-{len(started)}.log", settings
        )
        started.append(service)
        _live.append(service)
        _attach(request, service)
        service.start()
        register(server.admin_url, service.url)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Make a key or id unique to this test run: unique("product") -> "product-1f2e3d4c"."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client_env(server: RestateServer) -> dict[str, str]:
    """Environment for running a pattern's client against the test server."""
    return dict(os.environ, RESTATE_INGRESS_URL=server.ingress_url,
                RESTATE_ADMIN_URL=server.admin_url)  # fmt: skip


@pytest.fixture
def unused_port_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
