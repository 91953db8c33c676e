"""The suite's configuration on top of the harness plugin (`devkit/pytest_restate.py`).

The plugin gives every test process (each pytest-xdist worker) a real Restate server and
the fixtures `server`, `ingress`, `admin`, `start_service` and `unique`; this file adds
what the collection needs besides: the pinned server binary and its settings, the Kafka
broker with its own server, the Stripe stand-in, the fork server that starts the services
(devkit/forkserver.py), and the per-test timings that `./dev test` sums up per pattern.

PATTERNS_ALWAYS_REPLAY=1 makes the server suspend the invocation at every await and
replay it from the journal on the next step, which shakes out non-deterministic code.
"""

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import ROOT, binaries, forkserver, kafka
from devkit.kafka import TansuBroker
from devkit.model_standin import ModelStandin
from devkit.processes import ManagedProcess, RestateServer, free_port
from devkit.pytest_restate import StartServer, attach_log, lend
from devkit.stripe_standin import LocalStripe
from tests.fuzz.test_fuzz_bad_input import INPUTS_TRIED

SERVER_SETTINGS = {
    # a small server: the suite runs on 2-core machines, several servers at once
    "RESTATE_DEFAULT_NUM_PARTITIONS": "4",
    "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "256 MiB",
    "RESTATE_WORKER__INVOKER__MEMORY_LIMIT": "256 MiB",
    "RESTATE_ADMIN__QUERY_ENGINE__MEMORY_SIZE": "128 MiB",
    # after a crash, retry the service every second at most, not every minute
    "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": "1s",
}

# Where each test's seconds go (`./dev test` sets it for each pass and reads it after).
TIMINGS_FILE = os.environ.get("PATTERNS_TIMINGS_FILE")
# The durations of an earlier run: the slowest tests are handed out first.
DURATIONS = ROOT / "tests" / "durations.json"


def pytest_configure(config: pytest.Config) -> None:
    """PATTERNS_ALWAYS_REPLAY=1 (the replay pass of ./dev test) is the plugin's
    --restate-always-replay."""
    if os.environ.get("PATTERNS_ALWAYS_REPLAY") == "1":
        config.option.restate_always_replay = True


@pytest.fixture(scope="session", autouse=True)
def fork_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The services of this test process are forked from one that has imported their
    libraries (devkit/forkserver.py: why, and what a forked service shares with a spawned
    one); PATTERNS_FORK_SERVER=0 spawns each."""
    if not forkserver.ENABLED:
        yield
        return
    log = tmp_path_factory.getbasetemp() / "forkserver.log"
    try:
        server = forkserver.ForkServer(log, ROOT)
    except (OSError, RuntimeError, ValueError) as error:  # then every service is spawned
        print(f"no fork server ({error}; its log: {log}): services are spawned", file=sys.stderr)
        yield
        return
    ManagedProcess.launcher = server.launcher
    yield
    ManagedProcess.launcher = None
    server.stop()


@pytest.fixture(scope="session")
def restate_server_binary() -> Path:
    return binaries.find(binaries.SERVER)


@pytest.fixture(scope="session")
def restate_server_settings() -> dict[str, str]:
    return SERVER_SETTINGS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest first (by the last recorded durations), so that with several workers the long
    tests do not end up last, one worker finishing alone."""
    try:
        known: dict[str, float] = json.loads(DURATIONS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    items.sort(key=lambda item: -known.get(item.nodeid, 1.0))


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration
    for name, value in report.user_properties:
        if name == INPUTS_TRIED and isinstance(value, dict):
            _fuzz_counts.update(value)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if TIMINGS_FILE and not hasattr(session.config, "workerinput"):  # the controller only
        Path(TIMINGS_FILE).write_text(json.dumps(_seconds, indent=0), encoding="utf-8")


# The fuzz test records the bodies it sent per handler as a property of its report, so that
# the counts reach the process that prints the summary also from pytest-xdist workers. (Here,
# not in tests/fuzz/: with workers, the controlling process loads only this conftest.)
_fuzz_counts: dict[str, int] = {}  # handler ("Service/handler") -> bodies sent to it


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _fuzz_counts:
        return
    width = max(len(handler) for handler in _fuzz_counts)
    terminalreporter.section("fuzzed bad input: inputs tried per handler")
    for handler, count in sorted(_fuzz_counts.items()):
        terminalreporter.write_line(f"{handler:<{width}}  {count:>5}")
    total = sum(_fuzz_counts.values())
    terminalreporter.write_line(f"{'total':<{width}}  {total:>5}  ({len(_fuzz_counts)} handlers)")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A Kafka-protocol broker (Tansu, in memory), started only if a test needs it."""
    broker = TansuBroker(free_port(), tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_server(
    tmp_path_factory: pytest.TempPathFactory, kafka_broker: TansuBroker, start_server: StartServer
) -> RestateServer:
    """A second server, configured with the Kafka cluster `my-cluster` at `kafka_broker`."""
    base_dir = tmp_path_factory.mktemp("restate-kafka")
    config_file = base_dir / "restate.toml"
    config_file.write_text(kafka.server_config(kafka_broker.bootstrap), encoding="utf-8")
    return start_server(base_dir, config_file)


@pytest.fixture(scope="session")
def stripe_standin(
    tmp_path_factory: pytest.TempPathFactory, restate_server: RestateServer
) -> Iterator[LocalStripe]:
    """The local Stripe API, sending its webhooks to the shared server's ingress."""
    standin = LocalStripe(free_port(), tmp_path_factory.mktemp("stripe") / "localstripe.log")
    standin.start()
    standin.send_webhooks_to(f"{restate_server.ingress_url}/PaymentService/processWebhook")
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def model_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStandin]:
    """The local model API (devkit/model_standin.py), one per test process; each test keys
    its script by a unique token in its input, so tests never see each other's answers."""
    standin = ModelStandin(free_port(), tmp_path_factory.mktemp("model") / "model-standin.log")
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def model(model_standin: ModelStandin, request: pytest.FixtureRequest) -> ModelStandin:
    """The session's model stand-in, its log shown with the report of a failing test."""
    attach_log(request, model_standin)
    return model_standin


@pytest.fixture
def server_with_kafka(
    kafka_server: RestateServer, kafka_broker: TansuBroker, request: pytest.FixtureRequest
) -> Iterator[RestateServer]:
    """For Kafka tests: their folder's conftest makes this the `server` of its tests."""
    attach_log(request, kafka_broker)
    yield from lend(kafka_server, request)


@pytest.fixture
def client_env(server: RestateServer) -> dict[str, str]:
    """Environment for running a pattern's client against the test server."""
    return dict(os.environ, RESTATE_INGRESS_URL=server.ingress_url,
                RESTATE_ADMIN_URL=server.admin_url)  # fmt: skip


@pytest.fixture
def unused_port_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
