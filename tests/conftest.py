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

from devkit import binaries, kafka
from devkit.kafka import TansuBroker
from devkit.processes import (
    ManagedProcess,
    PatternService,
    RestateServer,
    ServerPorts,
    free_port,
    register,
)
from devkit.stripe_standin import LocalStripe
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


def attach_log(request: pytest.FixtureRequest, process: ManagedProcess) -> None:
    """Show this process's log if the test fails."""
    request.node.stash.setdefault(_PROCESSES, []).append(process)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that need the Kafka server last: once started, it and the broker stay
    up until the session ends, and an idle server still costs CPU (2-core machines)."""
    items.sort(key=lambda item: "kafka_broker" in getattr(item, "fixturenames", ()))


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


def _start_server(base_dir: Path, config_file: Path | None = None) -> RestateServer:
    server = RestateServer(
        binaries.find(binaries.SERVER),
        base_dir,
        ServerPorts.free(),
        base_dir / "server.log",
        settings=SERVER_SETTINGS,
        config_file=config_file,
    )
    _live.append(server)
    server.start()
    return server


@pytest.fixture(scope="session")
def session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    server = _start_server(tmp_path_factory.mktemp("restate"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A Kafka-protocol broker (Tansu, in memory), started only if a test needs it."""
    broker = TansuBroker(free_port(), tmp_path_factory.mktemp("tansu") / "tansu.log")
    _live.append(broker)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_server(
    tmp_path_factory: pytest.TempPathFactory, kafka_broker: TansuBroker
) -> Iterator[RestateServer]:
    """A second server, configured with the Kafka cluster `my-cluster` at `kafka_broker`."""
    base_dir = tmp_path_factory.mktemp("restate-kafka")
    config_file = base_dir / "restate.toml"
    config_file.write_text(kafka.server_config(kafka_broker.bootstrap), encoding="utf-8")
    server = _start_server(base_dir, config_file)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stripe_standin(
    tmp_path_factory: pytest.TempPathFactory, session_server: RestateServer
) -> Iterator[LocalStripe]:
    """The local Stripe API, sending its webhooks to the session server's ingress."""
    standin = LocalStripe(free_port(), tmp_path_factory.mktemp("stripe") / "localstripe.log")
    _live.append(standin)
    standin.start()
    standin.send_webhooks_to(f"{session_server.ingress_url}/PaymentService/processWebhook")
    yield standin
    standin.stop()


def use_server(server: RestateServer, request: pytest.FixtureRequest) -> Iterator[RestateServer]:
    """Lend a session's server to a test, which may kill and restart it (same ports and
    state); restart it if the test left it down."""
    attach_log(request, server)
    yield server
    if not server.running():
        server.start()


@pytest.fixture
def server_with_kafka(
    kafka_server: RestateServer, kafka_broker: TansuBroker, request: pytest.FixtureRequest
) -> Iterator[RestateServer]:
    """For Kafka tests: their folder's conftest makes this the `server` of its tests."""
    attach_log(request, kafka_broker)
    yield from use_server(kafka_server, request)


@pytest.fixture
def server(
    session_server: RestateServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[RestateServer]:
    """The server the test's services register with (Kafka tests override this). A test
    marked `kills_server` gets a server of its own, which it may kill -9 and restart."""
    if request.node.get_closest_marker("kills_server") is None:
        yield from use_server(session_server, request)
        return
    own = _start_server(tmp_path / "restate")
    attach_log(request, own)
    yield own
    own.stop()
    _live.remove(own)


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
        attach_log(request, service)
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
