"""The tracing tests' surroundings: a local OTLP receiver, a restate-server that sends its
spans there, and the fraud check the pattern calls; one of each per test session (per
pytest-xdist worker), so that the other patterns' servers stay as they are.

Every process exports its spans every `BATCH_DELAY_MS` (the OpenTelemetry SDK's 5 s default
would make each test wait for them).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import observability
from devkit.otlp_receiver import OtlpReceiver
from devkit.processes import RestateServer, StandInProcess, free_port
from devkit.pytest_restate import StartServer, attach_log, lend

BATCH_DELAY_MS = 100


@pytest.fixture(scope="session")
def otlp_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtlpReceiver]:
    log = tmp_path_factory.mktemp("otlp") / "otlp-receiver.log"
    receiver = OtlpReceiver(free_port(), free_port(), log)
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def tracing_settings(otlp_receiver: OtlpReceiver) -> dict[str, str]:
    """restate-server's settings that send its spans to the receiver."""
    return observability.server_settings(otlp_receiver.grpc_endpoint, BATCH_DELAY_MS)


@pytest.fixture(scope="session")
def traced_settings(otlp_receiver: OtlpReceiver) -> dict[str, str]:
    """A Python process's settings that send its spans to the receiver."""
    return observability.service_settings(otlp_receiver.http_endpoint, BATCH_DELAY_MS)


@pytest.fixture(scope="session")
def traced_server(
    start_server: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
    tracing_settings: dict[str, str],
) -> RestateServer:
    return start_server(tmp_path_factory.mktemp("restate-traced"), settings=tracing_settings)


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    otlp_receiver: OtlpReceiver,
    tracing_settings: dict[str, str],
) -> Iterator[RestateServer]:
    """The tests here run on a traced server: the session's, or, for a test marked
    `kills_server`, one of its own."""
    attach_log(request, otlp_receiver)
    if request.node.get_closest_marker("kills_server") is None:
        yield from lend(request.getfixturevalue("traced_server"), request)
        return
    start: StartServer = request.getfixturevalue("start_server")
    own = start(tmp_path / "restate", settings=tracing_settings)
    attach_log(request, own)
    yield own
    own.stop()


def start_fraud_check(
    log: Path, traced_settings: dict[str, str], settings: dict[str, str] | None = None
) -> StandInProcess:
    process = StandInProcess(
        "observability.downstream",
        free_port(),
        "PORT",
        log,
        settings={**traced_settings, **(settings or {})},
        name="fraud-check",
    )
    process.start()
    return process


@pytest.fixture(scope="session")
def fraud_check(
    tmp_path_factory: pytest.TempPathFactory, traced_settings: dict[str, str]
) -> Iterator[StandInProcess]:
    """The fraud check, answering at once."""
    process = start_fraud_check(
        tmp_path_factory.mktemp("fraud") / "fraud-check.log", traced_settings
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def slow_fraud_check(
    tmp_path_factory: pytest.TempPathFactory, traced_settings: dict[str, str]
) -> Iterator[StandInProcess]:
    """A fraud check that holds each answer for 3 s: time to crash its caller mid-call."""
    log = tmp_path_factory.mktemp("fraud-slow") / "fraud-check.log"
    process = start_fraud_check(log, traced_settings, {"FRAUD_CHECK_DELAY_SECONDS": "3"})
    yield process
    process.stop()
